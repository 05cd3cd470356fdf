"""The rectified-flow objective (OmniGen's), and its deterministic validation variant.

Convention (OmniGen's ``train_helper/loss.py``): **t = 0 is noise, t = 1 is data**.

    x1 = latent of the target image         x0 ~ N(0, I)
    t = sigmoid(u), u ~ N(mean, std)  (or t ~ U(0, 1))
    x_t = t x1 + (1 - t) x0                 target u_t = x1 - x0
    per-sample loss = mean over (C, H, W) of (model(x_t, t) - u_t)^2
    loss = mean over the batch of loss_weight_b * per-sample loss_b

``loss_weight`` is the batch's per-sample weight (DreamBooth class-prior samples get
``prior_loss_weight``); the batch mean is a plain mean, not divided by the sum of weights, so a
prior sample of weight 0.5 counts half a sample.  Every random draw comes from an explicit
``torch.Generator``, so a training step is a pure function of (seed, step): that is what makes
resume exact without saving RNG states.  Validation uses fixed noise per sample key and a fixed
t-grid, so ``val/loss`` compares across runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling

from ..core.seeding import derive_seed
from ..model.latents import LATENT_MODES, predict_velocity

T_SAMPLINGS = ("sigmoid_normal", "uniform")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DEFAULT_VAL_T_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class LossConfig:
    """Settings of the training objective (training and validation)."""

    t_sampling: Optional[str] = field(default=None, metadata={
        "help": "t = sigmoid(N(t_mean, t_std)) (diffusers' 'logit_normal'), or 'uniform' U(0, 1); null: the "
                "backbone's own (OmniGen: sigmoid_normal; sd15/sdxl: uniform, as diffusers' DreamBooth scripts)."})
    t_mean: float = field(default=0.0, metadata={"help": "Mean of the normal draw under the sigmoid."})
    t_std: float = field(default=1.0, metadata={"help": "Std of the normal draw under the sigmoid."})
    latent_mode: str = field(default="sample", metadata={
        "help": "Training latents: a VAE posterior 'sample' (OmniGen) or its 'mean'. Validation always uses "
                "the mean."})
    seed: int = field(default=0, metadata={
        "help": "Noise/t stream: step s draws from a generator seeded by (seed, s, micro-batch, rank)."})
    val_t_grid: list[float] = field(default_factory=lambda: list(DEFAULT_VAL_T_GRID), metadata={
        "help": "Validation evaluates every sample at each of these t."})
    val_seed: int = field(default=0, metadata={
        "help": "Validation noise: one N(0, I) draw per sample key, seeded by (val_seed, key)."})
    background_weight: float = field(default=1.0, metadata={
        "help": "Weight of latent pixels outside a sample's output mask (samples without a mask: every pixel "
                "weighs 1). 1.0 is the plain loss; 0 trains on the masked subject only."})
    mask_dilate: int = field(default=0, metadata={
        "help": "Grow each output mask by this many latent pixels (8 image px each) before weighting."})
    prediction_type: Optional[str] = field(default=None, metadata={
        "help": "DDPM backbones (sd15, sdxl): what the UNet predicts, 'epsilon', 'v_prediction' or 'sample'; "
                "null: the scheduler config's prediction_type (diffusers' --prediction_type)."})
    snr_gamma: Optional[float] = field(default=None, metadata={
        "help": "DDPM backbones: Min-SNR-gamma loss weights min(SNR, gamma) / SNR (epsilon), / (SNR + 1) "
                "(v_prediction), unweighted for 'sample' but capped at gamma; null: plain MSE (diffusers' "
                "--snr_gamma, 5.0 recommended there)."})
    noise_offset: float = field(default=0.0, metadata={
        "help": "DDPM backbones: noise + noise_offset * N(0, 1) per (sample, channel), drawn from the step's "
                "generator (diffusers' --noise_offset; 0: off)."})

    def __post_init__(self) -> None:
        if self.t_sampling is not None and self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"loss.t_sampling={self.t_sampling!r}; choose one of {T_SAMPLINGS}")
        if self.latent_mode not in LATENT_MODES:
            raise ValueError(f"loss.latent_mode={self.latent_mode!r}; choose one of {LATENT_MODES}")
        if not self.t_std > 0:
            raise ValueError(f"loss.t_std must be > 0, got {self.t_std}")
        grid = [float(t) for t in self.val_t_grid]
        if not grid or any(not 0.0 <= t <= 1.0 for t in grid):
            raise ValueError(f"loss.val_t_grid must be a non-empty list of t in [0, 1], got {grid}")
        self.val_t_grid = grid
        if not 0.0 <= self.background_weight <= 1.0:
            raise ValueError(f"loss.background_weight must lie in [0, 1], got {self.background_weight}")
        if self.mask_dilate < 0:
            raise ValueError(f"loss.mask_dilate must be >= 0 latent pixels, got {self.mask_dilate}")

    @property
    def masked(self) -> bool:
        return self.background_weight != 1.0
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"loss.prediction_type={self.prediction_type!r}; choose one of {PREDICTION_TYPES} or null")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"loss.snr_gamma must be > 0 or null, got {self.snr_gamma}")
        if not self.noise_offset >= 0:
            raise ValueError(f"loss.noise_offset must be >= 0, got {self.noise_offset}")

    def ddpm_only(self) -> list[str]:
        """The set fields that only DDPM backbones read (a flow backbone refuses them)."""
        out = [f"loss.{k}={getattr(self, k)!r}" for k in ("prediction_type", "snr_gamma")
               if getattr(self, k) is not None]
        return out + ([f"loss.noise_offset={self.noise_offset}"] if self.noise_offset else [])


def sample_t(batch_size: int, cfg: LossConfig, generator: Optional[torch.Generator] = None,
             device: torch.device | str = "cpu", default: str = "sigmoid_normal") -> torch.Tensor:
    """(B,) fp32 timesteps in (0, 1): sigmoid of a normal draw ("logit_normal"), or uniform,
    through diffusers' ``compute_density_for_timestep_sampling`` with our step generator.
    ``default``: the backbone's scheme when ``cfg.t_sampling`` is null."""
    scheme = "uniform" if (cfg.t_sampling or default) == "uniform" else "logit_normal"
    t = compute_density_for_timestep_sampling(scheme, batch_size, logit_mean=cfg.t_mean, logit_std=cfg.t_std,
                                              device=device, generator=generator)
    return t.float()


def interpolate(x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, u_t) = (t x1 + (1 - t) x0, x1 - x0), t broadcast over the non-batch dims."""
    t_ = t.to(x1.dtype).view(-1, *([1] * (x1.dim() - 1)))
    return t_ * x1 + (1 - t_) * x0, x1 - x0


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean over all non-batch dims of the squared error, in fp32."""
    diff = pred.float() - target.float()
    return diff.pow(2).flatten(1).mean(dim=1)


def latent_weights(masks: torch.Tensor, factor: int, background_weight: float, dilate: int = 0) -> torch.Tensor:
    """(B, 1, h, w) loss weights on the latent grid from (B, 1, H, W) masks in [0, 1]: the mask's
    area average over each latent pixel's ``factor`` x ``factor`` image pixels, grown by ``dilate``
    latent pixels, then ``w = background + (1 - background) * m``."""
    m = torch.nn.functional.avg_pool2d(masks.float(), factor)
    if dilate:
        m = torch.nn.functional.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return background_weight + (1.0 - background_weight) * m


def masked_per_sample_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B,) sum(w e) / sum(w) per sample, e the squared error, w broadcast over the channels."""
    err = (pred.float() - target.float()).pow(2)
    w = weights.to(err).expand_as(err)
    return (w * err).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-12)


def weighted_batch_mean(per_sample: torch.Tensor, loss_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """mean_b(w_b * l_b); w = 1 when ``loss_weight`` is None."""
    if loss_weight is None:
        return per_sample.mean()
    return (per_sample * loss_weight.to(per_sample)).mean()


@dataclass
class FlowLossOutput:
    loss: torch.Tensor  # scalar, weighted batch mean
    per_sample: torch.Tensor  # (B,) unweighted per-sample MSE
    t: torch.Tensor  # (B,)


def flow_matching_loss(transformer: torch.nn.Module, x1: torch.Tensor, cond: Mapping[str, Any], *,
                       noise: torch.Tensor, t: torch.Tensor, loss_weight: Optional[torch.Tensor] = None,
                       pixel_weights: Optional[torch.Tensor] = None) -> FlowLossOutput:
    """The rectified-flow loss for target latents ``x1``, ``noise`` (= x0) and ``t``.

    ``cond``: :func:`deft_omni.model.latents.omnigen_condition` of the batch; ``pixel_weights``
    (B, 1, h, w): per-latent-pixel weights (:func:`latent_weights`), None for the plain mean.  All
    randomness is in the arguments, so a test can recompute the formula directly."""
    if noise.shape != x1.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(x1.shape)}")
    if t.shape != (x1.shape[0],):
        raise ValueError(f"t must have shape ({x1.shape[0]},), got {tuple(t.shape)}")
    x_t, target = interpolate(x1, noise, t)
    pred = predict_velocity(transformer, x_t, t, cond)
    per_sample = per_sample_mse(pred, target) if pixel_weights is None else \
        masked_per_sample_mse(pred, target, pixel_weights)
    return FlowLossOutput(weighted_batch_mean(per_sample, loss_weight), per_sample, t)


def key_noise(keys: Sequence[str], shape: Sequence[int], seed: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, *shape) N(0, I) noise, row b drawn from a CPU generator seeded by (seed, keys[b], shape).

    Independent of batch composition, order, device and rank: the same key always gets the
    same noise, so validation losses compare across runs."""
    rows = []
    for key in keys:
        g = torch.Generator().manual_seed(derive_seed(int(seed), "val-noise", str(key), tuple(shape)))
        rows.append(torch.randn(tuple(shape), generator=g, dtype=torch.float32))
    return torch.stack(rows).to(device=device, dtype=dtype)


@torch.no_grad()
def validation_flow_loss(transformer: torch.nn.Module, x1: torch.Tensor, cond: Mapping[str, Any],
                         keys: Sequence[str], t_grid: Sequence[float], seed: int = 0,
                         loss_weight: Optional[torch.Tensor] = None,
                         pixel_weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic loss: fixed noise per sample key, every t of ``t_grid`` for every sample.

    Returns (mean over the grid of the weighted batch loss, (len(t_grid),) per-t losses)."""
    noise = key_noise(keys, x1.shape[1:], seed, device=x1.device, dtype=x1.dtype)
    per_t = []
    for tv in t_grid:
        t = torch.full((x1.shape[0],), float(tv), dtype=torch.float32, device=x1.device)
        per_t.append(flow_matching_loss(transformer, x1, cond, noise=noise, t=t, loss_weight=loss_weight,
                                        pixel_weights=pixel_weights).loss)
    per_t_tensor = torch.stack(per_t)
    return per_t_tensor.mean(), per_t_tensor


__all__ = [
    "DEFAULT_VAL_T_GRID",
    "FlowLossOutput",
    "LossConfig",
    "PREDICTION_TYPES",
    "T_SAMPLINGS",
    "flow_matching_loss",
    "interpolate",
    "latent_weights",
    "masked_per_sample_mse",
    "key_noise",
    "per_sample_mse",
    "sample_t",
    "validation_flow_loss",
    "weighted_batch_mean",
]
