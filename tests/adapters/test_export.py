"""Any DEFT/PaRa adapter exported as a plain LoRA reproduces the adapted outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deft_omni.adapters import AdapterConfig, export_lora, inject_adapter, load_adapter

from .conftest import ALL_BASES, TwoLayer

TARGETS = ["to_q", "to_k", "to_v", "o"]


def _trained(base, gen, method, decomposition, fused):
    model = copy.deepcopy(base)
    inject_adapter(model, AdapterConfig(method=method, rank=3, alpha=5, decomposition=decomposition,
                                        target_modules=TARGETS,
                                        fused_groups=[["to_q", "to_k", "to_v"]] if fused else []))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


@pytest.mark.parametrize("decomposition", ALL_BASES)
@pytest.mark.parametrize("method", ["deft", "para"])
def test_lora_export_equals_live(decomposition, method, gen, tmp_path):
    base = TwoLayer()
    model = _trained(base, gen, method, decomposition, fused=True)
    export_lora(model, tmp_path / "lora")
    fresh = copy.deepcopy(base)
    cfg = load_adapter(fresh, tmp_path / "lora")
    assert cfg.method == "lora" and cfg.rank == 3
    x = torch.randn(5, 12, generator=gen)
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_lora_export_loads_in_peft(fused, gen, tmp_path):
    peft = pytest.importorskip("peft")
    base = TwoLayer()
    model = _trained(base, gen, "deft", "eigen", fused)
    export_lora(model, tmp_path / "lora", scale=0.5)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora")
    from deft_omni.adapters import set_adapter_scale

    set_adapter_scale(model, "default", 0.5)
    x = torch.randn(5, 12, generator=gen)
    torch.testing.assert_close(theirs(x), model(x), rtol=1e-5, atol=1e-5)


class KVQ(TwoLayer):
    """TwoLayer with the layers defined k, v, q (as CLIP's attention does) and different widths, so
    that a member's rows taken for another's would show."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.to_k = nn.Linear(12, 5, bias=False)
        self.to_v = nn.Linear(12, 6, bias=False)
        self.to_q = nn.Linear(12, 6, bias=False)
        self.o = nn.Linear(6, 12)

    def forward(self, x):
        return self.o(self.to_q(x) * torch.tanh(self.to_k(x)).sum(-1, keepdim=True) + self.to_v(x))


def test_fused_export_follows_the_group_order_not_the_definition_order(gen, tmp_path):
    base = KVQ()
    model = _trained(base, gen, "deft", "qr", fused=True)
    export_lora(model, tmp_path / "lora")
    fresh = copy.deepcopy(base)
    load_adapter(fresh, tmp_path / "lora")
    x = torch.randn(5, 12, generator=gen)
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)
