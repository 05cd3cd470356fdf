"""A tiny checkpoint in the ORIGINAL OmniGen-v1 layout (VectorSpaceLab/OmniGen).

Written independently of :mod:`deft_omni.model.convert`: every key and shape below
comes from the original module tree (``OmniGen`` in OmniGen/model.py wrapping a
transformers ``Phi3Model`` as ``llm``), not from running the converter backwards, so
a test that loads this folder really checks the mapping.

Folder layout (as the hub repo Shitao/OmniGen-v1)::

    config.json          Phi3Config-style dict (tiny numbers)
    model.safetensors    original key names   (or model.pt, weights_format="pt")
    tokenizer.json, tokenizer_config.json     tokenizer files at the top level
    vae/                 AutoencoderKL (diffusers format)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .tiny import TINY_TRANSFORMER_CONFIG, build_tiny_vae
from .tiny_tokenizer import build_tiny_tokenizer

# The original OmniGen hard-codes these in its constructor and timestep embedder;
# they are not part of config.json.
_TIME_FREQ_DIM = 256


def tiny_original_config() -> dict:
    """The ``config.json`` of the tiny original-layout checkpoint (a Phi3Config dict).

    Mirrors OmniGen-v1's config with the tiny sizes; ``rope_scaling`` keeps the
    original's legacy ``"type": "su"`` form with ``head_dim / 2`` factors.
    """
    t = TINY_TRANSFORMER_CONFIG
    return {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": t["vocab_size"],
        "hidden_size": t["hidden_size"],
        "intermediate_size": t["intermediate_size"],
        "num_hidden_layers": t["num_layers"],
        "num_attention_heads": t["num_attention_heads"],
        "num_key_value_heads": t["num_key_value_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": t["max_position_embeddings"],
        "original_max_position_embeddings": t["original_max_position_embeddings"],
        "rope_theta": float(t["rope_base"]),
        "rope_scaling": {
            "type": "su",
            "short_factor": list(t["rope_scaling"]["short_factor"]),
            "long_factor": list(t["rope_scaling"]["long_factor"]),
        },
        "rms_norm_eps": t["rms_norm_eps"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": t["pad_token_id"],
        "sliding_window": t["max_position_embeddings"],
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def original_tiny_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the tiny original-layout state dict with its shape, in module order."""
    t = TINY_TRANSFORMER_CONFIG
    h, inter, c, p = t["hidden_size"], t["intermediate_size"], t["in_channels"], t["patch_size"]
    head_dim = h // t["num_attention_heads"]
    q_rows = t["num_attention_heads"] * head_dim
    kv_rows = t["num_key_value_heads"] * head_dim
    side = t["pos_embed_max_size"]

    shapes: dict[str, tuple[int, ...]] = {}
    # OmniGen itself: patch embedders (Conv2d), time embedders (Linear-SiLU-Linear),
    # the 2-D sin-cos table (a persistent buffer) and the DiT final layer.
    for emb in ("x_embedder", "input_x_embedder"):
        shapes[f"{emb}.proj.weight"] = (h, c, p, p)
        shapes[f"{emb}.proj.bias"] = (h,)
    for emb in ("time_token", "t_embedder"):
        shapes[f"{emb}.mlp.0.weight"] = (h, _TIME_FREQ_DIM)
        shapes[f"{emb}.mlp.0.bias"] = (h,)
        shapes[f"{emb}.mlp.2.weight"] = (h, h)
        shapes[f"{emb}.mlp.2.bias"] = (h,)
    shapes["pos_embed"] = (1, side * side, h)
    shapes["final_layer.linear.weight"] = (p * p * c, h)
    shapes["final_layer.linear.bias"] = (p * p * c,)
    shapes["final_layer.adaLN_modulation.1.weight"] = (2 * h, h)
    shapes["final_layer.adaLN_modulation.1.bias"] = (2 * h,)
    # The Phi-3 decoder (no lm_head): fused qkv (q rows, then k, then v) and fused
    # gate_up (gate half first), no biases.
    shapes["llm.embed_tokens.weight"] = (t["vocab_size"], h)
    for i in range(t["num_layers"]):
        pre = f"llm.layers.{i}"
        shapes[f"{pre}.self_attn.o_proj.weight"] = (h, q_rows)
        shapes[f"{pre}.self_attn.qkv_proj.weight"] = (q_rows + 2 * kv_rows, h)
        shapes[f"{pre}.mlp.gate_up_proj.weight"] = (2 * inter, h)
        shapes[f"{pre}.mlp.down_proj.weight"] = (h, inter)
        shapes[f"{pre}.input_layernorm.weight"] = (h,)
        shapes[f"{pre}.post_attention_layernorm.weight"] = (h,)
    shapes["llm.norm.weight"] = (h,)
    return shapes


def original_tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 tensors for every key of :func:`original_tiny_shapes`.

    Weights are N(0, 1/fan_in) so activations stay O(1); norm weights are 1 + noise
    and biases small noise, so that a mix-up of any two tensors changes outputs.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in original_tiny_shapes().items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if key.endswith("layernorm.weight") or key == "llm.norm.weight":
            out[key] = 1.0 + 0.1 * noise
        elif key.endswith(".bias"):
            out[key] = 0.1 * noise
        elif key in ("pos_embed", "llm.embed_tokens.weight"):
            out[key] = noise
        else:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            out[key] = noise / fan_in**0.5
    return out


def save_tiny_original_layout(
    path: str | os.PathLike, seed: int = 0, weights_format: str = "safetensors"
) -> Path:
    """Write a tiny checkpoint in the original OmniGen-v1 layout to ``path``.

    ``weights_format`` is ``"safetensors"`` (``model.safetensors``) or ``"pt"``
    (``model.pt``, a plain tensor dict written with ``torch.save``). Returns ``path``.
    """
    if weights_format not in ("safetensors", "pt"):
        raise ValueError(f"weights_format must be 'safetensors' or 'pt', got {weights_format!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(tiny_original_config(), indent=2) + "\n")
    state = original_tiny_state_dict(seed)
    if weights_format == "safetensors":
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, path / "model.pt")
    build_tiny_tokenizer().save_pretrained(path)
    build_tiny_vae(seed).save_pretrained(path / "vae", safe_serialization=True)
    return path
