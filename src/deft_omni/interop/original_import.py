"""A peft LoRA made on OmniGen's ORIGINAL module names, put on diffusers' ``OmniGenTransformer2DModel``.

Such folders come from OmniGen's own ``train.py --use_lora`` (``llm.layers.N.self_attn.qkv_proj``,
``o_proj`` ...) and from ``export_lora(..., layout="original")``.  The conversion is exact: the LoRA
of ``qkv_proj`` becomes one fused ``to_q``/``to_k``/``to_v`` LoRA sharing ``lora_A`` (its B split by
rows), every other module maps one to one.  peft's per-module scaling (``lora_alpha``, ``alpha_pattern``,
rsLoRA) is folded into ``lora_A``; modules of different ranks become one deft_omni LoRA adapter per
rank.  DoRA, trained biases and other peft extras are refused by name: they are not a plain
low-rank update.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ..adapters import AdapterConfig, AdapterLoadError, delete_adapter, inject_adapter
from ..adapters.fingerprint import fingerprint_mismatch, weight_fingerprint
from ..adapters.io import CONFIG_NAME, PEFT_CONFIG_NAME, PREFIX, WEIGHTS_NAME
from ..adapters.model_ops import adapter_branches, adapter_configs
from .original_export import EXPORT_INFO_NAME
from .original_names import count_layers, member_rows, original_slots

_KEY = re.compile(rf"^{re.escape(PREFIX)}(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_ORIGINAL_ROOTS = ("llm.", "time_token.mlp.", "t_embedder.mlp.", "final_layer.")


def is_original_layout(path: Union[str, Path]) -> bool:
    """True for a peft folder whose tensors name OmniGen's original modules (``llm.layers...``)."""
    path = Path(path)
    weights = path / WEIGHTS_NAME
    if (path / CONFIG_NAME).exists() or not (path / PEFT_CONFIG_NAME).is_file() or not weights.is_file():
        return False
    try:
        with safe_open(str(weights), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception:  # safetensors raises its own error types; load_adapter reports the file
        return False
    return any(k.startswith(tuple(PREFIX + root for root in _ORIGINAL_ROOTS)) for k in keys)


def _pattern_value(patterns: dict, module: str, default):
    # peft's rule (get_pattern_key): the first key K with re.match(r"(.*\.)?(K)$", module).
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scalings(config: dict, source: Path, ranks: dict[str, int]) -> dict[str, float]:
    if config.get("peft_type") != "LORA":
        raise AdapterLoadError(f"{source}: field 'peft_type'={config.get('peft_type')!r}; only LoRA folders on "
                               f"OmniGen's original module names can be converted")
    for field, bad, why in (("use_dora", True, "DoRA rescales each weight column, not a low-rank update"),
                            ("fan_in_fan_out", True, "transposed (Conv1D) weights do not occur in OmniGen"),
                            ("bias", None, "trained biases are not part of a LoRA update")):
        value = config.get(field)
        if (bad is True and value) or (bad is None and value not in (None, "none")):
            raise AdapterLoadError(f"{source}: field {field!r}={value!r} is not supported: {why}")
    out = {}
    for module, r in ranks.items():
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8)))
        out[module] = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return out


def _read(path: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    config = json.loads((path / PEFT_CONFIG_NAME).read_text())
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise AdapterLoadError(f"{weights} is missing (only safetensors files are read, never pickles)")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights)).items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterLoadError(f"{weights}: tensor {key!r} is not a LoRA A/B weight; only plain LoRA "
                                   f"folders (no DoRA magnitudes, embeddings or saved modules) can be converted")
        factors.setdefault(m.group("module"), {})[m.group("ab")] = tensor
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise AdapterLoadError(f"{weights}: module {module} has lora_{''.join(pair)} only; A and B belong together")
    if not factors:
        raise AdapterLoadError(f"{weights}: no LoRA tensors")
    return config, factors


def _check_base(path: Path, model: nn.Module, modules: list[str]) -> None:
    """Exports made by deft_omni record the base they were computed from; OmniGen's LoRAs do not."""
    info = path / EXPORT_INFO_NAME
    if not info.is_file():
        return
    saved = json.loads(info.read_text()).get("base_fingerprint", {})
    for name in modules:
        if name in saved:
            weight = model.get_submodule(name).weight
            problem = fingerprint_mismatch(saved[name], weight_fingerprint(weight), list(weight.shape))
            if problem:
                raise AdapterLoadError(f"{path}: module {name}: {problem}. This LoRA was exported from another "
                                       f"base model; load the base it was made on (or pass check_base=False).")


@torch.no_grad()
def load_original_lora(model: nn.Module, path: Union[str, Path], adapter_name: str = "default",
                       check_base: bool = True) -> list[str]:
    """Convert and load the LoRA folder `path`; returns the deft_omni adapter names it became
    (`adapter_name`, then ``<adapter_name>_r<rank>`` for each further rank), all inactive-safe and frozen."""
    path = Path(path)
    config, factors = _read(path)
    inverse = {s.module: s for s in original_slots(count_layers(model)).values()}
    ranks = {}
    for module, pair in factors.items():
        slot = inverse.get(module)
        if slot is None:
            raise AdapterLoadError(f"{path}: module {module} is not a Linear layer of OmniGen's original module "
                                   f"tree (or this model has no counterpart for it)")
        rows = sum(member_rows(model, slot))
        in_features = model.get_submodule(slot.members[0]).in_features
        A, B = pair["A"], pair["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != in_features or B.shape != (rows, A.shape[0]):
            raise AdapterLoadError(f"{path}: module {module}: lora_A {tuple(A.shape)} / lora_B {tuple(B.shape)} do "
                                   f"not fit its {rows}x{in_features} weight: another base model?")
        ranks[module] = int(A.shape[0])
    scalings = _scalings(config, path / PEFT_CONFIG_NAME, ranks)
    if check_base:
        _check_base(path, model, [m for module in factors for m in inverse[module].members])
    created: list[str] = []
    try:
        for r in dict.fromkeys(ranks.values()):
            name = adapter_name if not created else f"{adapter_name}_r{r}"
            if name in adapter_configs(model):
                raise AdapterLoadError(f"model already has an adapter named {name!r}")
            modules = [m for m in factors if ranks[m] == r]
            members = {mem: m for m in modules for mem in inverse[m].members}
            groups = sorted({tuple(x.rpartition(".")[2] for x in inverse[m].members)
                             for m in modules if len(inverse[m].members) > 1})
            inject_adapter(model, AdapterConfig(method="lora", rank=r, alpha=float(r), target_modules=list(members),
                                                fused_groups=[list(g) for g in groups]), name)
            created.append(name)
            for names, branch in adapter_branches(model, name):
                module = members[names[0]]
                if list(names) != list(inverse[module].members):
                    raise AssertionError(f"{module}: fused as {names}, expected {inverse[module].members}")
                branch.lora_A.copy_(factors[module]["A"].float() * scalings[module])
                branch.lora_B.copy_(factors[module]["B"].float())
                branch.requires_grad_(False)
    except BaseException:
        for name in created:
            delete_adapter(model, name)
        raise
    return created
