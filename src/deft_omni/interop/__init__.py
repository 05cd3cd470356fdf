"""Adapters wherever OmniGen runs: diffusers' ``OmniGenPipeline`` (:func:`load_into_pipeline`),
OmniGen's own package (:func:`export_lora` with ``layout="original"``) and back (LoRAs on OmniGen's
original module names: :func:`load_original_lora`).  See ``docs/interop.md``.  Stable Diffusion
adapters go to diffusers' pipelines as their own LoRA file (``layout="pipeline"``,
``docs/stable_diffusion.md``).

Layer: above generation, below training (imports core, adapters, model, data, generation)."""

from .export import LAYOUTS, export_lora
from .original_export import ExportError, export_original_lora, original_lora_factors
from .original_import import is_original_layout, load_original_lora
from .original_names import OriginalSlot, original_slots
from .parity import diffusers_negative_prompt
from .pipeline_lora import PIPELINE_LORA_NAME, export_pipeline_lora
from .pipeline import PipelineAdapters, load_into_pipeline, unload_from_pipeline

__all__ = [
    "LAYOUTS",
    "ExportError",
    "OriginalSlot",
    "PIPELINE_LORA_NAME",
    "PipelineAdapters",
    "diffusers_negative_prompt",
    "export_lora",
    "export_original_lora",
    "export_pipeline_lora",
    "is_original_layout",
    "load_into_pipeline",
    "load_original_lora",
    "original_lora_factors",
    "original_slots",
    "unload_from_pipeline",
]
