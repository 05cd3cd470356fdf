"""The no-grad factor cache follows every way the tensors behind it can change."""

from __future__ import annotations

import pytest
import torch

from deft_omni.adapters import AdapterConfig, inject_adapter

from .conftest import TwoLayer

TARGETS = ["to_q", "to_k", "to_v", "o"]


def _model(method="deft", decomposition="qr"):
    torch.manual_seed(0)
    model = TwoLayer(d_in=16, d_qkv=8)
    inject_adapter(model, AdapterConfig(method=method, rank=3, decomposition=decomposition, target_modules=TARGETS,
                                        fused_groups=[["to_q", "to_k", "to_v"]], init_identity=False))
    return model


def _fresh(model, x):
    """The output computed from scratch (grad mode never reads the cache)."""
    with torch.enable_grad():
        return model(x).detach()


@pytest.mark.parametrize("method", ["deft", "para", "lora"])
def test_data_copy_into_adapter_parameter_is_seen(method):
    model = _model(method)
    x = torch.randn(5, 16)
    branch = model.o.owned["default"]
    param = branch.lora_A if method == "lora" else branch.P
    with torch.no_grad():
        if method == "lora":
            branch.lora_B.normal_()  # zero at init: lora_A would not matter
        before = model(x)  # fills the cache
        param.data.copy_(torch.randn_like(param))  # bypasses the version counter
        after = model(x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _fresh(model, x), rtol=1e-6, atol=1e-6)


def test_base_weight_data_assignment_is_seen():
    model = _model()
    x = torch.randn(5, 16)
    layer = model.o
    with torch.no_grad():
        model(x)
        layer.base_layer.weight.data = 2 * layer.base_layer.weight.data  # a new storage, same version
        got = model(x)
    torch.testing.assert_close(got, _fresh(model, x), rtol=1e-6, atol=1e-6)
    # vector_to_parameters rebinds .data too
    vec = torch.nn.utils.parameters_to_vector(model.parameters()) * 0.5
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(vec, model.parameters())
        got = model(x)
    torch.testing.assert_close(got, _fresh(model, x), rtol=1e-6, atol=1e-6)


def test_double_after_a_cached_forward_gives_fp64_factors():
    model = _model()
    x = torch.randn(5, 16)
    with torch.no_grad():
        model(x)
        model.double()
        branch = model.o.owned["default"]
        B, A = branch.factors()
        got = model(x.double())
    assert B.dtype == A.dtype == torch.float64
    torch.testing.assert_close(got, _fresh(model, x.double()), rtol=1e-12, atol=1e-12)


def test_device_move_drops_the_cache_and_moves_the_merge_factor():
    from deft_omni.adapters import merge_adapters

    model = _model()
    x = torch.randn(5, 16)
    branches = [model.to_q.owned["default"], model.o.owned["default"]]
    with torch.no_grad():
        model(x)
    assert all(b._eval_cache is not None for b in branches)
    model.to("meta")  # stands in for .to("cuda") on a CPU-only machine
    assert all(b._eval_cache is None for b in branches)

    merged = _model()
    merge_adapters(merged)
    merged.to("meta")  # unmerge must find its cached factor beside the weights
    assert all(b._merge_A.device.type == "meta" for b in (merged.to_q.owned["default"], merged.o.owned["default"]))
