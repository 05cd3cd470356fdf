"""Rank-r algebra of one adapter update dW = B @ A against its base weight W0.

Nothing here builds an out x out matrix, nor dW itself: every quantity of dW comes from the
r x r core of its thin factors,

    B = Q_B R_B,  A^T = Q_A R_A  (reduced QR)  =>  dW = Q_B (R_B R_A^T) Q_A^T,

so the singular values of dW are those of the r x r core C = R_B R_A^T and its left singular
vectors are Q_B U_C.  W0's dominant left subspace comes from a randomized SVD
(`torch.svd_lowrank`, out x (k + oversample) work matrices) or, for small weights, an exact
reduced SVD.  Definitions (docs/inspection.md):

* effective rank (Roy & Vetterli, 2007): exp(H(p)), p_i = sigma_i / sum_j sigma_j, H the
  Shannon entropy; 1 for a rank-one update, r for r equal singular values.
* rank90: the fewest singular directions holding 90 % of ||dW||_F^2.
* principal angles between span(B) and span(U_k): arccos of the singular values of
  Q_B^T U_k, ascending (the first is the best-aligned direction).
* energy in top-k: ||U_k^T dW||_F^2 / ||dW||_F^2, the share of the update that lands in W0's
  k dominant output directions; a random update puts k / out there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class SubspaceConfig:
    """How W0's dominant left subspace is estimated."""

    k: int = 32                # dominant directions of W0 compared with span(B)
    oversample: int = 10       # extra random directions of the sketch (Halko et al.: 5-10)
    niter: int = 4             # power iterations; LLM spectra decay slowly, so more than torch's 2
    seed: int = 0              # the sketch's Gaussian test matrix (the caller's RNG is untouched)
    exact_max_dim: int = 1024  # exact reduced SVD when min(out, in) <= this (cheap and deterministic)
    exact: bool = False        # force the exact SVD everywhere (slow on full-size layers)

    def __post_init__(self) -> None:
        for name in ("k", "niter", "exact_max_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "k" else 0):
                raise ValueError(f"SubspaceConfig.{name} must be a {'positive' if name == 'k' else 'non-negative'} "
                                 f"integer, got {value!r}.")
        if isinstance(self.oversample, bool) or not isinstance(self.oversample, int) or self.oversample < 0:
            raise ValueError(f"SubspaceConfig.oversample must be a non-negative integer, got {self.oversample!r}.")


@dataclass
class UpdateSpectrum:
    """The SVD of dW = B @ A from its factors: dW = left @ diag(sigma) @ right^T."""

    sigma: torch.Tensor  # (r,) descending
    left: torch.Tensor   # out x r, orthonormal where sigma > 0
    right: torch.Tensor  # in x r

    @property
    def fro(self) -> float:
        return float(self.sigma.norm())

    @property
    def spectral(self) -> float:
        return float(self.sigma[0]) if self.sigma.numel() else 0.0


def update_spectrum(B: torch.Tensor, A: torch.Tensor) -> UpdateSpectrum:
    """SVD of B @ A (B: out x r, A: r x in) through the r x r core; O((out + in) r^2)."""
    if B.shape[1] != A.shape[0]:
        raise ValueError(f"factor shapes do not chain: B {tuple(B.shape)}, A {tuple(A.shape)}")
    Q_B, R_B = torch.linalg.qr(B)
    Q_A, R_A = torch.linalg.qr(A.transpose(0, 1))
    U_c, sigma, Vh_c = torch.linalg.svd(R_B @ R_A.transpose(0, 1))
    return UpdateSpectrum(sigma, Q_B @ U_c, Q_A @ Vh_c.transpose(0, 1))


def gram_fro_norm(B: torch.Tensor, A: torch.Tensor) -> float:
    """||B A||_F from r x r Gram products: tr((B^T B)(A A^T))."""
    value = float(torch.trace((B.transpose(0, 1) @ B) @ (A @ A.transpose(0, 1))))
    return math.sqrt(max(value, 0.0))


def fro_norm(W: torch.Tensor, rows: int = 1024) -> float:
    """||W||_F accumulated in fp64 a row block at a time (a long fp32 sum drifts by ~1e-4)."""
    total = 0.0
    for i in range(0, W.shape[0], rows):
        total += float(W[i:i + rows].to(torch.float64).square().sum())
    return math.sqrt(total)


def effective_rank(sigma: torch.Tensor) -> float:
    """Roy & Vetterli's entropy effective rank of a spectrum (0 for the zero matrix)."""
    total = float(sigma.sum())
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def energy_rank(sigma: torch.Tensor, share: float = 0.9) -> int:
    """The fewest leading singular values whose squares reach `share` of the total."""
    energy = sigma.square()
    total = float(energy.sum())
    if total <= 0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    return int((cumulative < share - 1e-12).sum()) + 1


def column_basis(B: torch.Tensor, rtol: Optional[float] = None) -> torch.Tensor:
    """Orthonormal basis of span(B) (out x rank(B)); a zero or rank-deficient B gives fewer columns.

    An SVD of the thin B (not QR) so that the numerically null directions of a rank-deficient
    basis (relu-type P with dead columns, LoRA's zero B at init) are dropped, not invented.
    """
    U, s, _ = torch.linalg.svd(B, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return U[:, :0]
    tol = (rtol if rtol is not None else max(B.shape) * torch.finfo(B.dtype).eps) * float(s[0])
    return U[:, s > tol]


def top_left_subspace(W: torch.Tensor, cfg: SubspaceConfig) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(U_k, sigma_k, how): W's k dominant left singular vectors, by exact or randomized SVD.

    The randomized path touches only out x q and in x q sketches (q = k + oversample).
    """
    m, n = W.shape
    k = min(cfg.k, m, n)
    q = min(k + cfg.oversample, m, n)
    if cfg.exact or min(m, n) <= cfg.exact_max_dim or q >= min(m, n):
        U, s, _ = torch.linalg.svd(W, full_matrices=False)
        return U[:, :k], s[:k], "exact"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        U, s, _ = torch.svd_lowrank(W, q=q, niter=cfg.niter)
    return U[:, :k], s[:k], f"randomized(q={q},niter={cfg.niter})"


def principal_angles(Q1: torch.Tensor, Q2: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the spans of two orthonormal bases."""
    if Q1.shape[1] == 0 or Q2.shape[1] == 0:
        return Q1.new_zeros(0)
    cos = torch.linalg.svdvals(Q1.transpose(0, 1) @ Q2).clamp(0.0, 1.0)
    # arccos loses precision near 0; the sine of the residual is accurate there (Bjorck & Golub).
    residual = Q2 - Q1 @ (Q1.transpose(0, 1) @ Q2)
    sin = torch.linalg.svdvals(residual).clamp(0.0, 1.0)
    n = cos.numel()
    sin_asc = sin.flip(0)[:n] if sin.numel() >= n else torch.cat([sin.flip(0), sin.new_zeros(n - sin.numel())])
    small = cos > math.sqrt(0.5)
    angles = torch.where(small, torch.arcsin(sin_asc), torch.arccos(cos))
    return angles.sort().values


@dataclass
class UnitStats:
    """What one adapted weight (a Linear or a fused group) learned."""

    unit: str
    modules: list[str]
    out_features: int
    in_features: int
    rank: int
    w0_fro: float
    w0_sigma1: float
    dw_fro: float
    dw_spectral: float
    erank: float
    rank90: int
    basis_rank: int
    k: int
    svd: str
    angles_deg: list[float] = field(default_factory=list)
    energy_topk: float = float("nan")

    @property
    def rel_fro(self) -> float:
        return self.dw_fro / self.w0_fro if self.w0_fro > 0 else float("nan")

    @property
    def rel_spectral(self) -> float:
        return self.dw_spectral / self.w0_sigma1 if self.w0_sigma1 > 0 else float("nan")

    @property
    def angle_min_deg(self) -> float:
        return self.angles_deg[0] if self.angles_deg else float("nan")

    @property
    def angle_mean_deg(self) -> float:
        return sum(self.angles_deg) / len(self.angles_deg) if self.angles_deg else float("nan")

    @property
    def chance_topk(self) -> float:
        """The top-k energy share of an update with a uniformly random column space."""
        return self.k / self.out_features


def unit_stats(unit: str, modules: list[str], W0: torch.Tensor, B: torch.Tensor, A: torch.Tensor,
               cfg: SubspaceConfig, U_k: Optional[torch.Tensor] = None,
               w0_sigma: Optional[torch.Tensor] = None, svd: str = "given") -> UnitStats:
    """All per-unit numbers; W0 (out x in) is read, never copied beyond one fp32/fp64 upcast.

    Pass `U_k`/`w0_sigma` when W0's subspace is already known (e.g. shared by several adapters).
    """
    dtype = B.dtype if B.dtype == torch.float64 else torch.float32
    B, A = B.to(dtype), A.to(dtype)
    W = W0 if W0.dtype == dtype else W0.to(dtype)
    if U_k is None:
        U_k, w0_sigma, svd = top_left_subspace(W, cfg)
    U_k = U_k.to(dtype)
    spec = update_spectrum(B, A)
    Q_B = column_basis(B)
    angles = principal_angles(Q_B, U_k)
    dw_fro = spec.fro
    if dw_fro > 0:
        # (U_k^T left) diag(sigma): k x r, the update's coordinates in W0's dominant directions.
        inside = (U_k.transpose(0, 1) @ spec.left) * spec.sigma
        energy = float(inside.square().sum()) / dw_fro ** 2
    else:
        energy = float("nan")
    return UnitStats(
        unit=unit, modules=list(modules), out_features=W.shape[0], in_features=W.shape[1], rank=B.shape[1],
        w0_fro=fro_norm(W), w0_sigma1=float(w0_sigma[0]) if w0_sigma is not None and w0_sigma.numel() else 0.0,
        dw_fro=dw_fro, dw_spectral=spec.spectral, erank=effective_rank(spec.sigma), rank90=energy_rank(spec.sigma),
        basis_rank=Q_B.shape[1], k=U_k.shape[1], svd=svd,
        angles_deg=[math.degrees(a) for a in angles.tolist()], energy_topk=energy,
    )
