"""Any adapter as the LoRA file diffusers' pipelines load: ``pipe.load_lora_weights(DIR)``.

For a model whose top-level children are a pipeline's components (deft_omni's Stable Diffusion
backbones train ``unet``, ``text_encoder``, ``text_encoder_2``), diffusers' LoRA-loader file is
``pytorch_lora_weights.safetensors`` with keys ``<component>.<module>.lora_A.weight`` /
``.lora_B.weight`` and no alphas, which diffusers reads as scaling 1 (alpha = rank, per module).
The factors are the ``diffusers`` layout's (:func:`deft_omni.adapters.export.lora_export_contents`:
dW = B A exactly, a fused group's A copied to each member), so the export folder is both: the
deft_omni/peft LoRA folder and, beside it, the pipeline file.  Like every DEFT export it bakes in
W0 and holds only on the base it was computed from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from torch import nn

from ..adapters.export import lora_export_contents
from ..adapters.io import PREFIX, write_adapter_folder
from .original_export import ExportError

PIPELINE_LORA_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE


def export_pipeline_lora(model: nn.Module, path: Union[str, Path], adapter_name: str = "default",
                         scale: float = 1.0, components: tuple[str, ...] = ("unet", "text_encoder",
                                                                            "text_encoder_2")) -> Path:
    """Write the ``diffusers`` layout folder plus ``pytorch_lora_weights.safetensors``."""
    tensors, meta, peft_cfg = lora_export_contents(model, adapter_name, scale)
    pipeline = {}
    for key, tensor in tensors.items():
        name = key[len(PREFIX):]
        if name.split(".", 1)[0] not in components:
            raise ExportError(f"module {name.rsplit('.lora_', 1)[0]}: not under a pipeline component "
                                      f"({', '.join(components)}); diffusers' LoRA loader cannot place it")
        pipeline[name] = tensor
    meta["pipeline_lora"] = {"file": PIPELINE_LORA_NAME,
                             "components": sorted({k.split(".", 1)[0] for k in pipeline})}
    return write_adapter_folder(path, tensors, meta, peft_cfg, extra_tensor_files={PIPELINE_LORA_NAME: pipeline})
