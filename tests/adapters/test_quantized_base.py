"""Adapters on an int8-quantised base (model.quantize=int8): W0 is the dequantised weight everywhere."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deft_omni.adapters import (
    AdapterConfig,
    AdapterLoadError,
    QuantizedMergeError,
    export_lora,
    inject_adapter,
    load_adapter,
    merge_adapters,
    save_adapter,
)
from deft_omni.adapters.fingerprint import fingerprint_mismatch, weight_fingerprint

from .conftest import TwoLayer, dense_deft, ref_basis

pytest.importorskip("torchao")
from deft_omni.model.quantize import quantize_linears  # noqa: E402  (needs torchao to be useful)

pytestmark = pytest.mark.usefixtures("one_thread")
TARGETS = ["to_q", "to_k", "to_v", "o"]
GROUP = [["to_q", "to_k", "to_v"]]


def _bases(gen, dtype=torch.float32, **kw):
    """(quantised TwoLayer, its unquantised twin holding the dequantised weights, the original)."""
    original = TwoLayer(d_in=48, d_qkv=32, **kw)
    with torch.no_grad():
        for p in original.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    original.to(dtype)
    quantised = copy.deepcopy(original)
    quantize_linears(quantised)
    twin = copy.deepcopy(original)
    with torch.no_grad():
        for name in TARGETS:
            getattr(twin, name).weight.copy_(getattr(quantised, name).weight.dequantize(torch.float32))
    return quantised, twin, original


def _inject(model, method="deft", decomposition="qr", fused=True, **kw):
    inject_adapter(model, AdapterConfig(method=method, rank=4, alpha=8, decomposition=decomposition,
                                        target_modules=TARGETS, fused_groups=GROUP if fused else [], **kw))
    return model


def _randomise_like(models, gen):
    """The same random adapter tensors in every model (trained-looking, away from the identity)."""
    params = [[p for p in m.parameters() if p.requires_grad] for m in models]
    with torch.no_grad():
        for group in zip(*params):
            value = torch.randn(group[0].shape, generator=gen) * 0.3
            for p in group:
                p.copy_(value)


@pytest.mark.parametrize("decomposition", ["qr", "relu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_identity_at_init_with_respect_to_the_quantised_base(decomposition, dtype, gen):
    quantised, _, _ = _bases(gen, dtype)
    model = _inject(copy.deepcopy(quantised), decomposition=decomposition)
    x = torch.randn(3, 10, 48, generator=gen).to(dtype)
    if dtype == torch.bfloat16:  # factored path: s R - right^T W0 is exactly 0
        assert torch.equal(model(x), quantised(x))
    else:  # fp32 single adapters may take the activation path: zero up to fp32 rounding
        torch.testing.assert_close(model(x), quantised(x), rtol=1e-6, atol=1e-6)


# 2 tokens: DEFT's activation association; 40: the factored one (see AdapterLinear).
@pytest.mark.parametrize("method,decomposition,tokens", [("deft", "qr", 2), ("deft", "qr", 40), ("deft", "relu", 2),
                                                         ("para", "qr", 40), ("lora", "qr", 40)])
def test_live_equals_the_dequantised_twin(method, decomposition, tokens, gen):
    """Outputs and every gradient equal the same adapter on a plain base holding the dequantised W0."""
    quantised, twin, _ = _bases(gen, bias=True)
    models = [_inject(quantised, method, decomposition), _inject(twin, method, decomposition)]
    _randomise_like(models, gen)
    x = torch.randn(tokens, 48, generator=gen)
    xs = [x.clone().requires_grad_(True) for _ in models]
    ys = [m(xi) for m, xi in zip(models, xs)]
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-5, atol=1e-5)
    for y in ys:
        y.square().sum().backward()
    grads = [[p.grad for p in m.parameters() if p.requires_grad] for m in models]
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-4 * g1.abs().max().item())
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-4, atol=1e-5 * xs[1].grad.abs().max().item())


@pytest.mark.parametrize("decomposition", ["qr", "relu"])
@pytest.mark.parametrize("tokens", [1, 40])
def test_matches_the_float64_formula_on_dequantised_weights(decomposition, tokens, gen):
    quantised, _, _ = _bases(gen, bias=True)
    model = _inject(quantised, decomposition=decomposition, fused=False, init_identity=False)
    _randomise_like([model], gen)
    x = torch.randn(tokens, 48, generator=gen, requires_grad=True)
    y = model.to_q(x)
    g = torch.randn(y.shape, generator=gen)
    (y * g).sum().backward()
    branch = model.to_q.owned["default"]
    P = branch.P.detach().double().requires_grad_(True)
    R = branch.R.detach().double().requires_grad_(True)
    lin = model.to_q.base_layer
    W0 = lin.weight.dequantize(torch.float32).double()
    x64 = x.detach().double().requires_grad_(True)
    y_ref = dense_deft(x64, W0, lin.bias.detach().double(), P, R, branch.scaling, decomposition)
    (y_ref * g.double()).sum().backward()
    scale = y_ref.abs().max().item()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5 * scale)
    for ours, ref in ((branch.P.grad, P.grad), (branch.R.grad, R.grad), (x.grad, x64.grad)):
        torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_merging_into_a_quantised_base_is_refused(gen):
    quantised, _, _ = _bases(gen)
    model = _inject(quantised)
    _randomise_like([model], gen)
    before = {n: model.get_submodule(n).base_layer.weight.qdata.clone() for n in TARGETS}
    x = torch.randn(5, 48, generator=gen)
    live = model(x)
    with pytest.raises(QuantizedMergeError, match=r"\['to_q', 'to_k', 'to_v'\].*quantised.*model.quantize=none"):
        merge_adapters(model)
    branch = model.to_q.owned["default"]
    with pytest.raises(QuantizedMergeError, match="stored quantised"):
        branch.merge()
    assert branch.merged_scale is None and model.o.owned["default"].merged_scale is None
    for n, q in before.items():
        assert torch.equal(model.get_submodule(n).base_layer.weight.qdata, q)
    torch.testing.assert_close(model(x), live, rtol=0, atol=0)


@pytest.mark.parametrize("decomposition", ["qr", "relu"])
def test_export_lora_is_exact_on_the_quantised_base(decomposition, gen, tmp_path):
    quantised, _, _ = _bases(gen)
    fresh = copy.deepcopy(quantised)
    model = _inject(quantised, decomposition=decomposition)
    _randomise_like([model], gen)
    export_lora(model, tmp_path / "lora")
    load_adapter(fresh, tmp_path / "lora")
    x = torch.randn(2, 5, 48, generator=gen)
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)
    # lora_A = s R - right^T W0 with the dequantised W0 (computed here in float64).
    branch = model.o.owned["default"]
    _, right = ref_basis(branch.P.detach().double(), decomposition)
    W0 = model.o.base_layer.weight.dequantize(torch.float32).double()
    expected_A = branch.scaling * branch.R.detach().double() - right.T @ W0
    exported = fresh.o.owned["default"].lora_A.detach().double()
    torch.testing.assert_close(exported, expected_A, rtol=1e-5, atol=1e-6)


def test_save_load_between_quantised_and_plain_bases(gen, tmp_path):
    quantised, _, original = _bases(gen)
    q_fresh, plain = copy.deepcopy(quantised), copy.deepcopy(original)
    model = _inject(quantised)
    _randomise_like([model], gen)
    save_adapter(model, tmp_path / "a")
    x = torch.randn(4, 48, generator=gen)
    load_adapter(q_fresh, tmp_path / "a")
    torch.testing.assert_close(q_fresh(x), model(x), rtol=0, atol=0)
    # The unquantised base it was quantised from is the same base (within quantisation).
    load_adapter(plain, tmp_path / "a")
    torch.testing.assert_close(plain(x), model(x), rtol=0.05, atol=0.05 * model(x).abs().max().item())
    other = copy.deepcopy(original)
    with torch.no_grad():
        for p in other.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    quantize_linears(other)
    with pytest.raises(AdapterLoadError, match="another base"):
        load_adapter(other, tmp_path / "a")


def test_fingerprint_survives_int8_at_full_width():
    """3072-wide heavy-tailed rows: int8 moves row sums by more than RTOL, yet it is the same base."""
    student_t = torch.distributions.StudentT(3.0)
    torch.manual_seed(0)
    for _ in range(3):
        weight = student_t.sample((256, 3072)) * 0.02
        model = nn.Sequential(nn.Linear(3072, 256, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(weight)
        plain = weight_fingerprint(weight)
        quantize_linears(model)
        quantised = weight_fingerprint(model[0].weight)
        assert quantised["quantized"] == "int8" and "quantized" not in plain
        assert fingerprint_mismatch(plain, quantised, [256, 3072]) is None
        assert fingerprint_mismatch(quantised, plain, [256, 3072]) is None
        another = weight_fingerprint(student_t.sample((256, 3072)) * 0.02)
        assert fingerprint_mismatch(another, quantised, [256, 3072]) is not None
        assert fingerprint_mismatch(quantised, another, [256, 3072]) is not None


def test_inference_cache_follows_the_adapter_on_a_quantised_base(gen):
    quantised, twin, _ = _bases(gen)
    models = [_inject(quantised), _inject(twin)]
    _randomise_like(models, gen)
    x = torch.randn(5, 48, generator=gen)
    with torch.no_grad():
        first = models[0](x)
        torch.testing.assert_close(models[0](x), first, rtol=0, atol=0)  # cached factors
        for m in models:
            m.to_q.owned["default"].P.mul_(1.5)
        torch.testing.assert_close(models[0](x), models[1](x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(models[0](x), first)
