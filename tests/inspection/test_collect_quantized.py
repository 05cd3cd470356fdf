"""Inspection reads a quantised base's W0 as its dequantised values (model.quantize=int8)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deft_omni.adapters import AdapterConfig, adapter_branches, inject_adapter
from deft_omni.inspection.collect import joint_weight

pytest.importorskip("torchao")
from deft_omni.model.quantize import quantize_linears  # noqa: E402


def test_joint_weight_of_a_quantised_fused_unit():
    model = nn.ModuleDict({"q": nn.Linear(16, 8), "k": nn.Linear(16, 8)})
    quantize_linears(model)
    inject_adapter(model, AdapterConfig(rank=2, target_modules=["q", "k"], fused_groups=[["q", "k"]]))
    (_, branch), = adapter_branches(model, "default")
    expected = torch.cat([model[n].base_layer.weight.dequantize(torch.float32) for n in ("q", "k")])
    W0 = joint_weight(branch, torch.float64)
    assert type(W0) is torch.Tensor and W0.dtype == torch.float64
    assert torch.equal(W0, expected.double())
