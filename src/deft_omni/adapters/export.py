"""Export any DEFT/PaRa adapter (every basis, fused groups too) as a plain rank-r LoRA.

dW = B (s R - right^T W0) is a rank-r product, so lora_B = B and lora_A = lambda (s R - right^T W0)
with lora_alpha = r (scaling 1) reproduce the adapted outputs in any LoRA consumer (peft,
diffusers, ...).  A fused group becomes one LoRA per member sharing the same lora_A, exactly
as a LoRA on the original fused qkv_proj splits.  The export bakes in W0: it is only valid on
the base it was computed from (its fingerprint is recorded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from torch import nn

from .config import AdapterConfig
from .io import FORMAT, FORMAT_VERSION, PREFIX, write_adapter_folder
from .peft_config import peft_config_dict
from .model_ops import adapter_branches, adapter_configs, base_fingerprints


@torch.no_grad()
def lora_export_contents(model: nn.Module, adapter_name: str = "default", scale: float = 1.0
                         ) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(tensors, deft_omni.json, peft config) of the LoRA export of adapter `adapter_name`."""
    configs = adapter_configs(model)
    if adapter_name not in configs:
        raise KeyError(f"no adapter named {adapter_name!r}; the model has {sorted(configs)}")
    source = configs[adapter_name]
    tensors, modules = {}, []
    for names, branch in adapter_branches(model, adapter_name):
        if branch.merged_scale is not None:
            raise RuntimeError(f"adapter {adapter_name!r} is merged; unmerge it before exporting")
        B, A = branch.factors()
        A = (A * scale).float().contiguous().cpu()
        for i, name in enumerate(names):
            tensors[f"{PREFIX}{name}.lora_A.weight"] = A.clone()
            tensors[f"{PREFIX}{name}.lora_B.weight"] = B[branch.rows(i)].float().contiguous().cpu()
            modules.append(name)
    lora = AdapterConfig(method="lora", rank=source.rank, alpha=float(source.rank), target_modules=modules)
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "adapter_name": adapter_name, "config": lora.to_dict(),
        "units": [{"key": m, "modules": [m]} for m in modules],
        "base_fingerprint": base_fingerprints(model, modules), "peft_compatible": True,
        "exported_from": {"config": source.to_dict(), "scale": scale},
    }
    return tensors, meta, peft_config_dict(lora, modules)


def export_lora(model: nn.Module, path: Union[str, Path], adapter_name: str = "default",
                scale: float = 1.0) -> Path:
    """Write adapter `adapter_name` as a peft-layout LoRA folder (strength `scale` baked in)."""
    return write_adapter_folder(path, *lora_export_contents(model, adapter_name, scale))
