"""Small models and float64 dense references written straight from the formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

ALL_BASES = ["qr", "relu", "relaxed", "relu2", "tsvd", "lrmf", "eigen", "nmf"]


class TwoLayer(nn.Module):
    """A toy attention-like block: q/k/v read one input; o maps back."""

    def __init__(self, d_in: int = 12, d_qkv: int = 6, bias: bool = False) -> None:
        super().__init__()
        self.to_q = nn.Linear(d_in, d_qkv, bias=bias)
        self.to_k = nn.Linear(d_in, d_qkv, bias=bias)
        self.to_v = nn.Linear(d_in, d_qkv, bias=bias)
        self.o = nn.Linear(d_qkv, d_in, bias=True)

    def forward(self, x):
        return self.o(self.to_q(x) * torch.tanh(self.to_k(x)) + self.to_v(x))


def ref_sign_fix(U: torch.Tensor) -> torch.Tensor:
    U = U.clone()
    for j in range(U.shape[1]):
        i = int(U[:, j].abs().argmax())
        if U[i, j] < 0:
            U[:, j] = -U[:, j]
    return U


def ref_nmf(P: torch.Tensor, iters: int) -> torch.Tensor:
    X = torch.relu(P)
    r = P.shape[1]
    W = X + 1e-3 * torch.clamp(X.detach().mean(), min=1e-8)
    H = torch.ones(r, r, dtype=P.dtype) / r
    for _ in range(iters):
        H = H * (W.T @ X) / (W.T @ W @ H + 1e-8)
        W = W * (X @ H.T) / (W @ H @ H.T + 1e-8)
    return W / torch.clamp(W.norm(dim=0, keepdim=True), min=1e-8)


def ref_basis(P: torch.Tensor, decomposition: str, nmf_iters: int = 5):
    """(B, right) from the definitions in docs/adapters.md."""
    if decomposition == "qr":
        Q = torch.linalg.qr(P).Q
        return Q, Q
    if decomposition == "relu":
        return P, torch.relu(P)
    if decomposition == "relaxed":
        return P, P
    if decomposition == "relu2":
        return torch.relu(P), torch.relu(P)
    if decomposition in ("tsvd", "eigen"):
        U = ref_sign_fix(torch.linalg.svd(P, full_matrices=False).U)
        return U, U
    if decomposition == "lrmf":
        U, S, _ = torch.linalg.svd(P, full_matrices=False)
        L = ref_sign_fix(U) * S.sqrt()
        return L, L
    if decomposition == "nmf":
        W = ref_nmf(P, nmf_iters)
        return W, W
    raise ValueError(decomposition)


def dense_deft(x, W0, bias, P, R, s, decomposition, lam=1.0):
    """The authors' formulation: build the out x out projector and the full adapted weight."""
    B, right = ref_basis(P, decomposition)
    proj = B @ right.T
    delta = -proj @ W0 + (0 if R is None else s * B @ R)
    W = W0 + lam * delta
    y = x @ W.T
    return y if bias is None else y + bias


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
