"""A tiny random-init OmniGen, built offline and deterministically from a seed.

Used by tests and smoke runs everywhere in the project: same module structure and
names as OmniGen-v1 (so adapters, key mappings and the training loop are exercised
for real), ~170k transformer parameters so a forward+backward is milliseconds on CPU.

``save_tiny_omnigen`` writes diffusers' layout; ``ensure_tiny_omnigen`` builds it once
into a cache shared by processes.  (The tests build an original-layout twin in
``tests/fixtures/tiny_original.py``.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, OmniGenTransformer2DModel

from ..core.atomic import atomic_dir
from .loading import default_omnigen_scheduler
from .tiny_tokenizer import build_tiny_tokenizer

# Bump when anything that changes the cached files changes, so stale caches are not reused.
TINY_VERSION = 1

_HIDDEN = 64
_HEADS = 4
# OmniGen's longrope takes one factor per rotary frequency: head_dim / 2 of them.
_ROPE_FACTORS = _HIDDEN // _HEADS // 2

TINY_TRANSFORMER_CONFIG: dict = {
    "in_channels": 4,
    "patch_size": 2,
    "hidden_size": _HIDDEN,
    "num_attention_heads": _HEADS,
    "num_key_value_heads": _HEADS,
    "intermediate_size": 128,
    "num_layers": 2,
    "vocab_size": 512,
    # Must equal the tiny tokenizer's pad id (0, see tiny_tokenizer).
    "pad_token_id": 0,
    "rms_norm_eps": 1e-5,
    # Same RoPE numbers as OmniGen-v1, so the long-context scaling branch is the real one.
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "rope_base": 10000,
    "rope_scaling": {"short_factor": [1.0] * _ROPE_FACTORS, "long_factor": [1.0] * _ROPE_FACTORS},
    # 32 patches per side = 64 latent px = 512 image px: enough for any test image.
    "pos_embed_max_size": 32,
}

TINY_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    # Four blocks give three downsamplers: 8x, like SDXL's VAE.
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 8, 8],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 4,
    "sample_size": 64,
    # SDXL's VAE scale, no shift: what OmniGen multiplies latents by.
    "scaling_factor": 0.13025,
}


def build_tiny_transformer(seed: int = 0) -> OmniGenTransformer2DModel:
    """Random-init tiny ``OmniGenTransformer2DModel`` (fp32, CPU); same seed, same weights.

    The global RNG state of the caller is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return OmniGenTransformer2DModel(**TINY_TRANSFORMER_CONFIG).eval()


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    """Random-init tiny ``AutoencoderKL`` (8x downsampling, 4 latent channels)."""
    with torch.random.fork_rng(devices=[]):
        # Offset so the VAE does not reuse the transformer's random stream.
        torch.manual_seed(seed + 1_000_003)
        return AutoencoderKL(**TINY_VAE_CONFIG).eval()


def write_model_index(path: Path, tokenizer_class: str) -> None:
    # diffusers' pipeline index, so the folder looks exactly like a hub snapshot of
    # Shitao/OmniGen-v1-diffusers (our loader does not need it).
    import diffusers

    index = {
        "_class_name": "OmniGenPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "tokenizer": ["transformers", tokenizer_class],
        "transformer": ["diffusers", "OmniGenTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_tiny_omnigen(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny OmniGen in diffusers' layout to ``path`` and return it.

    Layout: ``transformer/``, ``vae/`` (safetensors), ``tokenizer/``, ``scheduler/``
    and ``model_index.json``. Not atomic: use :func:`ensure_tiny_omnigen` for a
    folder that several processes may ask for at once.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_tiny_transformer(seed).save_pretrained(path / "transformer", safe_serialization=True)
    build_tiny_vae(seed).save_pretrained(path / "vae", safe_serialization=True)
    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(path / "tokenizer")
    default_omnigen_scheduler().save_pretrained(path / "scheduler")
    write_model_index(path, type(tokenizer).__name__)
    return path


def default_cache_dir() -> Path:
    """``$DEFT_OMNI_CACHE`` if set, else ``~/.cache/deft_omni``."""
    env = os.environ.get("DEFT_OMNI_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deft_omni"


def ensure_tiny_omnigen(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Return the path of a cached tiny OmniGen (diffusers layout), building it once.

    The folder is ``<cache_dir>/tiny-omnigen-v<TINY_VERSION>`` (``-s<seed>`` appended
    for a non-zero seed); ``cache_dir`` defaults to :func:`default_cache_dir`.

    Safe under concurrency (DDP ranks, pytest workers): each builder writes into its
    own staging folder (:func:`deft_omni.core.atomic.atomic_dir`) and renames it into
    place, so readers see either nothing or the complete folder; a builder that loses
    the race discards its copy.  Modes follow the umask, so a shared cache stays shared.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = f"tiny-omnigen-v{TINY_VERSION}" + (f"-s{seed}" if seed else "")
    target = root / name
    if target.is_dir():
        return target
    try:
        with atomic_dir(target, replace=False) as staging:
            save_tiny_omnigen(staging, seed=seed)
    except FileExistsError:
        # Another process published its copy first; ours was discarded.
        if not target.is_dir():
            raise
    return target

