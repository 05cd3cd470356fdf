"""The module-name presets match exactly the intended Linear layers of the tiny model."""

from __future__ import annotations

import re

import torch.nn as nn

from deft_omni.model import ATTN_OUT, ATTN_QKV, MLP, TINY_TRANSFORMER_CONFIG, build_tiny_transformer


def test_presets_against_named_modules():
    model = build_tiny_transformer(0)
    names = dict(model.named_modules())
    n = TINY_TRANSFORMER_CONFIG["num_layers"]
    expected = {
        ATTN_QKV: {f"layers.{i}.self_attn.to_{x}" for i in range(n) for x in "qkv"},
        ATTN_OUT: {f"layers.{i}.self_attn.to_out.0" for i in range(n)},
        MLP: {f"layers.{i}.mlp.{x}" for i in range(n) for x in ("gate_up_proj", "down_proj")},
    }
    for pattern, want in expected.items():
        full = {k for k in names if re.fullmatch(pattern, k)}
        assert full == want, pattern
        assert {k for k in names if re.search(pattern, k)} == want, pattern
        assert all(isinstance(names[k], nn.Linear) for k in full)
    # Together they cover every Linear inside the blocks.
    block_linears = {k for k, m in names.items() if k.startswith("layers.") and isinstance(m, nn.Linear)}
    assert block_linears == set().union(*expected.values())
