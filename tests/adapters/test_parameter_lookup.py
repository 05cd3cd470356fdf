"""Adapter parameters are found through the adapter modules, never by matching names."""

from __future__ import annotations

import torch
from torch import nn

from deft_omni.adapters import AdapterConfig, adapter_parameters, inject_adapter, param_groups

from .conftest import TwoLayer


class NamedLikeUs(nn.Module):
    """A base whose own modules are called 'owned' and 'P': names an adapter also uses."""

    def __init__(self) -> None:
        super().__init__()
        self.block = TwoLayer()
        self.owned = nn.ModuleDict({"default": nn.Linear(12, 12)})
        self.owned["default"].P = nn.Parameter(torch.zeros(3))


def _model():
    model = NamedLikeUs()
    inject_adapter(model, AdapterConfig(rank=2, target_modules=["block.to_q", "block.to_k", "block.o"],
                                        fused_groups=[["to_q", "to_k"]]))
    inject_adapter(model, AdapterConfig(method="lora", rank=2, target_modules=["block.o"]), "second")
    return model


def test_adapter_and_base_parameters_split_by_module_type():
    from deft_omni.adapters import adapter_parameter_ids, base_parameters

    model = _model().to(torch.bfloat16)
    names = dict(model.named_parameters())
    ours = dict(adapter_parameters(model))
    assert sorted(ours) == sorted([
        "block.to_q.owned.default.P", "block.to_q.owned.default.R",
        "block.o.owned.default.P", "block.o.owned.default.R",
        "block.o.owned.second.lora_A", "block.o.owned.second.lora_B"])
    assert all(names[n] is p for n, p in ours.items())  # the model's own names
    assert sorted(adapter_parameters(model, "second")) == sorted(
        (n, p) for n, p in ours.items() if ".second." in n)
    base = dict(base_parameters(model))
    assert "owned.default.weight" in base and "owned.default.P" in base  # the base's, not an adapter's
    assert set(base) | set(ours) == set(names) and not set(base) & set(ours)
    assert adapter_parameter_ids(model) == {id(p) for p in ours.values()}
    assert {p.dtype for p in base.values()} == {torch.bfloat16}  # fp32 masters stay out


def test_param_groups_put_each_p_at_its_ratio():
    model = _model()
    for _, p in adapter_parameters(model, "default"):
        p.requires_grad_(True)  # injecting "second" froze them
    model.owned["default"].P.requires_grad_(True)  # a trainable base tensor named P: not ours
    groups = {g["name"]: g for g in param_groups(model, lr=1.0, adapter_name="default", p_lr_ratio=0.1)}
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(groups["adapter_P"]) == {id(model.block.to_q.owned["default"].P), id(model.block.o.owned["default"].P)}
    assert ids(groups["adapter_R"]) == {id(model.block.to_q.owned["default"].R), id(model.block.o.owned["default"].R)}
    assert groups["adapter_P"]["lr"] == 0.1
