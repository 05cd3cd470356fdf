"""deft_omni: fine-tune OmniGen with DEFT adapters."""

__version__ = "0.1.0"

# Imported on first use: `import deft_omni` stays light (no torch, no diffusers).
_LAZY = {"load_into_pipeline": "interop", "unload_from_pipeline": "interop"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
