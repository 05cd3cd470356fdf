"""Walk a model's adapter units one at a time and compute their `UnitStats`.

One unit's joint W0 (fused members concatenated along the output, upcast to fp32) is the
largest transient: 9216 x 3072 (113 MB) for OmniGen's fused q/k/v, 16384 x 3072 for gate_up.
"""

from __future__ import annotations

import re
from typing import Iterator, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import adapter_branches
from ..adapters.branches import Branch
from ..adapters.dense import dense
from ..adapters.io import unit_key
from .subspace import SubspaceConfig, UnitStats, unit_stats

_LAYER = re.compile(r"(?:^|\.)(\d+)\.(.+)$")


def split_layer(unit: str) -> tuple[Optional[int], str]:
    """'layers.3.self_attn.to_q+to_k+to_v' -> (3, 'self_attn.to_q+to_k+to_v'); no index -> (None, unit)."""
    match = _LAYER.search(unit)
    if match is None:
        return None, unit
    return int(match.group(1)), match.group(2)


def joint_weight(branch: Branch, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W0 of the unit (members stacked along the output), in `dtype` (a quantised W0: dequantised)."""
    if branch.merged_scale is not None:
        raise RuntimeError("the adapter is merged into the base weights; unmerge it before inspecting")
    weights = [dense(w.detach(), dtype) for w in branch.member_weights()]
    return weights[0] if len(weights) == 1 else torch.cat(weights, dim=0)


def iter_units(model: nn.Module, adapter_name: str) -> Iterator[tuple[str, list[str], Branch]]:
    for names, branch in adapter_branches(model, adapter_name):
        yield unit_key(names), names, branch


@torch.no_grad()
def unit_factors(branch: Branch, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    B, A = branch.factors()
    return B.detach().to(dtype), A.detach().to(dtype)


@torch.no_grad()
def collect_stats(model: nn.Module, adapter_name: str, cfg: SubspaceConfig,
                  dtype: torch.dtype = torch.float32, progress: bool = True) -> list[UnitStats]:
    """`UnitStats` of every unit of `adapter_name`, one unit in memory at a time."""
    units = list(iter_units(model, adapter_name))
    if not units:
        raise ValueError(f"adapter {adapter_name!r} has no adapted layers on this model")
    out = []
    for key, names, branch in tqdm(units, desc="inspect", unit="layer", disable=not progress):
        W0 = joint_weight(branch, dtype)
        B, A = unit_factors(branch, dtype)
        out.append(unit_stats(key, names, W0, B, A, cfg))
        del W0, B, A
    return out


def find_unit(model: nn.Module, adapter_name: str, wanted: Optional[str]) -> tuple[str, Branch]:
    """The unit named `wanted` (a unit key, a member module name, or a layer index); None: the middle one."""
    units = list(iter_units(model, adapter_name))
    if wanted is None:
        key, _, branch = units[len(units) // 2]
        return key, branch
    for key, names, branch in units:
        if wanted == key or wanted in names:
            return key, branch
    if wanted.isdigit():
        for key, _, branch in units:
            if split_layer(key)[0] == int(wanted):
                return key, branch
    raise ValueError(f"--layer {wanted!r} names no adapted unit; choose a unit key, a module name or a layer "
                     f"index, e.g. {units[0][0]!r}")
