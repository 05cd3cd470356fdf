"""The rank-r path against dense float64 computations (torch SVD of dW, scipy's subspace_angles)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from deft_omni.inspection import (
    SubspaceConfig,
    column_basis,
    effective_rank,
    energy_rank,
    gram_fro_norm,
    principal_angles,
    top_left_subspace,
    unit_stats,
    update_spectrum,
)
from deft_omni.inspection import subspace as subspace_mod

OUT, IN, R, K = 60, 40, 5, 8


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dense_erank(s: np.ndarray) -> float:
    p = s[s > 1e-12 * s.max()] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _dense_angles_deg(B: torch.Tensor, U: torch.Tensor) -> np.ndarray:
    return np.sort(np.degrees(scipy.linalg.subspace_angles(B.numpy(), U.numpy())))


def test_spectrum_norms_and_ranks_equal_dense():
    W0, B, A = _rand(OUT, IN, seed=1), _rand(OUT, R, seed=2), _rand(R, IN, seed=3)
    B[:, 1] *= 1e-3  # an uneven spectrum, so erank and rank90 are not trivial
    dW = B @ A
    s_dense = torch.linalg.svdvals(dW).numpy()[:R]
    spec = update_spectrum(B, A)
    np.testing.assert_allclose(spec.sigma.numpy(), s_dense, rtol=1e-10, atol=1e-12)
    # the left/right vectors rebuild dW
    torch.testing.assert_close(spec.left @ torch.diag(spec.sigma) @ spec.right.T, dW, rtol=1e-10, atol=1e-10)
    assert gram_fro_norm(B, A) == pytest.approx(float(dW.norm()), rel=1e-10)
    assert effective_rank(spec.sigma) == pytest.approx(_dense_erank(s_dense), rel=1e-9)
    cum = np.cumsum(s_dense ** 2) / (s_dense ** 2).sum()
    assert energy_rank(spec.sigma) == int(np.searchsorted(cum, 0.9) + 1)

    st = unit_stats("u", ["u"], W0, B, A, SubspaceConfig(k=K))
    assert st.rel_fro == pytest.approx(float(dW.norm() / W0.norm()), rel=1e-10)
    assert st.rel_spectral == pytest.approx(float(torch.linalg.matrix_norm(dW, 2) / torch.linalg.matrix_norm(W0, 2)),
                                            rel=1e-10)
    U, _, _ = torch.linalg.svd(W0, full_matrices=False)
    np.testing.assert_allclose(st.angles_deg, _dense_angles_deg(B, U[:, :K]), atol=1e-7)
    energy = float((U[:, :K].T @ dW).square().sum() / dW.square().sum())
    assert st.energy_topk == pytest.approx(energy, rel=1e-9)
    assert st.svd == "exact" and st.k == K and st.basis_rank == R


def test_effective_rank_extremes():
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.ones(6)) == pytest.approx(6.0)
    assert effective_rank(torch.zeros(4)) == 0.0 and energy_rank(torch.zeros(4)) == 0


def test_angles_inside_and_orthogonal_to_top_k():
    W0 = _rand(OUT, IN, seed=4)
    U, _, _ = torch.linalg.svd(W0, full_matrices=False)
    U_k = U[:, :K]
    A = _rand(R, IN, seed=5)
    inside = U_k @ _rand(K, R, seed=6)
    st_in = unit_stats("in", ["in"], W0, inside, A, SubspaceConfig(k=K))
    assert max(st_in.angles_deg) < 1e-5
    assert st_in.energy_topk == pytest.approx(1.0, abs=1e-10)
    outside = _rand(OUT, R, seed=7)
    outside = outside - U_k @ (U_k.T @ outside)
    st_out = unit_stats("out", ["out"], W0, outside, A, SubspaceConfig(k=K))
    assert min(st_out.angles_deg) > 90 - 1e-5
    assert st_out.energy_topk == pytest.approx(0.0, abs=1e-12)


def test_small_angles_are_accurate():
    """arccos alone loses ~1e-8 rad near 0; the sine branch keeps 1e-6 degrees exact."""
    Q, _ = torch.linalg.qr(_rand(OUT, 2, seed=8))
    theta = 1e-6
    rotated = torch.stack([Q[:, 0], math.cos(theta) * Q[:, 1] + math.sin(theta) * column_basis(_rand(OUT, 1, seed=9)
                           - Q @ (Q.T @ _rand(OUT, 1, seed=9)))[:, 0]], 1)
    angles = principal_angles(Q, column_basis(rotated))
    assert float(angles[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(angles[1]) == pytest.approx(theta, rel=1e-6)


def test_rank_deficient_and_zero_bases():
    W0, A = _rand(OUT, IN, seed=10), _rand(R, IN, seed=11)
    B = _rand(OUT, R, seed=12)
    B[:, 2] = 0.0  # a dead relu column
    assert column_basis(B).shape[1] == R - 1
    st = unit_stats("d", ["d"], W0, B, A, SubspaceConfig(k=K))
    assert len(st.angles_deg) == R - 1 and st.basis_rank == R - 1
    zero = unit_stats("z", ["z"], W0, torch.zeros(OUT, R, dtype=torch.float64), A, SubspaceConfig(k=K))
    assert zero.dw_fro == 0.0 and zero.erank == 0.0 and zero.angles_deg == []
    assert math.isnan(zero.angle_min_deg) and math.isnan(zero.energy_topk)


def test_randomized_subspace_matches_exact_with_a_gap():
    U, _ = torch.linalg.qr(_rand(400, 120, seed=13))
    V, _ = torch.linalg.qr(_rand(300, 120, seed=14))
    s = torch.cat([torch.linspace(10, 5, K), 0.05 * torch.rand(112, generator=torch.Generator().manual_seed(0),
                                                              dtype=torch.float64)])
    W = U @ torch.diag(s) @ V.T
    cfg = SubspaceConfig(k=K, exact_max_dim=0)
    U_rand, s_rand, how = top_left_subspace(W, cfg)
    assert how.startswith("randomized")
    np.testing.assert_allclose(s_rand.numpy(), s[:K].numpy(), rtol=1e-8)
    assert max(scipy.linalg.subspace_angles(U_rand.numpy(), U[:, :K].numpy())) < 1e-8
    # the caller's RNG is untouched and the sketch is seeded
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    U2, _, _ = top_left_subspace(W, cfg)
    assert torch.equal(torch.rand(1), before) and torch.equal(U2, U_rand)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="SubspaceConfig.k"):
        SubspaceConfig(k=0)
    with pytest.raises(ValueError, match="SubspaceConfig.oversample"):
        SubspaceConfig(oversample=-1)


def test_never_builds_out_by_out(monkeypatch):
    """A tall layer (out = 200k): out x out would be 160 GB; every factorization stays out x (k + p)."""
    out, n, r = 200_000, 48, 4
    W0 = torch.randn(out, n)
    B, A = torch.randn(out, r), torch.randn(r, n)
    cfg = SubspaceConfig(k=8, oversample=4, niter=2, exact_max_dim=0)
    seen = []

    def spy(fn):
        def wrapped(M, *args, **kwargs):
            seen.append((fn.__name__, tuple(M.shape)))
            return fn(M, *args, **kwargs)
        wrapped.__name__ = fn.__name__
        return wrapped

    monkeypatch.setattr(subspace_mod.torch.linalg, "qr", spy(torch.linalg.qr))
    monkeypatch.setattr(subspace_mod.torch.linalg, "svd", spy(torch.linalg.svd))
    monkeypatch.setattr(subspace_mod.torch, "svd_lowrank", spy(torch.svd_lowrank))
    st = unit_stats("tall", ["tall"], W0, B, A, cfg)
    assert st.svd.startswith("randomized") and st.basis_rank == r
    q = cfg.k + cfg.oversample
    for name, shape in seen:
        if name == "svd_lowrank":
            assert shape == (out, n)  # works on out x q sketches internally
        else:
            assert shape[0] * shape[1] <= out * max(q, r), (name, shape)
    assert st.rel_fro == pytest.approx(float((B.double() @ A.double()).norm() / W0.double().norm()), rel=1e-4)
