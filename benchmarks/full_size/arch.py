"""OmniGen-v1's real architecture from random weights, its exact sizes, and its FLOPs.

Nothing is downloaded: the numbers below are OmniGen-v1's ``config.json`` (a Phi-3-mini decoder,
NOTES.md section 1) in diffusers' ``OmniGenTransformer2DModel`` form, and SDXL's VAE config.
The RoPE factor tables are OmniGen-v1's own (the 48-entry "su"/longrope lists, as diffusers'
conversion script writes them, to the two decimals they were published with): a sequence whose
largest position id reaches 4096 takes the long table, exactly as with the real weights.
Random weights cost what real ones cost: same shapes, same dtypes, same kernels.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

# fmt: off
_LONG = [1.03, 1.05, 1.05, 1.08, 1.23, 1.23, 1.30, 1.45, 1.60, 1.65, 1.90, 2.86, 3.69, 5.42, 5.49, 5.49,
         9.09, 11.58, 15.66, 15.77, 15.79, 18.36, 21.99, 23.08, 30.01, 32.35, 32.59, 35.56, 39.95, 53.84,
         56.20, 57.95, 59.29, 59.77, 59.92, 61.19, 61.96, 62.50, 63.37, 63.48, 63.48, 63.66, 63.85, 64.08,
         64.76, 64.80, 64.81, 64.81]
_SHORT = [1.05, 1.05, 1.05, 1.10, 1.10, 1.10, 1.25, 1.25, 1.40, 1.45, 1.55, 1.85, 1.90] + [2.00] * 19 + \
         [2.10, 2.10, 2.20, 2.35, 2.35, 2.35, 2.35, 2.40, 2.40, 2.65, 2.70, 2.90, 2.95, 3.05, 3.05, 3.05]
# fmt: on

OMNIGEN_V1: dict[str, Any] = {
    "in_channels": 4, "patch_size": 2, "hidden_size": 3072, "rms_norm_eps": 1e-5,
    "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 8192, "num_layers": 32,
    "pad_token_id": 32000, "vocab_size": 32064, "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096, "rope_base": 10000,
    "rope_scaling": {"short_factor": _SHORT, "long_factor": _LONG}, "pos_embed_max_size": 192,
}
OMNIGEN_V1_PARAMETERS = 3_762_072_592

# SDXL's AutoencoderKL (what OmniGen encodes with), fp32.
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 1024,
    "scaling_factor": 0.13025,
}

# The paper's layout (configs/targets/paper.yaml): fused q,k,v + attention output of every layer.
PAPER_TARGETS = r"layers\.\d+\.self_attn\.(to_q|to_k|to_v|to_out\.0)"
PAPER_FUSED = [["to_q", "to_k", "to_v"]]


def transformer_config(layers: int = 32, **overrides: Any) -> dict[str, Any]:
    """OmniGen-v1's config with ``layers`` blocks (and any other field replaced)."""
    cfg = dict(OMNIGEN_V1, num_layers=int(layers))
    cfg.update(overrides)
    return cfg


def tiny_config(layers: int = 2) -> dict[str, Any]:
    """The project's tiny test model (deft_omni.model.tiny) as a config of this module."""
    from deft_omni.model import TINY_TRANSFORMER_CONFIG

    return dict(TINY_TRANSFORMER_CONFIG, num_layers=int(layers))


_READ_VOCAB = 1024
_PERIOD = 1_000_003  # prime: no row of any matrix here repeats another, so none is rank-deficient


@torch.no_grad()
def _random_init(model: nn.Module, seed: int) -> None:
    """Cheap deterministic values: a U(-1, 1) pattern of prime period tiled over each tensor
    (a generator draw per element costs seconds per layer on two cores), scaled to 1/sqrt(fan_in)
    for matrices so activations stay O(1) through the stack (bf16 neither overflows nor
    underflows); ones for norm scales, small values for biases."""
    gen = torch.Generator().manual_seed(seed)
    pattern = torch.empty(_PERIOD).uniform_(-1.0, 1.0, generator=gen)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.endswith("norm.weight") or "layernorm" in name:
            tensor.fill_(1.0)
            continue
        fan_in = math.prod(tensor.shape[1:]) if tensor.dim() >= 2 and "embed_tokens" not in name else 1
        scale = 1.0 / math.sqrt(fan_in) if tensor.dim() >= 2 else 0.01
        if "embed_tokens" in name:
            # Only ids below the tokenizer's vocabulary are ever read (the tiny tokenizer's are < 512);
            # writing every row would cost more than a layer's build on two busy cores.
            tensor = tensor[:_READ_VOCAB]
        flat = tensor.reshape(-1)
        src = pattern.to(device=tensor.device, dtype=tensor.dtype) * scale
        for start in range(0, flat.numel(), _PERIOD):
            n = min(_PERIOD, flat.numel() - start)
            flat[start:start + n].copy_(src[:n])


def _outside_fake_mode():
    """Meta-device construction must not run under a FakeTensorMode (it cannot swap meta
    parameters); ``to_empty`` then runs inside it."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily()


def build_transformer(config: dict[str, Any], dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                      device: str | torch.device = "cpu", fake: bool = False) -> nn.Module:
    """A random-init ``OmniGenTransformer2DModel``, built without diffusers' slow init.

    ``fake``: call inside a ``FakeTensorMode`` to get tensors without storage (traces)."""
    from diffusers import OmniGenTransformer2DModel

    with _outside_fake_mode(), torch.device("meta"):
        model = OmniGenTransformer2DModel(**config)
        # nn.Module.to, not ModelMixin.to: the latter warns about fp32-kept modules (there are none).
        model = nn.Module.to(model, dtype)
    model = model.to_empty(device=device)
    if not fake:
        _random_init(model, seed)
    return model.eval()


def build_sdxl_vae(fake: bool = False, seed: int = 0) -> nn.Module:
    """SDXL's VAE (fp32, frozen); random values unless ``fake``."""
    from diffusers import AutoencoderKL

    with _outside_fake_mode(), torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE)
    vae = vae.to_empty(device="cpu")
    if not fake:
        _random_init(vae, seed)
    return vae.requires_grad_(False).eval()


# -- exact sizes --------------------------------------------------------------------------
def layer_linear_parameters(cfg: dict[str, Any]) -> int:
    """Weights of one block's Linear layers (q, k, v, out, gate_up, down)."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    return h * h + 2 * h * kv + h * h + h * 2 * i + i * h


def parameter_counts(cfg: dict[str, Any]) -> dict[str, int]:
    """Exact parameter counts of ``OmniGenTransformer2DModel(**cfg)`` by part (no buffers)."""
    h, p, c, t = cfg["hidden_size"], cfg["patch_size"], cfg["in_channels"], 256  # time_step_dim
    per_layer = layer_linear_parameters(cfg) + 2 * h  # + the two RMSNorm scales
    parts = {
        "embed_tokens": cfg["vocab_size"] * h,
        "patch_embedding": 2 * (c * p * p * h + h),
        "time_embeddings": 2 * (t * h + h + h * h + h),
        "layers": cfg["num_layers"] * per_layer,
        "norm": h,
        "norm_out": h * 2 * h + 2 * h,
        "proj_out": h * p * p * c + p * p * c,
    }
    parts["total"] = sum(parts.values())
    parts["layer_linear_weights"] = cfg["num_layers"] * layer_linear_parameters(cfg)
    return parts


def buffer_elements(cfg: dict[str, Any]) -> int:
    """Persistent buffers: the 2-D sin-cos position table (pos_embed_max_size^2 x hidden)."""
    return cfg["pos_embed_max_size"] ** 2 * cfg["hidden_size"]


def adapter_parameters(cfg: dict[str, Any], impl: str, method: str, rank: int) -> int:
    """Trainable parameters on the paper's layout.

    ours: q,k,v fused into one (3h x h) unit + the output projection; peft: four separate
    Linear layers (peft cannot fuse siblings).  DEFT/LoRA: r (out + in) per unit, PaRa: r out."""
    h = cfg["hidden_size"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    units = [(h + 2 * kv, h), (h, h)] if impl == "ours" else [(h, h), (kv, h), (kv, h), (h, h)]
    if method == "full":
        return parameter_counts(cfg)["total"]
    if method == "para":
        per_layer = sum(rank * out for out, _ in units)
    else:
        per_layer = sum(rank * (out + inp) for out, inp in units)
    return cfg["num_layers"] * per_layer


# -- FLOPs ----------------------------------------------------------------------------------
def step_flops(cfg: dict[str, Any], batch: int, seq: int, rank: int, ckpt: bool, layers: Optional[int] = None,
               trained: str = "adapter") -> dict[str, float]:
    """Matmul FLOPs of one training step (multiply-add = 2) over ``layers`` blocks.

    Frozen base: the backward computes input gradients only (one matmul per Linear, not two);
    ``trained='full'`` adds the weight gradients.  Attention: 2 matmuls forward (QK^T, PV),
    4 backward plus the recomputation of QK^T that flash/memory-efficient kernels do.  A
    checkpointed step runs every block's forward again, up to the last product whose result the
    backward needs (torch's checkpoint stops early: the final down_proj is not recomputed).
    Adapters: r-sized products, counted as 3x their forward (small: ~1% at r = 64)."""
    n_layers = cfg["num_layers"] if layers is None else layers
    h = cfg["hidden_size"]
    tokens = batch * seq
    lin = 2.0 * tokens * layer_linear_parameters(cfg)
    attn = 4.0 * batch * seq * seq * h
    adapter = 3 * 2.0 * tokens * rank * (4 * h + 2 * h)  # ~ (in + out) of the fused qkv and out units
    fwd = lin + attn
    bwd = lin * (2 if trained == "full" else 1) + 2.5 * attn
    recompute = fwd - 2.0 * tokens * cfg["intermediate_size"] * h if ckpt else 0.0
    per_layer = fwd + recompute + bwd + adapter
    return {"forward": n_layers * fwd, "backward": n_layers * bwd, "recompute": n_layers * recompute,
            "adapter": n_layers * adapter, "total": n_layers * per_layer}


def sequence_length(text_tokens: int, side: int, inputs: int, width: Optional[int] = None) -> int:
    """S = text (with input-image placeholders) + 1 time token + output tokens; 16 px per token side."""
    width = side if width is None else width
    n = (side // 16) * (width // 16)
    return text_tokens + 1 + n + inputs * n
