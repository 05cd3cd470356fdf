"""Before training: refuse shard sets whose cached latents another VAE or another image fitting made.

The VAE's identity is computed only when a set has cached latents (one VAE load, about a second
for SDXL's, before the transformer's minutes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

from ..backbones.registry import resolve_model
from ..data.cached_latents import fit_settings, latents_mismatch
from ..data.manifest import MANIFEST_NAME, read_manifest
from ..model.vae_identity import latent_space


class CachedLatentsMismatch(ValueError):
    """A shard set's cached latents were made by another VAE, or with another image fitting."""


def check_cached_sets(sets: Sequence[tuple[str, str, Optional[Sequence[Sequence[int]]]]], *, model: Optional[str],
                      family: Optional[str], max_image_side: int, size_multiple: int = 16) -> list[str]:
    """Check every ``(config key, shard folder, bucket sizes it is read with)`` against the run's model
    and ``max_image_side``; raises :class:`CachedLatentsMismatch` naming the manifest, both VAE
    fingerprints and both fittings.  Returns the keys of the sets that carry cached latents."""
    space: Optional[dict[str, Any]] = None
    cached = []
    for key, path, buckets in sets:
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
            continue
        block = read_manifest(path).get("latents")
        if block is None:
            continue
        if space is None:
            cls, folder = resolve_model(model, family)
            space = latent_space(cls.load_vae(str(folder)))
        fit = fit_settings(max_image_side, buckets, size_multiple)
        why = latents_mismatch(block, os.path.join(path, MANIFEST_NAME), space=space, fit=fit, model=str(model))
        if why is not None:
            raise CachedLatentsMismatch(f"{key}={path}: {why}")
        cached.append(key)
    return cached


__all__ = ["CachedLatentsMismatch", "check_cached_sets"]
