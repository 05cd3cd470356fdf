"""A fused group (to_q, to_k, to_v) equals one adapter on the concatenated Linear."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from deft_omni.adapters import AdapterConfig, inject_adapter

from .conftest import TwoLayer

GROUP = [["to_q", "to_k", "to_v"]]


class Concatenated(nn.Module):
    """The original OmniGen layout: one qkv_proj, split after the product."""

    def __init__(self, split: TwoLayer) -> None:
        super().__init__()
        d = split.to_q.out_features
        self.d = d
        self.qkv = nn.Linear(split.to_q.in_features, 3 * d, bias=False)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([split.to_q.weight, split.to_k.weight, split.to_v.weight]))
        self.o = copy.deepcopy(split.o)

    def forward(self, x):
        q, k, v = self.qkv(x).split(self.d, dim=-1)
        return self.o(q * torch.tanh(k) + v)


def _pair(method, decomposition, gen, dropout=0.0):
    base = TwoLayer()
    fused = copy.deepcopy(base)
    cfg = AdapterConfig(method=method, rank=4, alpha=8, decomposition=decomposition, dropout=dropout,
                        target_modules=["to_q", "to_k", "to_v", "o"], fused_groups=GROUP, init_identity=False)
    report = inject_adapter(fused, cfg)
    cat = Concatenated(base)
    cat_cfg = AdapterConfig(method=method, rank=4, alpha=8, decomposition=decomposition, dropout=dropout,
                            target_modules=["qkv", "o"], init_identity=False)
    inject_adapter(cat, cat_cfg)
    with torch.no_grad():
        for (n1, p1), (n2, p2) in zip(
            [(n, p) for n, p in fused.named_parameters() if p.requires_grad],
            [(n, p) for n, p in cat.named_parameters() if p.requires_grad],
        ):
            assert p1.shape == p2.shape, (n1, n2)
            p1.copy_(torch.randn(p1.shape, generator=gen) * 0.3)
            p2.copy_(p1)
    return fused, cat, report


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("method,decomposition", [("deft", "qr"), ("deft", "relu"), ("deft", "tsvd"),
                                                  ("deft", "nmf"), ("para", "qr"), ("lora", "qr")])
def test_fused_group_equals_concatenated_linear(method, decomposition, gen):
    fused, cat, report = _pair(method, decomposition, gen)
    assert report.groups == [["to_q", "to_k", "to_v"]]
    x = torch.randn(3, 7, 12, generator=gen, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y1, y2 = fused(x), cat(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    y1.square().sum().backward()
    y2.square().sum().backward()
    for g1, g2 in zip(_grads(fused), _grads(cat)):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4 * g2.abs().max().item())
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_lora_fused_group_shares_one_A():
    model = TwoLayer()
    inject_adapter(model, AdapterConfig(method="lora", rank=2, target_modules=["to_q", "to_k", "to_v"],
                                        fused_groups=GROUP))
    shared = model.to_q.owned["default"]
    assert model.to_k.branch_refs["default"][0] is shared and model.to_v.branch_refs["default"][0] is shared
    assert shared.lora_A.shape == (2, 12) and shared.lora_B.shape == (18, 2)
    assert "default" not in model.to_k.owned  # registered (and saved) once


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_fused_group_under_gradient_checkpointing(use_reentrant, gen):
    fused, cat, _ = _pair("deft", "qr", gen, dropout=0.3)
    x = torch.randn(2, 5, 12, generator=gen, requires_grad=True)
    fused.train(), cat.train()
    torch.manual_seed(7)
    ref = fused(x)
    ref.square().sum().backward()
    ref_grads = _grads(fused)
    fused.zero_grad()
    torch.manual_seed(7)
    out = checkpoint(fused, x, use_reentrant=use_reentrant)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    for g, r in zip(_grads(fused), ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # and the same dropout mask as the concatenated layer (one mask for the three members)
    torch.manual_seed(7)
    torch.testing.assert_close(cat(x), ref, rtol=1e-5, atol=1e-5)


def test_factor_is_computed_once_per_step(gen, monkeypatch):
    fused, _, _ = _pair("deft", "qr", gen)
    branch = fused.to_q.owned["default"]
    calls = []
    real = type(branch)._down
    monkeypatch.setattr(type(branch), "_down", lambda self, x, cdt: calls.append(self) or real(self, x, cdt))
    x = torch.randn(2, 4, 12, generator=gen)
    fused(x).sum().backward()
    assert sum(c is branch for c in calls) == 1  # three member calls, one computation
    fused(x + 1).sum()
    assert sum(c is branch for c in calls) == 2
    assert branch._h_cache is None  # released after the last member: no graph kept alive


def test_fused_members_must_share_input_size():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)

    with pytest.raises(ValueError, match="a\\+b: fused members must share in_features"):
        inject_adapter(Bad(), AdapterConfig(target_modules=["a", "b"], rank=2, fused_groups=[["a", "b"]]))


def test_partial_group_warns_and_wraps_separately():
    model = TwoLayer()
    with pytest.warns(UserWarning, match="only"):
        report = inject_adapter(model, AdapterConfig(rank=2, target_modules=["to_q", "to_k"], fused_groups=GROUP))
    assert report.groups == [] and sorted(report.wrapped) == ["to_k", "to_q"]
