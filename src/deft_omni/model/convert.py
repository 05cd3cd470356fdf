"""Convert an original OmniGen-v1 checkpoint to diffusers' ``OmniGenTransformer2DModel``.

Original layout: ``OmniGen`` (VectorSpaceLab/OmniGen, OmniGen/model.py) holding a
transformers ``Phi3Model`` as ``llm``. The key mapping (checked by tests/model/test_model_convert.py):

=========================================  =========================================
original                                   diffusers
=========================================  =========================================
``pos_embed``                              ``patch_embedding.pos_embed``
``x_embedder.proj.*``                      ``patch_embedding.output_image_proj.*``
``input_x_embedder.proj.*``                ``patch_embedding.input_image_proj.*``
``time_token.mlp.0/2.*``                   ``time_token.linear_1/2.*``
``t_embedder.mlp.0/2.*``                   ``t_embedder.linear_1/2.*``
``final_layer.adaLN_modulation.1.*``       ``norm_out.linear.*``
``final_layer.linear.*``                   ``proj_out.*``
``llm.embed_tokens.weight``                ``embed_tokens.weight``
``llm.norm.weight``                        ``norm.weight``
``llm.layers.N.self_attn.qkv_proj.weight`` ``layers.N.self_attn.to_q/to_k/to_v.weight``
``llm.layers.N.self_attn.o_proj.weight``   ``layers.N.self_attn.to_out.0.weight``
``llm.layers.N.mlp.{gate_up,down}_proj``   ``layers.N.mlp.{gate_up,down}_proj``
``llm.layers.N.*_layernorm.weight``        ``layers.N.*_layernorm.weight``
=========================================  =========================================

Both sides keep ``gate_up_proj`` fused with the gate half first, so it is copied as is.
Any key not in this table is an error: silently dropping weights is how a conversion
goes wrong without anyone noticing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

_EXACT: dict[str, str] = {
    "pos_embed": "patch_embedding.pos_embed",
    "x_embedder.proj.weight": "patch_embedding.output_image_proj.weight",
    "x_embedder.proj.bias": "patch_embedding.output_image_proj.bias",
    "input_x_embedder.proj.weight": "patch_embedding.input_image_proj.weight",
    "input_x_embedder.proj.bias": "patch_embedding.input_image_proj.bias",
    "final_layer.adaLN_modulation.1.weight": "norm_out.linear.weight",
    "final_layer.adaLN_modulation.1.bias": "norm_out.linear.bias",
    "final_layer.linear.weight": "proj_out.weight",
    "final_layer.linear.bias": "proj_out.bias",
    "llm.embed_tokens.weight": "embed_tokens.weight",
    "llm.norm.weight": "norm.weight",
}

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(src), dst)
    for src, dst in (
        (r"(time_token|t_embedder)\.mlp\.0\.(weight|bias)", r"\1.linear_1.\2"),
        (r"(time_token|t_embedder)\.mlp\.2\.(weight|bias)", r"\1.linear_2.\2"),
        (r"llm\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"layers.\1.self_attn.to_out.0.weight"),
        (r"llm\.layers\.(\d+)\.mlp\.(gate_up_proj|down_proj)\.weight", r"layers.\1.mlp.\2.weight"),
        (
            r"llm\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight",
            r"layers.\1.\2.weight",
        ),
    )
)
_QKV = re.compile(r"llm\.layers\.(\d+)\.self_attn\.qkv_proj\.weight")
# Rotary inverse frequencies are recomputed from the config; old transformers versions
# saved them as persistent buffers. They carry no learned information: drop them.
_DROPPED = re.compile(r"llm\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")


def original_key_map(keys) -> dict[str, tuple[str, ...]]:
    """Map each original key to the diffusers key(s) it becomes (``()`` = dropped).

    Raises ``KeyError`` listing every key that is not part of the original layout.
    """
    plan: dict[str, tuple[str, ...]] = {}
    unknown: list[str] = []
    for key in keys:
        if key in _EXACT:
            plan[key] = (_EXACT[key],)
            continue
        m = _QKV.fullmatch(key)
        if m:
            pre = f"layers.{m.group(1)}.self_attn"
            plan[key] = (f"{pre}.to_q.weight", f"{pre}.to_k.weight", f"{pre}.to_v.weight")
            continue
        if _DROPPED.fullmatch(key):
            plan[key] = ()
            continue
        for pattern, repl in _PATTERNS:
            if pattern.fullmatch(key):
                plan[key] = (pattern.sub(repl, key),)
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"{len(unknown)} key(s) are not part of the original OmniGen-v1 layout and were "
            f"not converted: {sorted(unknown)}"
        )
    return plan


_INVERSE_EXACT = {v: k for k, v in _EXACT.items()}
_INVERSE: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(src), dst)
    for src, dst in (
        (r"layers\.(\d+)\.self_attn\.to_[qkv]\.weight", r"llm.layers.\1.self_attn.qkv_proj.weight"),
        (r"(time_token|t_embedder)\.linear_1\.(weight|bias)", r"\1.mlp.0.\2"),
        (r"(time_token|t_embedder)\.linear_2\.(weight|bias)", r"\1.mlp.2.\2"),
        (r"layers\.(\d+)\.self_attn\.to_out\.0\.weight", r"llm.layers.\1.self_attn.o_proj.weight"),
        (r"layers\.(\d+)\.(mlp\.gate_up_proj|mlp\.down_proj|input_layernorm|post_attention_layernorm)\.weight",
         r"llm.layers.\1.\2.weight"),
    )
)


def original_key_of(key: str) -> str:
    """The original checkpoint key a diffusers key comes from (the key itself if none does), so
    errors about a converted checkpoint can name what the user's file lacks."""
    if key in _INVERSE_EXACT:
        return _INVERSE_EXACT[key]
    for pattern, repl in _INVERSE:
        if pattern.fullmatch(key):
            return pattern.sub(repl, key)
    return key


def _qkv_sizes(weight: torch.Tensor, config: Mapping | None) -> list[int]:
    rows, hidden = weight.shape
    if config is not None:
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config["hidden_size"]) // heads
        sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    else:
        # Without a config assume no grouped-query attention (OmniGen-v1: 32 = 32 heads).
        sizes = [rows // 3] * 3
    if sum(sizes) != rows:
        raise ValueError(
            f"qkv_proj has {rows} rows, which does not split into q/k/v of sizes {sizes} "
            f"(hidden {hidden}); pass the transformer config for grouped-query attention"
        )
    return sizes


def convert_original_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Mapping | None = None
) -> dict[str, torch.Tensor]:
    """Convert an original OmniGen-v1 state dict to ``OmniGenTransformer2DModel`` keys.

    ``config`` (a diffusers transformer config, e.g. from
    :func:`transformer_config_from_original`) is only needed to split the fused qkv
    of a grouped-query model; rows are q, then k, then v. Tensors keep their dtype;
    split pieces are cloned so they own their storage (safe to save or assign).
    Unknown keys raise ``KeyError`` listing them.
    """
    plan = original_key_map(state_dict.keys())
    out: dict[str, torch.Tensor] = {}
    for key, targets in plan.items():
        value = state_dict[key]
        if len(targets) == 3:
            for name, piece in zip(targets, torch.split(value, _qkv_sizes(value, config), dim=0)):
                out[name] = piece.clone()
        elif len(targets) == 1:
            out[targets[0]] = value
    return out


_REQUIRED_CONFIG = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def transformer_config_from_original(
    config_json: Mapping, state_dict: Mapping[str, torch.Tensor] | None = None
) -> dict:
    """Build ``OmniGenTransformer2DModel`` kwargs from an original ``config.json`` dict.

    Reads the Phi3Config numbers directly (transformers' ``Phi3Config`` rejects the
    original's legacy ``"su"`` rope dict). The OmniGen wrapper's own sizes
    (``in_channels``, ``patch_size``, ``pos_embed_max_size``) are not in config.json:
    they are taken from ``state_dict`` when given (the patch-embedder and ``pos_embed``
    shapes), else OmniGen-v1's constants 4, 2 and 192.
    """
    missing = [k for k in _REQUIRED_CONFIG if config_json.get(k) is None]
    if missing:
        raise ValueError(f"original OmniGen config.json lacks required field(s): {missing}")
    hidden = int(config_json["hidden_size"])
    heads = int(config_json["num_attention_heads"])
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    n_factors = hidden // heads // 2
    max_pos = int(config_json.get("max_position_embeddings") or 4096)  # Phi3Config's default

    rope, theta = _rope_settings(config_json)
    if rope is None:
        # Plain RoPE expressed as longrope with unit factors.
        short = long = [1.0] * n_factors
        orig_max = int(config_json.get("original_max_position_embeddings") or max_pos)
    else:
        kind = rope.get("rope_type", rope.get("type"))
        if kind not in ("su", "longrope"):
            raise ValueError(f"unsupported rope_scaling type {kind!r}: OmniGen uses 'su'/'longrope'")
        short = [float(x) for x in rope["short_factor"]]
        long = [float(x) for x in rope["long_factor"]]
        if len(short) != n_factors or len(long) != n_factors:
            raise ValueError(
                f"rope_scaling factor lists must have head_dim/2 = {n_factors} entries, "
                f"got {len(short)} and {len(long)}"
            )
        orig_max = int(
            config_json.get("original_max_position_embeddings")
            or rope.get("original_max_position_embeddings")
            or max_pos
        )
    pad = config_json.get("pad_token_id")
    out = {
        "in_channels": 4,
        "patch_size": 2,
        "hidden_size": hidden,
        "rms_norm_eps": float(config_json.get("rms_norm_eps", 1e-5)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(config_json.get("num_key_value_heads") or heads),
        "intermediate_size": int(config_json["intermediate_size"]),
        "num_layers": int(config_json["num_hidden_layers"]),
        "pad_token_id": 32000 if pad is None else int(pad),  # Phi-3's pad id by default
        "vocab_size": int(config_json["vocab_size"]),
        "max_position_embeddings": max_pos,
        "original_max_position_embeddings": orig_max,
        "rope_base": theta,
        "rope_scaling": {"short_factor": short, "long_factor": long},
        "pos_embed_max_size": 192,
    }
    if state_dict is not None:
        _shapes_from_weights(out, state_dict)
    return out


def _rope_settings(config_json: Mapping) -> tuple[Mapping | None, float]:
    """(rope scaling dict or None, rope theta) from either form of config.json.

    The original checkpoint writes top-level ``rope_scaling`` and ``rope_theta``; transformers >= 5
    (for instance the original train.py's ``save_pretrained`` run today) writes one
    ``rope_parameters`` dict holding both.  Reading only the old keys would load such a checkpoint
    with unit factors and base 10000: silently wrong outputs."""
    params = config_json.get("rope_parameters")
    rope, theta = config_json.get("rope_scaling"), config_json.get("rope_theta")
    if isinstance(params, Mapping):
        if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError(f"config.json rope_parameters.partial_rotary_factor="
                             f"{params['partial_rotary_factor']}: OmniGen rotates the whole head")
        p_theta = params.get("rope_theta")
        if theta is not None and p_theta is not None and float(theta) != float(p_theta):
            raise ValueError(f"config.json has rope_theta={theta} and rope_parameters.rope_theta={p_theta}: "
                             "they must agree")
        theta = theta if theta is not None else p_theta
        if rope is None and params.get("rope_type", params.get("type")) not in (None, "default"):
            rope = params
    elif params is not None:
        raise ValueError(f"config.json rope_parameters must be a dict, got {type(params).__name__}")
    return rope, float(10000.0 if theta is None else theta)


def _shapes_from_weights(out: dict, state_dict: Mapping[str, torch.Tensor]) -> None:
    proj = state_dict.get("x_embedder.proj.weight")
    if proj is not None:
        if proj.ndim != 4 or proj.shape[2] != proj.shape[3] or proj.shape[0] != out["hidden_size"]:
            raise ValueError(f"x_embedder.proj.weight has unexpected shape {tuple(proj.shape)}")
        out["in_channels"] = int(proj.shape[1])
        out["patch_size"] = int(proj.shape[2])
    pos = state_dict.get("pos_embed")
    if pos is not None:
        side = math.isqrt(int(pos.shape[1]))
        if pos.ndim != 3 or side * side != pos.shape[1] or pos.shape[2] != out["hidden_size"]:
            raise ValueError(f"pos_embed has unexpected shape {tuple(pos.shape)} (want (1, S*S, hidden))")
        out["pos_embed_max_size"] = side
    emb = state_dict.get("llm.embed_tokens.weight")
    if emb is not None and tuple(emb.shape) != (out["vocab_size"], out["hidden_size"]):
        raise ValueError(
            f"llm.embed_tokens.weight is {tuple(emb.shape)} but config.json says "
            f"vocab_size={out['vocab_size']}, hidden_size={out['hidden_size']}"
        )
