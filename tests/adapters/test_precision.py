"""fp32 adapter parameters on a bf16 base, with and without autocast."""

from __future__ import annotations

import copy

import pytest
import torch

from deft_omni.adapters import AdapterConfig, inject_adapter

from .conftest import TwoLayer

TARGETS = ["to_q", "to_k", "to_v", "o"]


@pytest.mark.parametrize("decomposition", ["qr", "relu", "tsvd"])
def test_bf16_base_identity_at_init_exactly(decomposition, gen):
    base = TwoLayer(d_in=64, d_qkv=48).to(torch.bfloat16)
    model = copy.deepcopy(base)
    inject_adapter(model, AdapterConfig(rank=8, decomposition=decomposition, target_modules=TARGETS,
                                        fused_groups=[["to_q", "to_k", "to_v"]]))
    for p in model.parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32
    x = torch.randn(3, 10, 64, generator=gen).bfloat16()
    y = model(x)
    assert y.dtype == torch.bfloat16
    # s R - right^T W0 is formed in fp32, so removal and injection cancel exactly
    assert torch.equal(y, base(x))


def test_model_to_half_keeps_adapter_fp32():
    model = TwoLayer()
    inject_adapter(model, AdapterConfig(rank=2, target_modules=TARGETS))
    model.to(torch.bfloat16)
    assert model.o.base_layer.weight.dtype == torch.bfloat16
    assert model.o.owned["default"].P.dtype == torch.float32
    model.double()
    assert model.o.owned["default"].P.dtype == torch.float64  # upcasts apply (reference checks)


def test_autocast_outputs_and_grads(gen):
    base = TwoLayer(d_in=64, d_qkv=48)
    model = copy.deepcopy(base)
    inject_adapter(model, AdapterConfig(rank=8, target_modules=TARGETS))
    x = torch.randn(2, 10, 64, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        # one layer: identity at init holds exactly under autocast too
        torch.testing.assert_close(model.to_q(x), base.to_q(x).float(), rtol=0, atol=0)
    assert y.dtype == x.dtype == torch.float32  # input dtype kept (as peft)
    y.float().square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_bf16_live_close_to_fp32(gen):
    ref = TwoLayer(d_in=64, d_qkv=48)
    inject_adapter(ref, AdapterConfig(rank=8, target_modules=TARGETS, init_identity=False))
    low = copy.deepcopy(ref).to(torch.bfloat16)
    x = torch.randn(4, 64, generator=gen)
    torch.testing.assert_close(low(x.bfloat16()).float(), ref(x), rtol=5e-2, atol=5e-2)
