"""The data of the paper's Fig. 3: how an update moves W0's columns, seen in a 2-D plane.

Each column w_j of W0 (a vector in the output space) moves to w_j + dW[:, j].  Both are
projected onto two orthonormal output directions D (out x 2):

* ``"delta"`` (default): the top-2 left singular vectors of dW -- the plane where the update
  moves columns the most;
* ``"w0"``: the top-2 left singular vectors of W0 -- W0's dominant plane, where a §3.1-style
  update (living outside W0's dominant directions) moves columns little.

Only D^T W0 (2 x in) and (D^T B) A (2 x in) are formed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .subspace import SubspaceConfig, top_left_subspace, update_spectrum

DIRECTIONS = ("delta", "w0")


@dataclass
class Displacement:
    """Projected columns (n x 2) and their moves (n x 2) per named update part."""

    unit: str
    directions: str
    columns: list[int]
    points: torch.Tensor
    moves: dict[str, torch.Tensor] = field(default_factory=dict)


def plane(W0: torch.Tensor, B: torch.Tensor, A: torch.Tensor, directions: str) -> torch.Tensor:
    """The out x 2 orthonormal projection directions (see the module doc)."""
    if directions not in DIRECTIONS:
        raise ValueError(f"directions={directions!r}: choose one of {DIRECTIONS}")
    if directions == "delta":
        spec = update_spectrum(B, A)
        live = int((spec.sigma > spec.sigma[0] * 1e-6).sum()) if spec.sigma.numel() and spec.sigma[0] > 0 else 0
        if live >= 2:
            return spec.left[:, :2]
    # W0's plane (also the fallback for an update of rank < 2, which has no 2-D plane of its own).
    U, _, _ = top_left_subspace(W0, SubspaceConfig(k=2))
    return U[:, :2]


@torch.no_grad()
def displacement_field(unit: str, W0: torch.Tensor, parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
                       directions: str = "delta", n_columns: int = 256, seed: int = 0) -> Displacement:
    """Project a sample of W0's columns and each part's moves; the first part sets the plane.

    `parts`: name -> (B, A) with that part's update B @ A (e.g. the whole update, DEFT's
    removal term).  Columns are sampled without replacement with a fixed seed.
    """
    if not parts:
        raise ValueError("displacement_field needs at least one (B, A) update part")
    dtype = torch.float64 if W0.dtype == torch.float64 else torch.float32
    W = W0.to(dtype)
    B0, A0 = (t.to(dtype) for t in next(iter(parts.values())))
    D = plane(W, B0, A0, directions)
    n_in = W.shape[1]
    gen = torch.Generator().manual_seed(seed)
    cols = torch.randperm(n_in, generator=gen)[: min(n_columns, n_in)].sort().values
    points = (D.transpose(0, 1) @ W[:, cols]).transpose(0, 1)
    moves = {}
    for name, (B, A) in parts.items():
        moves[name] = ((D.transpose(0, 1) @ B.to(dtype)) @ A.to(dtype)[:, cols]).transpose(0, 1)
    return Displacement(unit, directions, cols.tolist(), points, moves)
