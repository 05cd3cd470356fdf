"""Latents and velocity: the VAE side (encode, scale, unscale) and the transformer's prediction.

``latent = (z - shift_factor) * scaling_factor`` (no shift for SDXL's VAE, which OmniGen uses),
z the posterior sample or mean.  The VAE is frozen and run in fp32 outside autocast.

:class:`LatentEncoder` optionally caches the posterior (mean, std) per (sample key, image slot,
size) in memory: with the cache on, ``"sample"`` still draws fresh posterior noise every step.
It is unbounded and lives in one process, so it suits small data sets only; shards with stored
latents are the scalable way (``python -m deft_omni.encode_latents``, docs/data.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn

from ..adapters.model_ops import base_parameters

LATENT_MODES = ("sample", "mean")


def scale_latents(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z - shift
    return z * vae.config.scaling_factor


def unscale_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    z = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    return z + shift if shift is not None else z


def vae_downsampling(vae: nn.Module) -> int:
    """Pixels per latent pixel along a side (8 for SDXL's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


class LatentEncoder:
    """Encodes pixel batches with a frozen fp32 VAE into scaled latents, with an optional cache."""

    def __init__(self, cache: bool = False) -> None:
        self.cache_enabled = bool(cache)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    @staticmethod
    def _posterior(vae: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        param = next(vae.parameters())
        with torch.no_grad(), torch.autocast(device_type=pixels.device.type, enabled=False):
            dist = vae.encode(pixels.to(device=param.device, dtype=param.dtype)).latent_dist
            return dist.mean.float(), dist.std.float()

    def posterior(self, vae: nn.Module, pixels: torch.Tensor,
                  cache_keys: Optional[Sequence[tuple]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the posterior for a (N, 3, H, W) batch; ``cache_keys`` one per row."""
        if not self.cache_enabled or cache_keys is None:
            return self._posterior(vae, pixels)
        size = tuple(pixels.shape[-2:])
        full = [(*k, *size) for k in cache_keys]
        todo = [i for i, k in enumerate(full) if k not in self._cache]
        self.hits += len(full) - len(todo)
        self.misses += len(todo)
        if todo:
            mean, std = self._posterior(vae, pixels[todo])
            for j, i in enumerate(todo):
                self._cache[full[i]] = (mean[j].detach(), std[j].detach())
        means = torch.stack([self._cache[k][0] for k in full])
        stds = torch.stack([self._cache[k][1] for k in full])
        return means, stds

    def encode(self, vae: nn.Module, pixels: torch.Tensor, mode: str = "mean",
               generator: Optional[torch.Generator] = None,
               cache_keys: Optional[Sequence[tuple]] = None) -> torch.Tensor:
        """Scaled fp32 latents of a (N, 3, H, W) pixel batch in [-1, 1], on the pixels' device (the
        VAE may live elsewhere: a run on cached latents keeps it on the CPU for its grids)."""
        mean, std = self.posterior(vae, pixels, cache_keys)
        return scale_latents(vae, draw_latent(mean, std, mode, generator)).to(pixels.device)


def draw_latent(mean: torch.Tensor, std: torch.Tensor, mode: str,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The posterior mean, or a sample ``mean + std * eps`` with eps drawn from ``generator``."""
    if mode not in LATENT_MODES:
        raise ValueError(f"latent mode {mode!r}; choose one of {LATENT_MODES}")
    if mode == "mean":
        return mean
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * eps


def base_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's own (non-adapter) floating weights.

    Adapter parameters are fp32 masters whatever the base dtype, so "the first parameter" could
    be one of them; the adapter library says which parameters are adapters'."""
    for _, param in base_parameters(model):
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def omnigen_condition(batch: Mapping[str, Any], input_latents: Sequence[torch.Tensor]) -> dict[str, Any]:
    """The conditioning arguments of ``OmniGenTransformer2DModel.forward`` from a collated batch."""
    return {
        "input_ids": batch["input_ids"],
        "input_img_latents": list(input_latents),
        "input_image_sizes": batch["input_image_sizes"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"],
    }


def predict_velocity(transformer: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                     cond: Mapping[str, Any]) -> torch.Tensor:
    """OmniGen's prediction of the velocity u_t = x1 - x0 (in the transformer's dtype)."""
    return transformer(hidden_states=x_t.to(base_dtype(transformer)), timestep=t, return_dict=False, **cond)[0]


def input_image_cache_keys(batch: Mapping[str, Any]) -> list[tuple]:
    """One cache key per entry of ``batch["input_images"]`` (order of input_image_sizes)."""
    keys = batch["keys"]
    out = []
    for b in sorted(batch["input_image_sizes"]):
        for k in range(len(batch["input_image_sizes"][b])):
            out.append((keys[int(b)], f"input_{k + 1}"))
    return out


__all__ = [
    "LATENT_MODES",
    "LatentEncoder",
    "base_dtype",
    "draw_latent",
    "input_image_cache_keys",
    "omnigen_condition",
    "predict_velocity",
    "scale_latents",
    "unscale_latents",
    "vae_downsampling",
]
