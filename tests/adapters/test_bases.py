"""Bases: definitions, sign canonicalisation, eigen == tsvd, NMF properties."""

from __future__ import annotations

import pytest
import torch

from deft_omni.adapters import bases as bases_mod
from deft_omni.adapters import compute_basis, fix_signs

from .conftest import ALL_BASES, ref_basis


@pytest.mark.parametrize("decomposition", ALL_BASES)
def test_against_definitions(decomposition, gen):
    P = torch.randn(11, 4, generator=gen, dtype=torch.float64)
    B, right = compute_basis(P, decomposition)
    B_ref, right_ref = ref_basis(P, decomposition)
    torch.testing.assert_close(B, B_ref)
    torch.testing.assert_close(right, right_ref)


def test_eigen_equals_tsvd_after_sign_fixing(gen):
    P = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    U_eig, _ = compute_basis(P, "eigen")
    U_svd, _ = compute_basis(P, "tsvd")
    torch.testing.assert_close(U_eig, U_svd, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(U_eig.T @ U_eig, torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("decomposition", ["tsvd", "lrmf", "eigen"])
def test_result_does_not_depend_on_solver_sign_choice(decomposition, gen, monkeypatch):
    """Flip a column's sign inside the SVD / eigh: the sign-fixed basis must not change."""
    P = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    expected = compute_basis(P, decomposition)[0]
    real_svd, real_eigh = torch.linalg.svd, torch.linalg.eigh
    flip = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0], dtype=torch.float64)

    def flipped_svd(A, full_matrices=True):
        U, S, Vh = real_svd(A, full_matrices=full_matrices)
        return U * flip, S, Vh * flip[:, None]

    def flipped_eigh(A):
        L, V = real_eigh(A)
        return L, V * flip

    monkeypatch.setattr(bases_mod.torch.linalg, "svd", flipped_svd)
    monkeypatch.setattr(bases_mod.torch.linalg, "eigh", flipped_eigh)
    got = compute_basis(P, decomposition)[0]
    assert not torch.equal(real_svd(P, full_matrices=False)[0], flipped_svd(P, False)[0])
    torch.testing.assert_close(got, expected)


def test_fix_signs_makes_largest_entry_positive(gen):
    U = torch.randn(9, 3, generator=gen)
    F = fix_signs(U)
    idx = F.abs().argmax(dim=0)
    assert (F[idx, torch.arange(3)] > 0).all()
    assert torch.equal(F.abs(), U.abs())


def test_nmf_basis_is_nonnegative_unit_and_differentiable(gen):
    P = torch.randn(30, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    W = bases_mod.nmf_basis(P, iters=5)
    assert (W >= 0).all()
    torch.testing.assert_close(W.norm(dim=0), torch.ones(4, dtype=torch.float64))
    W.sum().backward()
    assert P.grad.abs().sum() > 0
    # The iterations do work: the result is not just relu(P) normalised.
    X = torch.relu(P.detach())
    assert not torch.allclose(W.detach(), X / X.norm(dim=0), atol=1e-3)


def test_more_nmf_iterations_fit_better(gen):
    P = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    X = torch.relu(P)

    def residual(k):
        W = bases_mod.nmf_basis(P, iters=k)
        H = torch.linalg.lstsq(W, X).solution
        return (X - W @ H).norm()

    assert residual(20) <= residual(1) + 1e-9


def test_half_precision_P_gives_fp32_basis(gen):
    P = torch.randn(16, 4, generator=gen).bfloat16()
    B, right = compute_basis(P, "qr")
    assert B.dtype == right.dtype == torch.float32


def test_unknown_decomposition():
    with pytest.raises(ValueError, match="unknown decomposition 'svd'"):
        compute_basis(torch.randn(4, 2), "svd")
