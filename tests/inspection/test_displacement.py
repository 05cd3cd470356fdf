"""The Fig. 3 data: projected columns and moves equal the dense projection of W0 and W' = W0 + dW."""

from __future__ import annotations

import pytest
import torch

from deft_omni.inspection import displacement_field


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("directions", ["delta", "w0"])
def test_projection_equals_dense(directions):
    W0, B, A = _rand(50, 30, seed=0), _rand(50, 3, seed=1), _rand(3, 30, seed=2)
    disp = displacement_field("u", W0, {"all": (B, A)}, directions=directions, n_columns=12, seed=3)
    assert len(disp.columns) == 12 and len(set(disp.columns)) == 12
    dW = B @ A
    U = torch.linalg.svd(dW if directions == "delta" else W0, full_matrices=False).U[:, :2]
    # the plane is the dense top-2 left singular plane (compare projectors: signs are free)
    W_adapted = W0 + dW
    cols = disp.columns
    proj = U @ U.T
    # points and moves are coordinates in an orthonormal basis of that plane: lengths and
    # reconstructions agree with the dense projector
    D_points = disp.points.T  # 2 x n
    torch.testing.assert_close(D_points.norm(dim=0), (proj @ W0[:, cols]).norm(dim=0))
    torch.testing.assert_close((disp.points + disp.moves["all"]).norm(dim=1), (proj @ W_adapted[:, cols]).norm(dim=0))
    torch.testing.assert_close(disp.moves["all"].norm(dim=1), (proj @ dW[:, cols]).norm(dim=0))


def test_rank_one_update_falls_back_to_w0_plane():
    W0, B, A = _rand(20, 10, seed=4), _rand(20, 1, seed=5), _rand(1, 10, seed=6)
    d = displacement_field("u", W0, {"all": (B, A)}, directions="delta", n_columns=100)
    w = displacement_field("u", W0, {"all": (B, A)}, directions="w0", n_columns=100)
    torch.testing.assert_close(d.points.abs(), w.points.abs())
    assert len(d.columns) == 10
