"""Identity at init, merge == live, exact unmerge, lambda scaling and weighted sums."""

from __future__ import annotations

import copy

import pytest
import torch

from deft_omni.adapters import (
    AdapterConfig,
    inject_adapter,
    merge_adapters,
    set_active_adapters,
    set_adapter_scale,
    unmerge_adapters,
)

from .conftest import ALL_BASES, TwoLayer

TARGETS = ["to_q", "to_k", "to_v", "o"]
GROUP = [["to_q", "to_k", "to_v"]]


def _randomise(model, gen, name="default"):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if f"owned.{name}." in n:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.mark.parametrize("decomposition", ALL_BASES)
@pytest.mark.parametrize("fused", [False, True])
def test_identity_at_init(decomposition, fused, gen):
    base = TwoLayer()
    model = copy.deepcopy(base)
    inject_adapter(model, AdapterConfig(rank=3, decomposition=decomposition, target_modules=TARGETS,
                                        fused_groups=GROUP if fused else []))
    x = torch.randn(4, 12, generator=gen)
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=1e-6)


def test_para_is_not_identity_at_init(gen):
    base = TwoLayer()
    model = copy.deepcopy(base)
    inject_adapter(model, AdapterConfig(method="para", rank=3, target_modules=TARGETS))
    x = torch.randn(4, 12, generator=gen)
    assert not torch.allclose(model(x), base(x), atol=1e-4)


def test_random_init_option(gen):
    model = TwoLayer()
    inject_adapter(model, AdapterConfig(rank=3, target_modules=["o"], init_identity=False, init_scale=2.0))
    R = model.o.owned["default"].R
    assert 0.02 < R.std().item() < 0.06  # N(0, 0.02 * 2)


@pytest.mark.parametrize("method,decomposition", [("deft", "qr"), ("deft", "relu"), ("deft", "nmf"),
                                                  ("para", "tsvd"), ("lora", "qr")])
@pytest.mark.parametrize("fused", [False, True])
def test_merge_equals_live_and_unmerge_restores(method, decomposition, fused, gen):
    model = TwoLayer()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    inject_adapter(model, AdapterConfig(method=method, rank=3, decomposition=decomposition,
                                        target_modules=TARGETS, fused_groups=GROUP if fused else []))
    _randomise(model, gen)
    x = torch.randn(6, 12, generator=gen)
    live = model(x)
    merge_adapters(model)
    torch.testing.assert_close(model(x), live, rtol=1e-5, atol=1e-5)
    assert not torch.equal(model.to_q.base_layer.weight, w0["to_q.weight"])
    unmerge_adapters(model)
    for name in ["to_q", "to_k", "to_v", "o"]:
        W = model.get_submodule(name).base_layer.weight
        ref = w0[f"{name}.weight"]
        rel = ((W - ref).norm() / ref.norm()).item()
        assert rel <= 1e-6, (name, rel)
    torch.testing.assert_close(model(x), live, rtol=1e-5, atol=1e-5)


def test_unmerge_in_bf16_is_within_bf16_rounding(gen):
    model = TwoLayer().to(torch.bfloat16)
    w0 = model.o.weight.detach().clone()
    inject_adapter(model, AdapterConfig(rank=3, target_modules=TARGETS))
    _randomise(model, gen)
    merge_adapters(model)
    unmerge_adapters(model)
    W = model.o.base_layer.weight
    assert W.dtype == torch.bfloat16
    # one rounding on the way in and one on the way out
    torch.testing.assert_close(W.float(), w0.float(), rtol=2 ** -7, atol=2 ** -7 * w0.abs().max().item())


def test_scale_lambda_scales_delta(gen):
    base = TwoLayer()
    model = copy.deepcopy(base)
    inject_adapter(model, AdapterConfig(rank=3, target_modules=TARGETS, fused_groups=GROUP))
    _randomise(model, gen)
    x = torch.randn(3, 12, generator=gen)
    # o is linear in its own dW; check on one layer
    xo = torch.randn(3, 6, generator=gen)
    full = model.o(xo) - base.o(xo)
    set_adapter_scale(model, "default", 0.25)
    torch.testing.assert_close(model.o(xo) - base.o(xo), 0.25 * full, rtol=1e-5, atol=1e-6)
    set_adapter_scale(model, "default", 0.0)
    torch.testing.assert_close(model(x), base(x))


@pytest.mark.parametrize("merged", [False, True])
def test_weighted_sum_of_adapters(merged, gen):
    base = TwoLayer()
    model = copy.deepcopy(base)
    inject_adapter(model, AdapterConfig(rank=3, target_modules=TARGETS, fused_groups=GROUP), "a")
    inject_adapter(model, AdapterConfig(method="lora", rank=2, target_modules=["to_q", "o"]), "b")
    _randomise(model, gen, "a")
    _randomise(model, gen, "b")
    xo = torch.randn(5, 6, generator=gen)
    set_active_adapters(model, "a")
    d_a = model.o(xo) - base.o(xo)
    set_active_adapters(model, "b")
    d_b = model.o(xo) - base.o(xo)
    set_active_adapters(model, {"a": 0.7, "b": -0.4})
    if merged:
        merge_adapters(model)
    torch.testing.assert_close(model.o(xo), base.o(xo) + 0.7 * d_a - 0.4 * d_b, rtol=1e-5, atol=1e-5)
    if merged:
        unmerge_adapters(model)
        torch.testing.assert_close(model.o.base_layer.weight, base.o.weight, rtol=1e-6, atol=1e-7)


def test_merged_forward_uses_no_adapter_math(gen, monkeypatch):
    model = TwoLayer()
    inject_adapter(model, AdapterConfig(rank=3, target_modules=TARGETS))
    merge_adapters(model)
    monkeypatch.setattr(type(model.o.owned["default"]), "down", lambda *a, **k: pytest.fail("live math"))
    model(torch.randn(2, 12))
