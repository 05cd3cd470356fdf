"""OmniGen's rectified-flow loss, the VAE encoding it needs, and a deterministic validation variant.

Convention (NOTES §2, OmniGen's ``train_helper/loss.py``): **t = 0 is noise, t = 1 is data**.

    x1 = VAE latent of the target image (x scaling_factor, shift subtracted first if the VAE has one)
    x0 ~ N(0, I)                     t = sigmoid(u), u ~ N(mean, std)  (or t ~ U(0, 1))
    x_t = t x1 + (1 - t) x0          target u_t = x1 - x0
    per-sample loss = mean over (C, H, W) of (model(x_t, t) - u_t)^2
    loss = mean over the batch of loss_weight_b * per-sample loss_b

``loss_weight`` is the batch's per-sample weight (DreamBooth class-prior samples get
``prior_loss_weight``); the batch mean is a plain mean, not divided by the sum of weights, so
a prior sample of weight 0.5 counts half a sample.

Latents.  The VAE is frozen and run in fp32 outside autocast.  ``latent_mode="sample"`` draws
from the VAE posterior (what OmniGen's ``train.py`` and diffusers' pipeline do, for the target
and the input images alike); ``"mean"`` takes the posterior mean (deterministic; for SDXL's VAE
the posterior std is tiny, so the two barely differ).  Every random draw comes from an explicit
``torch.Generator`` so a training step is a pure function of (seed, step): that is what makes
resume exact without saving RNG states.  Validation always uses the posterior mean.

:class:`LatentEncoder` optionally caches the posterior (mean, std) per (sample key, image slot,
size): with the cache on, ``"sample"`` still draws fresh posterior noise every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..core.seeding import derive_seed

T_SAMPLINGS = ("sigmoid_normal", "uniform")
LATENT_MODES = ("sample", "mean")
DEFAULT_VAL_T_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class LossConfig:
    """Settings of the rectified-flow loss (training and validation)."""

    t_sampling: str = "sigmoid_normal"  # t = sigmoid(N(t_mean, t_std)) as OmniGen, or "uniform" U(0, 1)
    t_mean: float = 0.0
    t_std: float = 1.0
    latent_mode: str = "sample"  # "sample" (OmniGen) or "mean" of the VAE posterior, for training
    seed: int = 0  # noise/t stream: step s draws from a generator seeded by (seed, s, micro-batch, rank)
    val_t_grid: Sequence[float] = field(default_factory=lambda: list(DEFAULT_VAL_T_GRID))
    val_seed: int = 0  # validation noise: one N(0, I) draw per sample key, seeded by (val_seed, key)

    def __post_init__(self) -> None:
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"LossConfig.t_sampling={self.t_sampling!r}; choose one of {T_SAMPLINGS}")
        if self.latent_mode not in LATENT_MODES:
            raise ValueError(f"LossConfig.latent_mode={self.latent_mode!r}; choose one of {LATENT_MODES}")
        if not self.t_std > 0:
            raise ValueError(f"LossConfig.t_std must be > 0, got {self.t_std}")
        grid = [float(t) for t in self.val_t_grid]
        if not grid or any(not 0.0 <= t <= 1.0 for t in grid):
            raise ValueError(f"LossConfig.val_t_grid must be a non-empty list of t in [0, 1], got {grid}")
        self.val_t_grid = grid


# --------------------------------------------------------------------------- formula pieces
def sample_t(batch_size: int, cfg: LossConfig, generator: Optional[torch.Generator] = None,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) fp32 timesteps in (0, 1): sigmoid of a normal draw, or uniform."""
    if cfg.t_sampling == "uniform":
        return torch.rand(batch_size, generator=generator, device=device, dtype=torch.float32)
    u = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float32)
    return torch.sigmoid(u * cfg.t_std + cfg.t_mean)


def interpolate(x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, u_t) = (t x1 + (1 - t) x0, x1 - x0), t broadcast over the non-batch dims."""
    t_ = t.to(x1.dtype).view(-1, *([1] * (x1.dim() - 1)))
    return t_ * x1 + (1 - t_) * x0, x1 - x0


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean over all non-batch dims of the squared error, in fp32."""
    diff = pred.float() - target.float()
    return diff.pow(2).flatten(1).mean(dim=1)


def weighted_batch_mean(per_sample: torch.Tensor, loss_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """mean_b(w_b * l_b); w = 1 when ``loss_weight`` is None."""
    if loss_weight is None:
        return per_sample.mean()
    return (per_sample * loss_weight.to(per_sample)).mean()


def model_kwargs(batch: Mapping[str, Any], input_latents: Sequence[torch.Tensor]) -> dict[str, Any]:
    """The conditioning arguments of ``OmniGenTransformer2DModel.forward`` from a collated batch."""
    return {
        "input_ids": batch["input_ids"],
        "input_img_latents": list(input_latents),
        "input_image_sizes": batch["input_image_sizes"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"],
    }


def base_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's own (non-adapter) floating weights: adapter parameters are fp32
    masters whatever the base dtype, so "the first parameter" could be one of them."""
    fallback = None
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue
        if ".owned." not in f".{name}.":
            return param.dtype
        fallback = fallback or param.dtype
    return fallback or torch.float32


def predict_velocity(transformer: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                     cond: Mapping[str, Any]) -> torch.Tensor:
    """The transformer's prediction of u_t (in the transformer's dtype)."""
    return transformer(hidden_states=x_t.to(base_dtype(transformer)), timestep=t, return_dict=False, **cond)[0]


@dataclass
class FlowLossOutput:
    loss: torch.Tensor  # scalar, weighted batch mean
    per_sample: torch.Tensor  # (B,) unweighted per-sample MSE
    t: torch.Tensor  # (B,)


def flow_matching_loss(transformer: nn.Module, x1: torch.Tensor, cond: Mapping[str, Any], *,
                       noise: torch.Tensor, t: torch.Tensor,
                       loss_weight: Optional[torch.Tensor] = None) -> FlowLossOutput:
    """The rectified-flow loss for given target latents ``x1``, ``noise`` (= x0) and ``t``.

    ``cond``: :func:`model_kwargs` of the batch.  All randomness is in the arguments, so a test
    can recompute the formula directly.
    """
    if noise.shape != x1.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(x1.shape)}")
    if t.shape != (x1.shape[0],):
        raise ValueError(f"t must have shape ({x1.shape[0]},), got {tuple(t.shape)}")
    x_t, target = interpolate(x1, noise, t)
    pred = predict_velocity(transformer, x_t, t, cond)
    per_sample = per_sample_mse(pred, target)
    return FlowLossOutput(weighted_batch_mean(per_sample, loss_weight), per_sample, t)


def key_noise(keys: Sequence[str], shape: Sequence[int], seed: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, *shape) N(0, I) noise, row b drawn from a CPU generator seeded by (seed, keys[b], shape).

    Independent of batch composition, order, device and rank: the same key always gets the
    same noise, so validation losses compare across runs.
    """
    rows = []
    for key in keys:
        g = torch.Generator().manual_seed(derive_seed(int(seed), "val-noise", str(key), tuple(shape)))
        rows.append(torch.randn(tuple(shape), generator=g, dtype=torch.float32))
    return torch.stack(rows).to(device=device, dtype=dtype)


@torch.no_grad()
def validation_flow_loss(transformer: nn.Module, x1: torch.Tensor, cond: Mapping[str, Any],
                         keys: Sequence[str], t_grid: Sequence[float], seed: int = 0,
                         loss_weight: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic loss: fixed noise per sample key, every t of ``t_grid`` for every sample.

    Returns (mean over the grid of the weighted batch loss, (len(t_grid),) per-t losses).
    """
    noise = key_noise(keys, x1.shape[1:], seed, device=x1.device, dtype=x1.dtype)
    per_t = []
    for tv in t_grid:
        t = torch.full((x1.shape[0],), float(tv), dtype=torch.float32, device=x1.device)
        per_t.append(flow_matching_loss(transformer, x1, cond, noise=noise, t=t, loss_weight=loss_weight).loss)
    per_t_tensor = torch.stack(per_t)
    return per_t_tensor.mean(), per_t_tensor


# --------------------------------------------------------------------------------- VAE side
class LatentEncoder:
    """Encodes pixel batches with a frozen fp32 VAE into OmniGen latents, with an optional cache.

    ``latent = (z - shift_factor) * scaling_factor`` (no shift for SDXL's VAE), z the posterior
    sample or mean.  The cache maps (key, slot, H, W) to the posterior (mean, std) on the
    device they were computed on; it is unbounded, so enable it for small data sets only.
    """

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
        """Scaled fp32 latents of a (N, 3, H, W) pixel batch in [-1, 1]."""
        if mode not in LATENT_MODES:
            raise ValueError(f"latent mode {mode!r}; choose one of {LATENT_MODES}")
        mean, std = self.posterior(vae, pixels, cache_keys)
        z = mean
        if mode == "sample":
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + std * eps
        return scale_latents(vae, z)


def scale_latents(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z - shift
    return z * vae.config.scaling_factor


def unscale_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    z = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    return z + shift if shift is not None else z


def input_image_cache_keys(batch: Mapping[str, Any]) -> list[tuple]:
    """One cache key per entry of ``batch["input_images"]`` (order of input_image_sizes)."""
    keys = batch["keys"]
    out = []
    for b in sorted(batch["input_image_sizes"]):
        for k in range(len(batch["input_image_sizes"][b])):
            out.append((keys[int(b)], f"input_{k + 1}"))
    return out
