"""Original OmniGen-v1 layout -> diffusers: checked against hand computations on the
ORIGINAL weights (read straight from the fixture's model.safetensors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fixtures.tiny_original import tiny_original_config

from deft_omni.model import (
    TINY_TRANSFORMER_CONFIG,
    convert_original_state_dict,
    load_omnigen,
    original_key_map,
    transformer_config_from_original,
)

H, I = TINY_TRANSFORMER_CONFIG["hidden_size"], TINY_TRANSFORMER_CONFIG["intermediate_size"]
HEADS = TINY_TRANSFORMER_CONFIG["num_attention_heads"]


@pytest.fixture(scope="module")
def original(tiny_original_dir):
    return load_file(str(tiny_original_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def parts(tiny_original_dir):
    return load_omnigen(tiny_original_dir)


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_layout_detected(parts):
    assert parts.layout == "original"
    assert parts.transformer.config.pos_embed_max_size == TINY_TRANSFORMER_CONFIG["pos_embed_max_size"]


def test_qkv_split_order(parts, original):
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(1))
    w = original["llm.layers.0.self_attn.qkv_proj.weight"]
    q, k, v = (x @ w.T).split(H, dim=-1)  # fused rows: q, then k, then v
    attn = parts.transformer.layers[0].self_attn
    with torch.no_grad():
        torch.testing.assert_close(attn.to_q(x), q, rtol=0, atol=1e-6)
        torch.testing.assert_close(attn.to_k(x), k, rtol=0, atol=1e-6)
        torch.testing.assert_close(attn.to_v(x), v, rtol=0, atol=1e-6)
        o = original["llm.layers.0.self_attn.o_proj.weight"]
        torch.testing.assert_close(attn.to_out[0](x), x @ o.T, rtol=0, atol=1e-6)


def test_mlp_gate_up_order(parts, original):
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(2))
    gate_up = x @ original["llm.layers.0.mlp.gate_up_proj.weight"].T
    gate, up = gate_up[:, :I], gate_up[:, I:]  # gate half first
    ref = (up * F.silu(gate)) @ original["llm.layers.0.mlp.down_proj.weight"].T
    with torch.no_grad():
        torch.testing.assert_close(parts.transformer.layers[0].mlp(x), ref, rtol=0, atol=1e-5)


def test_whole_block_by_hand(parts, original):
    """Layer 0 end to end (norms, attention, residuals, MLP), RoPE and mask off."""
    x = torch.randn(2, 6, H, generator=torch.Generator().manual_seed(3))
    p = "llm.layers.0."
    h = _rms(x, original[p + "input_layernorm.weight"])
    q, k, v = (h @ original[p + "self_attn.qkv_proj.weight"].T).split(H, dim=-1)
    heads = [t.view(2, 6, HEADS, H // HEADS).transpose(1, 2) for t in (q, k, v)]
    att = torch.softmax(heads[0] @ heads[1].transpose(-1, -2) / (H // HEADS) ** 0.5, dim=-1)
    a = (att @ heads[2]).transpose(1, 2).reshape(2, 6, H) @ original[p + "self_attn.o_proj.weight"].T
    x1 = x + a
    h2 = _rms(x1, original[p + "post_attention_layernorm.weight"])
    gate, up = (h2 @ original[p + "mlp.gate_up_proj.weight"].T).chunk(2, dim=-1)
    ref = x1 + (up * F.silu(gate)) @ original[p + "mlp.down_proj.weight"].T
    with torch.no_grad():
        out = parts.transformer.layers[0](x, attention_mask=None, image_rotary_emb=None)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_every_key_consumed(parts, original):
    plan = original_key_map(original.keys())
    assert all(plan[k] for k in original)  # nothing dropped
    targets = [t for ts in plan.values() for t in ts]
    model_sd = parts.transformer.state_dict()
    assert len(targets) == len(set(targets)) and set(targets) == set(model_sd)
    for key, ts in plan.items():
        if len(ts) == 1:  # copied tensors arrive unchanged (incl. pos_embed, t-embedders)
            assert torch.equal(model_sd[ts[0]], original[key]), key


def test_full_forward(parts, make_inputs):
    inputs = make_inputs()
    with torch.no_grad():
        out = parts.transformer(**inputs).sample
    assert out.shape == inputs["hidden_states"].shape and torch.isfinite(out).all()


def test_unknown_key_is_an_error(original):
    sd = dict(original)
    sd["lm_head.weight"] = torch.zeros(3, 3)
    sd["llm.layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(KeyError, match="lm_head.weight") as info:
        convert_original_state_dict(sd)
    assert "q_proj" in str(info.value)


def test_rotary_buffers_dropped(original):
    sd = dict(original)
    sd["llm.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    assert set(convert_original_state_dict(sd)) == set(convert_original_state_dict(original))


def test_gqa_split_sizes():
    # 4 query heads, 2 KV heads of dim 16: q 64 rows, k and v 32 rows each.
    w = torch.arange(128 * 64, dtype=torch.float32).view(128, 64)
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
    out = convert_original_state_dict({"llm.layers.3.self_attn.qkv_proj.weight": w}, cfg)
    pre = "layers.3.self_attn."
    assert torch.equal(out[pre + "to_q.weight"], w[:64])
    assert torch.equal(out[pre + "to_k.weight"], w[64:96])
    assert torch.equal(out[pre + "to_v.weight"], w[96:])


def test_config_numbers(original):
    cfg = tiny_original_config()
    out = transformer_config_from_original(cfg, state_dict=original)
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "num_layers", "vocab_size", "pad_token_id", "pos_embed_max_size", "patch_size",
                "in_channels", "max_position_embeddings", "original_max_position_embeddings"):
        assert out[key] == TINY_TRANSFORMER_CONFIG[key], key
    assert out["rope_scaling"] == TINY_TRANSFORMER_CONFIG["rope_scaling"]
    # OmniGen-v1's real numbers, with wrapper constants as defaults.
    real = dict(cfg, vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, pad_token_id=32000,
                rope_scaling={"type": "su", "short_factor": [1.1] * 48, "long_factor": [2.0] * 48})
    big = transformer_config_from_original(real)
    assert (big["num_layers"], big["pos_embed_max_size"], big["patch_size"]) == (32, 192, 2)
    assert big["rope_scaling"]["long_factor"] == [2.0] * 48
    with pytest.raises(ValueError, match="head_dim/2 = 48"):
        transformer_config_from_original(dict(real, rope_scaling={"type": "su", "short_factor": [1.0],
                                                                   "long_factor": [1.0]}))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        transformer_config_from_original({k: v for k, v in real.items() if k != "num_hidden_layers"})


def test_rope_settings_in_both_config_forms(original):
    """The original's top-level rope_scaling/rope_theta, and the rope_parameters dict that
    transformers >= 5 writes: both give the same transformer config, and the outputs agree."""
    from transformers import Phi3Config

    factors = {"short_factor": [1.25] * 8, "long_factor": [2.5] * 8}
    legacy = dict(tiny_original_config(), rope_theta=500000.0, rope_scaling={"type": "su", **factors})
    saved = Phi3Config(**{k: v for k, v in legacy.items() if k not in ("rope_scaling", "rope_theta")},
                       rope_parameters={"rope_type": "longrope", "rope_theta": 500000.0,
                                        "original_max_position_embeddings": 4096, **factors}).to_dict()
    assert "rope_parameters" in saved and "rope_scaling" not in saved and "rope_theta" not in saved
    a = transformer_config_from_original(legacy, state_dict=original)
    b = transformer_config_from_original(saved, state_dict=original)
    assert a["rope_base"] == b["rope_base"] == 500000.0
    assert a["rope_scaling"] == b["rope_scaling"] == {"short_factor": [1.25] * 8, "long_factor": [2.5] * 8}
    plain = dict(saved, rope_parameters={"rope_type": "default", "rope_theta": 20000.0})
    out = transformer_config_from_original(plain, state_dict=original)
    assert out["rope_base"] == 20000.0 and out["rope_scaling"]["long_factor"] == [1.0] * 8
    with pytest.raises(ValueError, match="must agree"):
        transformer_config_from_original(dict(saved, rope_theta=10000.0), state_dict=original)


def test_model_pt_weights_only(tmp_path, parts, monkeypatch):
    from fixtures.tiny_original import save_tiny_original_layout

    from deft_omni.model import loading

    folder = save_tiny_original_layout(tmp_path / "pt", seed=0, weights_format="pt")
    assert (folder / "model.pt").is_file() and not (folder / "model.safetensors").exists()
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loading.torch, "load", spy)
    pt_parts = load_omnigen(folder)
    assert seen and all(w is True for w in seen)
    ref = parts.transformer.state_dict()
    for k, v in pt_parts.transformer.state_dict().items():
        assert torch.equal(v, ref[k]), k
