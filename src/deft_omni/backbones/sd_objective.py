"""The DDPM objective of Stable Diffusion (what diffusers' DreamBooth-LoRA scripts train).

    x0 = VAE latent * scaling_factor        eps ~ N(0, I) (+ noise_offset * N(0, 1) per channel)
    timestep k in {0, ..., T-1}            x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps
    target = eps ('epsilon'), sqrt(abar_k) eps - sqrt(1 - abar_k) x0 ('v_prediction') or x0 ('sample')
    per-sample loss = w_k * mean over (C, H, W) of (unet(x_k, k, text) - target)^2
    loss = mean over the batch of loss_weight_b * per-sample loss_b

with w = 1, or Min-SNR-gamma: min(SNR_k, gamma) / SNR_k (epsilon), / (SNR_k + 1) (v), min(SNR_k,
gamma) (sample).  The timestep comes from the project's t in (0, 1) (t = 1 is data, as in the
flow objective): k = floor((1 - t) T) capped at T - 1, so ``t_sampling=uniform`` is diffusers'
``randint(0, T)``.  Validation maps each t of the grid to k = round((1 - t)(T - 1)), with fixed
noise per sample key and no SNR weights, so ``val/loss`` compares across settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch
from diffusers.training_utils import compute_snr

from .objective import FlowLossOutput, LossConfig, key_noise, per_sample_mse, sample_t, weighted_batch_mean

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (noisy latents, timesteps) -> prediction


def prediction_type(scheduler: Any, cfg: LossConfig) -> str:
    return cfg.prediction_type or scheduler.config.prediction_type


def train_timesteps(t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """(B,) long timesteps from t in (0, 1), t = 1 data."""
    return ((1.0 - t) * num_train_timesteps).floor().long().clamp(0, num_train_timesteps - 1)


def grid_timestep(t: float, num_train_timesteps: int) -> int:
    return int(round((1.0 - float(t)) * (num_train_timesteps - 1)))


def ddpm_target(scheduler: Any, kind: str, x0: torch.Tensor, noise: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    if kind == "sample":
        return x0
    raise ValueError(f"prediction type {kind!r}; choose epsilon, v_prediction or sample")


def min_snr_weights(scheduler: Any, kind: str, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B,) Min-SNR-gamma weights (arXiv 2303.09556) for the prediction ``kind``."""
    snr = compute_snr(scheduler, timesteps).float()
    capped = torch.clamp(snr, max=float(gamma))
    if kind == "epsilon":
        return capped / snr
    if kind == "v_prediction":
        return capped / (snr + 1)
    return capped


def ddpm_loss(predict: Predict, scheduler: Any, x0: torch.Tensor, *, noise: torch.Tensor,
              timesteps: torch.Tensor, kind: str, snr_gamma: Optional[float] = None,
              loss_weight: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None) -> FlowLossOutput:
    """The loss for latents ``x0``; all randomness in the arguments (tests recompute it)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(x0.shape)}")
    noisy = scheduler.add_noise(x0, noise, timesteps)
    per_sample = per_sample_mse(predict(noisy, timesteps), ddpm_target(scheduler, kind, x0, noise, timesteps))
    if snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(scheduler, kind, timesteps, snr_gamma).to(per_sample)
    t = t if t is not None else 1.0 - timesteps.float() / scheduler.config.num_train_timesteps
    return FlowLossOutput(weighted_batch_mean(per_sample, loss_weight), per_sample, t)


def training_ddpm_loss(predict: Predict, scheduler: Any, x0: torch.Tensor, cfg: LossConfig,
                       generator: Optional[torch.Generator],
                       loss_weight: Optional[torch.Tensor] = None) -> FlowLossOutput:
    """Draw t, the noise and the noise offset from ``generator`` (in that order), then the loss."""
    t = sample_t(int(x0.shape[0]), cfg, generator, x0.device, default="uniform")
    timesteps = train_timesteps(t, int(scheduler.config.num_train_timesteps))
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if cfg.noise_offset:
        offset = torch.randn((x0.shape[0], x0.shape[1], 1, 1), generator=generator, device=x0.device, dtype=x0.dtype)
        noise = noise + cfg.noise_offset * offset
    return ddpm_loss(predict, scheduler, x0, noise=noise, timesteps=timesteps, kind=prediction_type(scheduler, cfg),
                     snr_gamma=cfg.snr_gamma, loss_weight=loss_weight, t=t)


@torch.no_grad()
def validation_ddpm_loss(predict: Predict, scheduler: Any, x0: torch.Tensor, keys: Sequence[str], cfg: LossConfig,
                         loss_weight: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over the grid, per-t) loss with fixed noise per key, unweighted by SNR."""
    noise = key_noise(keys, x0.shape[1:], cfg.val_seed, device=x0.device, dtype=x0.dtype)
    kind, total = prediction_type(scheduler, cfg), int(scheduler.config.num_train_timesteps)
    per_t = []
    for tv in cfg.val_t_grid:
        timesteps = torch.full((x0.shape[0],), grid_timestep(tv, total), dtype=torch.long, device=x0.device)
        per_t.append(ddpm_loss(predict, scheduler, x0, noise=noise, timesteps=timesteps, kind=kind,
                               loss_weight=loss_weight).loss)
    per_t_tensor = torch.stack(per_t)
    return per_t_tensor.mean(), per_t_tensor


def micro_conditions(batch: Mapping[str, Any]) -> torch.Tensor:
    """SDXL's (B, 6) add_time_ids: original_size + crops_coords_top_left + target_size."""
    return torch.cat([batch["original_sizes"], batch["crop_top_left"], batch["target_sizes"]], dim=1)
