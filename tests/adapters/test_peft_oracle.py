"""peft's DeftConfig / LoraConfig as oracles for the variants they share with us."""

from __future__ import annotations

import copy

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import DeftConfig, LoraConfig, PeftModel, get_peft_model  # noqa: E402

from deft_omni.adapters import AdapterConfig, inject_adapter, save_adapter  # noqa: E402

from fixtures.peft_copy import copy_into_peft  # noqa: E402

from .conftest import TwoLayer  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "o"]
VARIANTS = [("deft", "relu"), ("deft", "qr"), ("para", "relu"), ("para", "qr"), ("lora", None)]


def _ours(base, method, decomposition, gen):
    model = copy.deepcopy(base)
    cfg = AdapterConfig(method=method, rank=3, alpha=6, decomposition=decomposition or "qr",
                        target_modules=TARGETS, init_identity=False)
    inject_adapter(model, cfg)
    with torch.no_grad():  # non-trivial values everywhere, so the comparison can fail
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def _peft_config(method, decomposition):
    if method == "lora":
        return LoraConfig(r=3, lora_alpha=6, target_modules=TARGETS)
    return DeftConfig(r=3, alpha=6, target_modules=TARGETS, decomposition_method=decomposition, para=method == "para")


def _copy_into_peft(ours, theirs, method):
    copy_into_peft(ours, theirs, method, TARGETS)


@pytest.mark.parametrize("method,decomposition", VARIANTS)
def test_same_weights_same_outputs_and_grads(method, decomposition, gen):
    base = TwoLayer()
    ours = _ours(base, method, decomposition, gen)
    theirs = get_peft_model(copy.deepcopy(base), _peft_config(method, decomposition))
    _copy_into_peft(ours, theirs, method)
    for tokens in (2, 40):  # both of our associations
        x = torch.randn(tokens, 12, generator=gen)
        y_ours, y_peft = ours(x), theirs(x)
        torch.testing.assert_close(y_ours, y_peft, rtol=1e-5, atol=1e-5)
        y_ours.square().sum().backward()
        y_peft.square().sum().backward()
    for name in TARGETS:
        branch = ours.get_submodule(name).owned["default"]
        layer = theirs.base_model.model.get_submodule(name)
        if method == "lora":
            torch.testing.assert_close(branch.lora_A.grad, layer.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-5)
        else:
            expected = layer.deft_P["default"].grad
            # fp32 on both sides; QR's backward loses a few digits, so compare against the scale.
            torch.testing.assert_close(branch.P.grad, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("method,decomposition", VARIANTS)
def test_saved_folder_loads_in_peft(method, decomposition, gen, tmp_path):
    base = TwoLayer()
    ours = _ours(base, method, decomposition, gen)
    save_adapter(ours, tmp_path / "adapter")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter")
    x = torch.randn(5, 12, generator=gen)
    torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
    # and loading really changed something
    assert not torch.allclose(base(x), ours(x), atol=1e-3)


def test_identity_init_equals_peft_identity_init(gen):
    base = TwoLayer()
    ours = copy.deepcopy(base)
    inject_adapter(ours, AdapterConfig(rank=3, decomposition="qr", target_modules=TARGETS))
    theirs = get_peft_model(copy.deepcopy(base), DeftConfig(r=3, target_modules=TARGETS, decomposition_method="qr"))
    _copy_into_peft(ours, theirs, "deft")
    x = torch.randn(4, 12, generator=gen)
    torch.testing.assert_close(ours(x), base(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(theirs(x), base(x), rtol=0, atol=1e-6)
