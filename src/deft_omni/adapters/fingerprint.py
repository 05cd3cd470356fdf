"""A cheap identity of a base weight: its shape plus sums and norms of three rows.

Equal shapes do not make equal bases; the row statistics tell them apart, while surviving the
rounding of the same base stored in bf16 (~1e-3 relative, against O(1) for another base).
"""

from __future__ import annotations

from typing import Optional

import torch

RTOL = 2e-2


def weight_fingerprint(weight: torch.Tensor) -> Optional[dict]:
    if weight.is_meta:
        return None
    out = weight.shape[0]
    rows = weight.detach()[[0, out // 2, out - 1]].to(torch.float64)
    return {
        "shape": list(weight.shape),
        "row_sums": [round(v, 8) for v in rows.sum(dim=1).tolist()],
        "row_norms": [round(v, 8) for v in rows.norm(dim=1).tolist()],
    }


def fingerprint_mismatch(saved: dict, current: Optional[dict], shape: list[int]) -> Optional[str]:
    """None when `current` (or just `shape`, if unknown) agrees with `saved`; else the reason."""
    if list(shape) != saved["shape"]:
        return f"weight shape {list(shape)} but the adapter was made for {saved['shape']}"
    if current is None:
        return None
    pairs = zip(saved["row_sums"], current["row_sums"], saved["row_norms"], current["row_norms"])
    for s_sum, n_sum, s_norm, n_norm in pairs:
        tol = RTOL * max(s_norm, 1e-12)
        if abs(s_sum - n_sum) > tol or abs(s_norm - n_norm) > tol:
            return "its weights differ from the base the adapter was trained on (row checksums)"
    return None
