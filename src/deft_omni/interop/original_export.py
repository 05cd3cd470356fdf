"""Any deft_omni adapter as a peft LoRA on OmniGen's ORIGINAL module names (OmniGen's own package).

OmniGen's ``OmniGenPipeline.merge_lora`` wraps its ``OmniGen`` module in ``peft.PeftModel``, so a LoRA
must name ``llm.layers.N.self_attn.qkv_proj`` (q, k and v fused), ``o_proj``, ``mlp.gate_up_proj``,
``down_proj`` (and, outside the decoder, ``time_token.mlp.0/2``, ``t_embedder.mlp.0/2``,
``final_layer.adaLN_modulation.1``, ``final_layer.linear``).

Every adapter unit is a rank-r product dW = B A (see :mod:`deft_omni.adapters.branches`).  On an
original module, each unit that touches it contributes one block of rank r: its A, and its B rows
at the rows its diffusers members occupy (zeros elsewhere).  So

* a fused q,k,v group (one A) is one rank-r block of ``qkv_proj``;
* separate q, k and v adapters are three blocks: one LoRA of rank 3r, block-structured;
* an adapter on ``to_q`` alone is rank r with zero B rows for k and v -- still exact;
* ``gate_up_proj`` is fused (gate half first) on both sides and maps one to one.

All of these are exact.  A module with no original counterpart is refused (:class:`ExportError`,
naming it); nothing is ever approximated.  Like every DEFT export, the file bakes in W0 and is
valid only on the base it was computed from.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import save_file
from torch import nn

from ..adapters import AdapterConfig
from ..adapters.io import PEFT_CONFIG_NAME, PREFIX, WEIGHTS_NAME, peft_config_dict
from ..adapters.model_ops import adapter_branches, adapter_configs, base_fingerprints
from ..core import atomic_dir, write_json
from .original_names import ORIGINAL_LINEARS_HELP, count_layers, member_rows, original_slots

EXPORT_INFO_NAME = "deft_omni_export.json"
EXPORT_FORMAT = "deft_omni.lora_export"
_LLM_PREFIX = "llm."


class ExportError(ValueError):
    """An adapter that the requested layout cannot express exactly (names the module and the reason)."""


@torch.no_grad()
def original_lora_factors(model: nn.Module, adapter_name: str = "default", scale: float = 1.0
                          ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{original module: (lora_A, lora_B)} in fp32 on CPU, scaling 1: dW = lora_B @ lora_A."""
    configs = adapter_configs(model)
    if adapter_name not in configs:
        raise KeyError(f"no adapter named {adapter_name!r}; the model has {sorted(configs)}")
    slots = original_slots(count_layers(model))
    # original module -> {unit: (A, B with the module's full row count)}
    blocks: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for names, branch in adapter_branches(model, adapter_name):
        if branch.merged_scale is not None:
            raise ExportError(f"adapter {adapter_name!r} is merged into the base weights; unmerge it before exporting")
        B, A = branch.factors()
        A = (A.float() * scale).cpu()
        B = B.float().cpu()
        for i, name in enumerate(names):
            slot = slots.get(name)
            if slot is None:
                raise ExportError(
                    f"module {name}: it has no counterpart in OmniGen's original module tree (its Linear "
                    f"layers are {ORIGINAL_LINEARS_HELP}), so the original layout cannot hold this adapter. "
                    f"Export with layout='diffusers', or train without this module.")
            rows = member_rows(model, slot)
            units = blocks.setdefault(slot.module, {})
            if id(branch) not in units:
                units[id(branch)] = (A, torch.zeros(sum(rows), B.shape[1]))
            start = sum(rows[:slot.index])
            units[id(branch)][1][start:start + rows[slot.index]] = B[branch.rows(i)]
    return {
        module: (torch.cat([a for a, _ in units.values()]).contiguous(),
                 torch.cat([b for _, b in units.values()], dim=1).contiguous())
        for module, units in blocks.items()
    }


def _pattern_key(module: str) -> str:
    """A rank_pattern key that matches `module` under peft's old (``.*\\.KEY$``, peft 0.9 as pinned by
    OmniGen) and new (``(.*\\.)?KEY$``) rules: the name without ``llm.``, regex-escaped."""
    if not module.startswith(_LLM_PREFIX):
        raise AssertionError(f"rank patterns are only needed for fused qkv_proj modules, got {module}")
    return re.escape(module[len(_LLM_PREFIX):])


def original_peft_config(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], adapter_rank: int) -> dict:
    """peft's LoRA config for `factors`: scaling 1 everywhere (lora_alpha = rank, per module).

    Only ``qkv_proj`` can have another rank than the adapter's (one block per unit on it); those get
    rank_pattern / alpha_pattern entries."""
    ranks = {m: int(a.shape[0]) for m, (a, _) in factors.items()}
    default = adapter_rank if adapter_rank in ranks.values() else Counter(ranks.values()).most_common(1)[0][0]
    modules = sorted(ranks)
    lora = AdapterConfig(method="lora", rank=default, alpha=float(default), target_modules=modules)
    out = peft_config_dict(lora, modules)
    pattern = {_pattern_key(m): r for m, r in sorted(ranks.items()) if r != default}
    out["rank_pattern"] = pattern
    out["alpha_pattern"] = dict(pattern)
    return out


def export_original_lora(model: nn.Module, path: Union[str, Path], adapter_name: str = "default",
                         scale: float = 1.0) -> Path:
    """Write adapter `adapter_name` as a peft LoRA folder on OmniGen's original module names.

    Files: ``adapter_model.safetensors`` (``base_model.model.<original module>.lora_A/B.weight``),
    ``adapter_config.json`` (peft) and ``deft_omni_export.json`` (where it came from; read by no
    loader).  Strength `scale` is baked in.  Raises :class:`ExportError` for what the layout cannot
    express exactly."""
    factors = original_lora_factors(model, adapter_name, scale)
    source = adapter_configs(model)[adapter_name]
    tensors = {}
    for module, (A, B) in sorted(factors.items()):
        tensors[f"{PREFIX}{module}.lora_A.weight"] = A
        tensors[f"{PREFIX}{module}.lora_B.weight"] = B
    diffusers_modules = [n for names, _ in adapter_branches(model, adapter_name) for n in names]
    info = {
        "format": EXPORT_FORMAT, "layout": "original", "adapter_name": adapter_name, "scale": scale,
        "exported_from": source.to_dict(),
        "modules": {m: {"rank": int(a.shape[0])} for m, (a, _) in sorted(factors.items())},
        "base_fingerprint": base_fingerprints(model, diffusers_modules),
    }
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        write_json(tmp / PEFT_CONFIG_NAME, original_peft_config(factors, source.rank))
        write_json(tmp / EXPORT_INFO_NAME, info)
    return Path(path)
