"""Bases (B, right) derived from P: the `decomposition` choices of DEFT and PaRa.

Every function maps P (out x r, any float dtype) to a pair of fp32 tensors (B, right), both
out x r, differentiable w.r.t. P.  The adapted weight is W0 - B right^T W0 + s B R.
"""

from __future__ import annotations

from typing import Callable

import torch

Basis = tuple[torch.Tensor, torch.Tensor]


def fix_signs(U: torch.Tensor) -> torch.Tensor:
    """Flip each column so its largest-magnitude entry is positive.

    SVD/eigh solvers choose column signs freely (and differently on CPU and GPU); the sign
    of B's columns changes the injection term B R, so it is fixed canonically.  The sign is
    a constant w.r.t. P, so gradients pass straight through.
    """
    idx = U.detach().abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(torch.gather(U.detach(), 0, idx))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return U * signs


def _qr(P: torch.Tensor) -> Basis:
    # Householder, reduced: the same Q as peft's DEFT, so outputs match it.
    Q, _ = torch.linalg.qr(P)
    return Q, Q


def _relu(P: torch.Tensor) -> Basis:
    return P, torch.relu(P)


def _relaxed(P: torch.Tensor) -> Basis:
    return P, P


def _relu2(P: torch.Tensor) -> Basis:
    Pn = torch.relu(P)
    return Pn, Pn


def _tsvd(P: torch.Tensor) -> Basis:
    U, _, _ = torch.linalg.svd(P, full_matrices=False)
    U = fix_signs(U)
    return U, U


def _lrmf(P: torch.Tensor) -> Basis:
    U, S, _ = torch.linalg.svd(P, full_matrices=False)
    L = fix_signs(U) * S.sqrt()
    return L, L


def _eigen(P: torch.Tensor) -> Basis:
    # The tsvd basis from the r x r Gram matrix: P^T P = V L V^T gives U = P V L^{-1/2}.
    # eigh on r x r costs O(r^3) instead of an SVD of the tall out x r matrix.
    evals, V = torch.linalg.eigh(P.transpose(0, 1) @ P)
    evals, V = evals.flip(0), V.flip(1)  # descending, as the SVD orders them
    tiny = torch.finfo(P.dtype).eps * evals[0].detach().clamp_min(1.0)
    U = (P @ V) * evals.clamp_min(tiny).rsqrt()
    U = fix_signs(U)
    return U, U


def nmf_basis(P: torch.Tensor, iters: int = 5, eps: float = 1e-8) -> torch.Tensor:
    """W of k unrolled multiplicative updates (Lee & Seung) for relu(P) ~= W H.

    Deterministic start: W = relu(P) + delta (so zero entries can still move), H = 1/r (a
    uniform mix, so the updates do real work: W = relu(P), H = I is already a fixed point).
    Gradients flow through every unrolled iteration to P.
    """
    X = torch.relu(P)
    r = P.shape[1]
    delta = 1e-3 * X.detach().mean().clamp_min(eps)
    W = X + delta
    H = torch.full((r, r), 1.0 / r, dtype=P.dtype, device=P.device)
    for _ in range(iters):
        WtW = W.transpose(0, 1) @ W
        H = H * (W.transpose(0, 1) @ X) / (WtW @ H + eps)
        HHt = H @ H.transpose(0, 1)
        W = W * (X @ H.transpose(0, 1)) / (W @ HHt + eps)
    return W / W.norm(dim=0, keepdim=True).clamp_min(eps)


def _nmf(P: torch.Tensor, iters: int) -> Basis:
    W = nmf_basis(P, iters)
    return W, W


_SIMPLE: dict[str, Callable[[torch.Tensor], Basis]] = {
    "qr": _qr,
    "relu": _relu,
    "relaxed": _relaxed,
    "relu2": _relu2,
    "tsvd": _tsvd,
    "lrmf": _lrmf,
    "eigen": _eigen,
}


def compute_basis(P: torch.Tensor, decomposition: str, nmf_iters: int = 5) -> Basis:
    """(B, right) in fp32 for `decomposition` (see docs/adapters.md for each formula)."""
    # fp32 always: QR/SVD/eigh are unreliable in half precision, and the removal term
    # must cancel the identity-init injection exactly.
    P = P.float() if P.dtype in (torch.float16, torch.bfloat16) else P
    with torch.autocast(device_type=P.device.type, enabled=False):
        if decomposition == "nmf":
            return _nmf(P, nmf_iters)
        try:
            fn = _SIMPLE[decomposition]
        except KeyError:
            raise ValueError(
                f"unknown decomposition {decomposition!r}; choose one of {sorted([*_SIMPLE, 'nmf'])}"
            ) from None
        return fn(P)
