"""Every method and basis against the float64 dense formula: outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deft_omni.adapters import AdapterConfig, inject_adapter
from deft_omni.adapters import functional as fn_mod
from deft_omni.adapters import layer as layer_mod

from .conftest import ALL_BASES, dense_deft

SHAPES = [(12, 6), (8, 20), (5, 3)]  # (in, out)


class One(nn.Module):
    def __init__(self, d_in, d_out, bias=True):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=bias)

    def forward(self, x):
        return self.lin(x)


def _adapted(d_in, d_out, rank, method, decomposition, gen, bias=True, dtype=torch.float64):
    model = One(d_in, d_out, bias)
    with torch.no_grad():
        model.lin.weight.copy_(torch.randn(d_out, d_in, generator=gen))
        if bias:
            model.lin.bias.copy_(torch.randn(d_out, generator=gen))
    cfg = AdapterConfig(method=method, rank=rank, alpha=2.0 * rank, decomposition=decomposition,
                        target_modules=["lin"], init_identity=False)
    inject_adapter(model, cfg)
    model.to(dtype)
    branch = model.lin.owned["default"]
    with torch.no_grad():
        branch.P.copy_(torch.randn(d_out, rank, generator=gen, dtype=dtype))
        if branch.R is not None:
            branch.R.copy_(torch.randn(rank, d_in, generator=gen, dtype=dtype))
    return model, branch, cfg


@pytest.mark.parametrize("decomposition", ALL_BASES)
@pytest.mark.parametrize("method", ["deft", "para"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tokens", [1, 16])
@pytest.mark.filterwarnings("ignore:PaRa with the")  # (5, 3) at rank 3 is that edge on purpose
def test_matches_dense_float64(decomposition, method, shape, tokens, gen):
    d_in, d_out = shape
    rank = min(3, d_out)
    model, branch, cfg = _adapted(d_in, d_out, rank, method, decomposition, gen)
    x = torch.randn(2, tokens, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
    y = model(x)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y * g).sum().backward()

    P = branch.P.detach().clone().requires_grad_(True)
    R = None if branch.R is None else branch.R.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    lin = model.lin.base_layer
    y_ref = dense_deft(x_ref, lin.weight.detach(), lin.bias.detach(), P, R, cfg.scaling, decomposition)
    (y_ref * g).sum().backward()

    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(branch.P.grad, P.grad, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    if R is not None:
        torch.testing.assert_close(branch.R.grad, R.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("decomposition", ["qr", "relu", "tsvd"])
def test_fp32_matches_dense_float64(decomposition, gen):
    model, branch, cfg = _adapted(24, 16, 4, "deft", decomposition, gen, dtype=torch.float32)
    x = torch.randn(5, 24, generator=gen)
    y = model(x)
    lin = model.lin.base_layer
    y_ref = dense_deft(x.double(), lin.weight.double(), lin.bias.double(), branch.P.double(),
                       branch.R.double(), cfg.scaling, decomposition)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4 * y_ref.abs().max().item())


@pytest.mark.parametrize("tokens,expect_activation", [(2, True), (40, False)])
def test_both_associations_are_used_and_agree(tokens, expect_activation, gen, monkeypatch):
    """The per-call choice (activation vs factored) is real and both give the dense result."""
    calls = []
    orig = fn_mod.DeftActivationFn.apply
    monkeypatch.setattr(layer_mod.DeftActivationFn, "apply", lambda *a: calls.append(1) or orig(*a))
    model, branch, cfg = _adapted(16, 10, 3, "deft", "qr", gen)
    x = torch.randn(tokens, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    model(x).square().sum().backward()
    assert bool(calls) == expect_activation
    P = branch.P.detach().clone().requires_grad_(True)
    R = branch.R.detach().clone().requires_grad_(True)
    lin = model.lin.base_layer
    dense_deft(x.detach(), lin.weight, lin.bias, P, R, cfg.scaling, "qr").square().sum().backward()
    torch.testing.assert_close(branch.P.grad, P.grad)
    torch.testing.assert_close(branch.R.grad, R.grad)


def test_activation_path_with_dropout_matches_factored(gen):
    """Dropout applies to the injection input only, identically on both associations."""
    model, branch, _ = _adapted(16, 10, 3, "deft", "relu", gen)
    branch.config.dropout = 0.5
    branch.dropout = nn.Dropout(0.5)
    x = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    y_act = model(x)  # 2 tokens: activation association
    B, right = branch.basis()
    torch.manual_seed(0)
    mask_x = nn.functional.dropout(x, 0.5)
    lin = model.lin.base_layer
    expected = lin(x) + (mask_x @ (branch.R * branch.scaling).T - lin(x) @ right + lin.bias @ right) @ B.T
    torch.testing.assert_close(y_act, expected)


def test_lora_matches_formula(gen):
    model = One(9, 7)
    inject_adapter(model, AdapterConfig(method="lora", rank=3, alpha=6, target_modules=["lin"]))
    model.double()
    branch = model.lin.owned["default"]
    with torch.no_grad():
        branch.lora_B.copy_(torch.randn(7, 3, generator=gen, dtype=torch.float64))
    x = torch.randn(4, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    y = model(x)
    y.sum().backward()
    A = branch.lora_A.detach().clone().requires_grad_(True)
    B = branch.lora_B.detach().clone().requires_grad_(True)
    lin = model.lin.base_layer
    y_ref = x.detach() @ (lin.weight + 2.0 * B @ A).T + lin.bias
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(branch.lora_A.grad, A.grad)
    torch.testing.assert_close(branch.lora_B.grad, B.grad)


@pytest.mark.parametrize("decomposition", ["qr", "relu", "tsvd", "eigen", "nmf"])
def test_rank_equal_to_out(decomposition, gen):
    model, branch, cfg = _adapted(9, 4, 4, "deft", decomposition, gen)
    x = torch.randn(3, 9, generator=gen, dtype=torch.float64)
    lin = model.lin.base_layer
    y_ref = dense_deft(x, lin.weight, lin.bias, branch.P, branch.R, cfg.scaling, decomposition)
    torch.testing.assert_close(model(x), y_ref)


def test_rank_above_out_is_refused():
    with pytest.raises(ValueError, match=r"lin: rank 5 exceeds the output size 4"):
        inject_adapter(One(9, 4), AdapterConfig(rank=5, target_modules=["lin"]))


def test_rank_above_out_is_fine_for_lora():
    model = One(9, 4)
    inject_adapter(model, AdapterConfig(method="lora", rank=6, target_modules=["lin"]))
    assert model.lin.owned["default"].lora_A.shape == (6, 9)


@pytest.mark.parametrize("decomposition", ALL_BASES)
def test_gradients_reach_P_from_identity_init(decomposition, gen):
    """Unlike the authors' cached, detached Q, P learns through every basis."""
    model = One(12, 8)
    inject_adapter(model, AdapterConfig(rank=3, decomposition=decomposition, target_modules=["lin"]))
    x = torch.randn(20, 12, generator=gen)
    model(x).square().sum().backward()
    branch = model.lin.owned["default"]
    assert branch.P.grad is not None and branch.P.grad.abs().sum() > 0
    assert branch.R.grad.abs().sum() > 0
