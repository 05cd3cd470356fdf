"""The paper's parameter counts on a weightless (meta-device) full-size OmniGen."""

from __future__ import annotations

import pytest
import torch

from deft_omni.adapters import AdapterConfig, inject_adapter, param_groups

diffusers = pytest.importorskip("diffusers")

# The paper's layout: fused q,k,v of every layer plus the attention output.
PAPER_TARGETS = r"layers\.\d+\.self_attn\.(to_q|to_k|to_v|to_out\.0)"
QKV = [["to_q", "to_k", "to_v"]]


@pytest.fixture(scope="module")
def meta_omnigen_factory():
    def make():
        rope = {"short_factor": [1.0] * 48, "long_factor": [1.0] * 48}
        with torch.device("meta"):
            return diffusers.OmniGenTransformer2DModel(rope_scaling=rope)  # OmniGen-v1's sizes are the defaults
    return make


@pytest.mark.parametrize("method,expected", [("deft", 37_748_736), ("lora", 37_748_736), ("para", 25_165_824)])
def test_paper_counts(meta_omnigen_factory, method, expected):
    model = meta_omnigen_factory()
    assert model.config.hidden_size == 3072 and model.config.num_layers == 32
    report = inject_adapter(model, AdapterConfig(method=method, rank=64, target_modules=PAPER_TARGETS,
                                                 fused_groups=QKV))
    assert len(report.groups) == 32 and len(report.wrapped) == 128
    assert report.trainable_params == expected
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    groups = param_groups(model, lr=1e-3)
    assert sum(p.numel() for g in groups for p in g["params"]) == expected
    if method == "deft":
        assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
        # P: 32 x (9216 + 3072) x 64; R: 32 x 2 x 64 x 3072
        assert sum(p.numel() for p in groups[1]["params"]) == 32 * (9216 + 3072) * 64
