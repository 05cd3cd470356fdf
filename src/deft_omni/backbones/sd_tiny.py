"""Tiny random Stable Diffusion 1.5 and XL stacks, built offline and deterministically (tests, demos).

The same module tree and names as the real models (UNet2DConditionModel with cross-attention
transformer blocks, CLIP text encoders, SDXL's second encoder with projection and its
micro-conditioning), at a size where a training step takes milliseconds on a CPU.  The
tokenizer is CLIP's byte-level BPE over the 256 byte symbols (no merges): every text encodes,
offline.  Folders are written by the pipelines' own ``save_pretrained`` and cached atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from ..core.atomic import atomic_dir
from ..model.tiny import TINY_VAE_CONFIG, default_cache_dir
from .sd_family import SD15, SDXL, SDFamily, make_pipeline

TINY_SD_VERSION = 1
_TEXT_WIDTH = 32


def build_clip_tokenizer():
    """CLIP's tokenizer over the byte alphabet: ``<|startoftext|>`` 0, ``<|endoftext|>`` 1 (also pad)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        for sym in symbols:
            vocab[sym + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=_TEXT_WIDTH,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, layer_norm_eps=1e-5,
                          vocab_size=vocab_size, hidden_act="gelu", projection_dim=_TEXT_WIDTH,
                          max_position_embeddings=77)


def _unet(family: SDFamily):
    from diffusers import UNet2DConditionModel

    # Cross-attention on both levels (the real models skip the top level of SDXL and the bottom one
    # of SD1.5): at this size attention-only adapters must reach the full-resolution features to
    # learn anything in the few steps a test affords.
    common = dict(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                  norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4))
    if family.micro_conditioning:  # SDXL: linear projections, pooled text + size conditioning
        return UNet2DConditionModel(**common, use_linear_projection=True, addition_embed_type="text_time",
                                    addition_time_embed_dim=8,
                                    projection_class_embeddings_input_dim=6 * 8 + _TEXT_WIDTH,
                                    cross_attention_dim=2 * _TEXT_WIDTH)
    return UNet2DConditionModel(**common, cross_attention_dim=_TEXT_WIDTH, use_linear_projection=True)


def _scheduler(family: SDFamily):
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1)
    if family.micro_conditioning:  # what SDXL-base ships
        return EulerDiscreteScheduler(**betas, timestep_spacing="leading", prediction_type="epsilon")
    return PNDMScheduler(**betas, skip_prk_steps=True, set_alpha_to_one=False)  # what SD1.5 ships


def build_tiny_pipeline(family: SDFamily, seed: int = 0):
    """The tiny random pipeline of ``family`` (fp32, CPU); the caller's RNG is untouched."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .sd_family import SDNetworks

    tokenizer = build_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _unet(family)
        config = _text_config(len(tokenizer))
        encoders = {"text_encoder": CLIPTextModel(config)}
        if family.micro_conditioning:
            encoders["text_encoder_2"] = CLIPTextModelWithProjection(config)
        scaling = 0.13025 if family.micro_conditioning else 0.18215  # the real VAEs' factors
        vae = AutoencoderKL(**{**TINY_VAE_CONFIG, "scaling_factor": scaling})
    networks = SDNetworks(unet, encoders)
    return make_pipeline(family, networks, vae, [tokenizer] * len(family.tokenizers), _scheduler(family))


def ensure_tiny_sd(family: SDFamily, cache_dir: Optional[str | os.PathLike] = None, seed: int = 0) -> Path:
    """The cached folder of the tiny ``family`` stack, built once (atomically: concurrent builders
    each stage a copy and the first rename wins)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / (f"tiny-{family.name}-v{TINY_SD_VERSION}" + (f"-s{seed}" if seed else ""))
    if target.is_dir():
        return target
    try:
        with atomic_dir(target, replace=False) as staging:
            build_tiny_pipeline(family, seed).save_pretrained(staging, safe_serialization=True)
    except FileExistsError:
        if not target.is_dir():
            raise
    return target


def ensure_tiny_sd15() -> Path:
    return ensure_tiny_sd(SD15)


def ensure_tiny_sdxl() -> Path:
    return ensure_tiny_sd(SDXL)
