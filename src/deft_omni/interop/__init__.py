"""Adapters wherever OmniGen runs: diffusers' ``OmniGenPipeline`` (:func:`load_into_pipeline`),
OmniGen's own package (:func:`export_lora` with ``layout="original"``) and back (LoRAs on OmniGen's
original module names: :func:`load_original_lora`).  See ``docs/interop.md``.

Layer: above generation, below training (imports core, adapters, model, data, generation)."""

from .export import LAYOUTS, export_lora
from .original_export import ExportError, export_original_lora, original_lora_factors
from .original_import import is_original_layout, load_original_lora
from .original_names import OriginalSlot, original_slots
from .parity import diffusers_negative_prompt
from .pipeline import PipelineAdapters, load_into_pipeline, unload_from_pipeline

__all__ = [
    "LAYOUTS",
    "ExportError",
    "OriginalSlot",
    "PipelineAdapters",
    "diffusers_negative_prompt",
    "export_lora",
    "export_original_lora",
    "is_original_layout",
    "load_into_pipeline",
    "load_original_lora",
    "original_lora_factors",
    "original_slots",
    "unload_from_pipeline",
]
