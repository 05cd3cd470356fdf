"""Target selection as peft does it, config validation, parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deft_omni.adapters import (
    AdapterConfig,
    count_parameters,
    delete_adapter,
    inject_adapter,
    param_groups,
    select_targets,
)

from .conftest import TwoLayer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([TwoLayer() for _ in range(2)])
        self.proj_out = nn.Linear(12, 3)


@pytest.mark.parametrize("targets,exclude,expected", [
    (["to_q"], None, ["blocks.0.to_q", "blocks.1.to_q"]),
    (["blocks.1.o"], None, ["blocks.1.o"]),
    (r"blocks\.0\.to_(q|v)", None, ["blocks.0.to_q", "blocks.0.to_v"]),
    ("all-linear", ["o"], ["blocks.0.to_q", "blocks.0.to_k", "blocks.0.to_v",
                           "blocks.1.to_q", "blocks.1.to_k", "blocks.1.to_v"]),
    (["to_q", "o"], r"blocks\.1\..*", ["blocks.0.to_q", "blocks.0.o"]),
])
def test_select_targets(targets, exclude, expected):
    cfg = AdapterConfig(target_modules=targets, exclude_modules=exclude)
    assert sorted(select_targets(Net(), cfg)) == sorted(expected)


def test_no_match_is_a_clear_error():
    with pytest.raises(ValueError, match=r"matched no Linear layer.*blocks.0.to_q"):
        inject_adapter(Net(), AdapterConfig(target_modules=["nope"]))


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"method": "dora"}, "method='dora' is unknown"),
    ({"decomposition": "svd"}, "decomposition='svd' is unknown"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"alpha": -1}, "alpha must be positive"),
    ({"fused_groups": [["a"]]}, "two or more distinct names"),
    ({"target_modules": None}, "target_modules is required"),
])
def test_config_validation(kwargs, match):
    args = {"target_modules": ["o"], **kwargs}
    with pytest.raises(ValueError, match=match):
        AdapterConfig(**args)


def test_report_and_only_adapter_params_train():
    model = Net()
    report = inject_adapter(model, AdapterConfig(rank=2, target_modules=["to_q", "to_k", "to_v"],
                                                 fused_groups=[["to_q", "to_k", "to_v"]]))
    trainable, total = count_parameters(model)
    # per block: P (18 x 2) + R (2 x 12)
    assert trainable == report.trainable_params == 2 * (18 * 2 + 2 * 12)
    assert "2 fused groups" in str(report) and f"{trainable:,}" in str(report)
    assert total == report.total_params


def test_second_adapter_and_delete():
    model = Net()
    inject_adapter(model, AdapterConfig(rank=2, target_modules=["o"]), "a")
    inject_adapter(model, AdapterConfig(method="lora", rank=2, target_modules=["o", "to_q"]), "b")
    with pytest.raises(ValueError, match="already has an adapter named 'a'"):
        inject_adapter(model, AdapterConfig(rank=2, target_modules=["o"]), "a")
    delete_adapter(model, "b")
    assert isinstance(model.blocks[0].to_q, nn.Linear)  # unwrapped again
    assert list(model.blocks[0].o.branch_refs) == ["a"]


def test_param_groups_split_P_from_R():
    model = Net()
    inject_adapter(model, AdapterConfig(rank=2, target_modules=["o"], p_lr_ratio=0.25))
    groups = param_groups(model, lr=2e-3)
    assert [g["name"] for g in groups] == ["adapter_R", "adapter_P"]
    assert groups[1]["lr"] == pytest.approx(5e-4)
    assert all(p.shape[1] == 2 for p in groups[1]["params"])  # P is out x r
    opt = torch.optim.AdamW(groups)
    assert len(opt.param_groups) == 2


def test_param_groups_without_adapter():
    with pytest.raises(ValueError, match="inject an adapter first"):
        param_groups(Net(), lr=1e-3)


def test_injection_keeps_the_models_mode():
    """An adapter injected into an eval-mode model (generation) applies no dropout; in a training-
    mode model it does."""
    import torch
    from torch import nn

    from deft_omni.adapters import AdapterConfig, inject_adapter

    for training in (False, True):
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)).train(training)
        inject_adapter(model, AdapterConfig(method="lora", rank=4, dropout=0.5, target_modules=["0", "2"]))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
        assert all(m.training == training for m in model.modules())
        x = torch.randn(8, 16)
        with torch.no_grad():
            same = torch.equal(model(x), model(x))
        assert same == (not training)
