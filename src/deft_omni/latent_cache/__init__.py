"""Latents cached in the shards: ``python -m deft_omni.encode_latents`` (the engine), and the check
that a run's VAE and image fitting are those the latents were made with.  The format lives in
``deft_omni.data.cached_latents``; docs/data.md, "Cached latents".

This package encodes with the model's VAE, so it sits above the model and the backbones;
``data_prep`` (which may import ``deft_omni.data`` and ``deft_omni.core`` only) cannot host it."""

from .check import CachedLatentsMismatch, check_cached_sets
from .engine import EncodeError, encode_latents
from .settings import PARTIAL_SUFFIX, EncodeSettings
from .shard import EncodeOptions, ShardJob, encode_shard

__all__ = [
    "CachedLatentsMismatch",
    "EncodeError",
    "EncodeOptions",
    "EncodeSettings",
    "PARTIAL_SUFFIX",
    "ShardJob",
    "check_cached_sets",
    "encode_latents",
    "encode_shard",
]
