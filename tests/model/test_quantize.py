"""model.quantize=int8: what is quantised, its bytes, its forward/backward, and its refusals."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from deft_omni.adapters import AdapterConfig, inject_adapter
from deft_omni.model import build_tiny_transformer
from deft_omni.model.quantize import (
    QuantizedLinear,
    QuantizeExtraMissing,
    check_mode,
    linear_weight_bytes,
    quantize_linears,
    stored_linear_weight_bytes,
    weight_bytes,
)
from deft_omni.training.settings import ModelConfig

pytest.importorskip("torchao")
pytestmark = pytest.mark.usefixtures("one_thread")


def _meta_full_size():
    from diffusers import OmniGenTransformer2DModel

    rope = {"short_factor": [1.0] * 48, "long_factor": [1.0] * 48}
    with torch.device("meta"):
        return OmniGenTransformer2DModel(rope_scaling=rope)  # OmniGen-v1's sizes are the defaults


def test_what_is_quantised_and_its_bytes():
    model = build_tiny_transformer(seed=0)
    dense_bf16 = linear_weight_bytes(model, "none", torch.bfloat16)
    predicted = linear_weight_bytes(model, "int8")
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    kept = {n: t.clone() for n, t in model.state_dict().items() if n not in linear_weights}
    assert {"embed_tokens.weight", "norm.weight", "patch_embedding.output_image_proj.weight"} <= set(kept)
    names = quantize_linears(model, "int8")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert names == linears and len(names) == 18
    assert all(isinstance(model.get_submodule(n), QuantizedLinear) for n in names)
    # Embeddings, norms, the patch-embedding convolutions and biases keep their dtype and values.
    state = model.state_dict()
    for n, t in kept.items():
        assert type(state[n]) is torch.Tensor and torch.equal(state[n], t), n
    # The formula is what the quantised tensors hold: integers, fp32 scales, int8 zero points.
    assert stored_linear_weight_bytes(model) == predicted
    assert predicted == sum(m.out_features * (m.in_features + 5) for m in model.modules() if isinstance(m, nn.Linear))
    # Tiny layers are 64 wide, so the 5 bytes per row show; the full-size model is 3072+ wide.
    assert predicted / dense_bf16 < 0.53
    full = _meta_full_size()
    ratio = linear_weight_bytes(full, "int8") / linear_weight_bytes(full, "none", torch.bfloat16)
    assert 0.5 < ratio < 0.5 * (1 + 5 / 3072)
    assert weight_bytes(3072, 8192, "int8") == 3072 * 8197
    assert weight_bytes(3072, 8192, "none", torch.float32) == 3072 * 8192 * 4


@pytest.mark.parametrize("bias", [False, True])
def test_quantised_linear_is_the_dequantised_product(bias):
    """Forward and gradients equal a float64 Linear with the dequantised weight (fp32 rounding)."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 40, bias=bias))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(40, 48, generator=g) * 0.1)
    original = model[0].weight.detach().clone()
    quantize_linears(model)
    layer = model[0]
    if bias:
        layer.bias.requires_grad_(True)
    W = layer.weight.dequantize(torch.float32).double()
    x = torch.randn(3, 5, 48, generator=g, requires_grad=True)
    y = layer(x)
    x64 = x.detach().double().requires_grad_(True)
    y64 = x64 @ W.T + (layer.bias.detach().double() if bias else 0)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-6)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)
    y64.backward(gy.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    if bias:
        torch.testing.assert_close(layer.bias.grad.double(), gy.double().sum(dim=(0, 1)), rtol=1e-5, atol=1e-6)
    # The quantisation itself: each entry within half a step (row absmax / 127.5) of the original.
    half_step = original.abs().amax(dim=1, keepdim=True) / 255
    assert ((W.float() - original).abs() <= half_step + 1e-6).all()


def test_backward_keeps_no_dense_weight_copy():
    """torchao's own linear keeps a compute-dtype copy of W for grad(x); QuantizedLinear keeps the int8 W."""
    layer = nn.Linear(256, 512, bias=False).to(torch.bfloat16)
    model = nn.Sequential(layer)
    quantize_linears(model)
    x = torch.randn(4, 256, dtype=torch.bfloat16, requires_grad=True)

    def dense_copies(fn) -> list:
        saved = []

        def pack(t):
            if type(t) in (torch.Tensor, nn.Parameter) and t.numel() == 256 * 512:
                saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return saved

    assert dense_copies(lambda: model(x)) == []
    raw = model[0].weight  # the same int8 tensor behind a plain F.linear, as torchao alone runs it
    assert len(dense_copies(lambda: nn.functional.linear(x, raw))) == 1


def test_quantised_weights_cannot_train():
    model = nn.Sequential(nn.Linear(8, 8))
    quantize_linears(model)
    model[0].weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="quantised base weight .* cannot train.*model.quantize=none"):
        model(torch.randn(2, 8))


def test_quantise_before_adapters():
    model = nn.Sequential(nn.Linear(8, 8))
    inject_adapter(model, AdapterConfig(rank=2, target_modules=["0"]))
    with pytest.raises(RuntimeError, match="before injecting adapters"):
        quantize_linears(model)


def test_modes_and_config():
    assert check_mode(None) == "none" and check_mode("INT8") == "int8"
    assert ModelConfig().quantize == "none" and ModelConfig(quantize="Int8").quantize == "int8"
    with pytest.raises(ValueError, match=r"model.quantize='int4'.*\['none', 'int8'\]"):
        ModelConfig(quantize="int4")
    model = nn.Sequential(nn.Linear(8, 8))
    assert quantize_linears(model, "none") == [] and type(model[0]) is nn.Linear


def test_missing_extra_is_named(monkeypatch):
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)  # what an environment without it imports
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(QuantizeExtraMissing, match=r"needs torchao.*pip install 'deft_omni\[quant\]'.*quantize=none"):
        quantize_linears(model, "int8")
    assert type(model[0]) is nn.Linear
