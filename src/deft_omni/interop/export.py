"""``export_lora(..., layout=...)``: one entry point for every export layout (OmniGen's two module-name
layouts, and diffusers' pipeline LoRA file for Stable Diffusion)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from torch import nn

from ..adapters.export import export_lora as export_diffusers_lora
from .original_export import export_original_lora
from .pipeline_lora import export_pipeline_lora

LAYOUTS = ("diffusers", "original", "pipeline")


def export_lora(model: nn.Module, path: Union[str, Path], adapter_name: str = "default", scale: float = 1.0,
                layout: str = "diffusers") -> Path:
    """Write adapter `adapter_name` of `model` (a diffusers ``OmniGenTransformer2DModel``, or a Stable
    Diffusion backbone's denoiser) as a peft LoRA.

    ``layout="diffusers"``: on diffusers' module names (``to_q``/``to_k``/``to_v`` ...), loadable by
    deft_omni, peft and :func:`deft_omni.load_into_pipeline` (see :func:`deft_omni.adapters.export_lora`).
    ``layout="original"``: on OmniGen's own names (``llm.layers.N.self_attn.qkv_proj`` ...), for
    ``OmniGenPipeline.merge_lora`` of OmniGen's package (see :func:`export_original_lora`).
    ``layout="pipeline"``: the ``diffusers`` folder plus ``pytorch_lora_weights.safetensors`` for
    ``StableDiffusion(XL)Pipeline.load_lora_weights`` (`model`: a Stable Diffusion backbone's
    denoiser, whose children are the pipeline's components; see :func:`export_pipeline_lora`).
    """
    if layout == "diffusers":
        return export_diffusers_lora(model, path, adapter_name, scale)
    if layout == "original":
        return export_original_lora(model, path, adapter_name, scale)
    if layout == "pipeline":
        return export_pipeline_lora(model, path, adapter_name, scale)
    raise ValueError(f"layout={layout!r} is unknown; choose one of {LAYOUTS}")
