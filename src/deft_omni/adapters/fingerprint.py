"""A cheap identity of a base weight: its shape plus sums, norms and largest entries of three rows.

Equal shapes do not make equal bases; the row statistics tell them apart, while surviving the
rounding of the same base stored in bf16 (~1e-3 relative, against O(1) for another base) and its
int8 quantisation (``model.quantize=int8``): an adapter trained on the quantised base loads on
the unquantised one and back.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .dense import dense_rows, inner_tensors, is_quantized

RTOL = 2e-2
# Per-row int8 quantisation moves each entry by at most half a step, step = row absmax / 127; a row
# sum over `in` entries then moves by about sqrt(in) * step / sqrt(12) (independent roundings), far
# more than bf16 rounding does.  When either side is quantised, sums get that many sigmas on top of
# RTOL (another base's row sums differ by ~sqrt(2) row norms); norms move by far less and keep RTOL.
_QUANT_LEVELS = {"int8": 127}
_QUANT_SIGMAS = 6.0


def _quantized_kind(weight: torch.Tensor) -> Optional[str]:
    if not is_quantized(weight):
        return None
    ints = [t for t in inner_tensors(weight) if not t.is_floating_point()]
    return str(ints[0].dtype).removeprefix("torch.") if ints else "unknown"


def weight_fingerprint(weight: torch.Tensor) -> Optional[dict]:
    if weight.is_meta:
        return None
    out = weight.shape[0]
    rows = torch.cat([dense_rows(weight.detach(), i, i + 1, torch.float64) for i in (0, out // 2, out - 1)])
    fingerprint = {
        "shape": list(weight.shape),
        "row_sums": [round(v, 8) for v in rows.sum(dim=1).tolist()],
        "row_norms": [round(v, 8) for v in rows.norm(dim=1).tolist()],
        "row_absmax": [round(v, 8) for v in rows.abs().amax(dim=1).tolist()],
    }
    kind = _quantized_kind(weight)
    if kind is not None:
        fingerprint["quantized"] = kind
    return fingerprint


def _quantization_slack(saved: dict, current: dict, shape: list[int]) -> list[float]:
    """Extra row-sum tolerance per checked row when either side is stored quantised (else 0)."""
    levels = _QUANT_LEVELS.get(saved.get("quantized") or current.get("quantized"))
    if levels is None or len(shape) != 2:
        return [0.0] * len(current["row_sums"])
    absmax = current["row_absmax"]
    if "row_absmax" in saved:  # files written before row_absmax existed lack it
        absmax = [max(a, b) for a, b in zip(absmax, saved["row_absmax"])]
    return [_QUANT_SIGMAS * math.sqrt(shape[1] / 12.0) * a / levels for a in absmax]


def fingerprint_mismatch(saved: dict, current: Optional[dict], shape: list[int]) -> Optional[str]:
    """None when `current` (or just `shape`, if unknown) agrees with `saved`; else the reason."""
    if list(shape) != saved["shape"]:
        return f"weight shape {list(shape)} but the adapter was made for {saved['shape']}"
    if current is None:
        return None
    slack = _quantization_slack(saved, current, list(shape))
    pairs = zip(saved["row_sums"], current["row_sums"], saved["row_norms"], current["row_norms"], slack)
    for s_sum, n_sum, s_norm, n_norm, extra in pairs:
        tol = RTOL * max(s_norm, 1e-12)
        if abs(s_sum - n_sum) > tol + extra or abs(s_norm - n_norm) > tol:
            return "its weights differ from the base the adapter was trained on (row checksums)"
    return None
