"""deft_omni: fine-tune OmniGen with DEFT adapters."""

__version__ = "0.1.0"
