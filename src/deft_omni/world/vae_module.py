"""Training the world VAE under Lightning, on renders drawn afresh every step.

``train_world_vae(cfg, out_dir)`` runs the whole recipe on CPU: a Lightning fit over
``cfg.steps`` batches (each a pure function of (seed, step), so a run is reproducible on one
machine and thread count), latent-scale calibration, and an atomic ``save_pretrained``
(safetensors) with the recipe beside it in ``world_vae.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from diffusers import AutoencoderKL

from ..core.atomic import atomic_dir, write_json
from ..core.seeding import derive_seed
from .vae import WorldVAEConfig, build_world_vae, calibrate_scaling, render_batch, vae_loss

RECIPE_NAME = "world_vae.json"


class RenderBatches(torch.utils.data.Dataset):
    """Item ``s`` = the training batch of step ``s`` (already batched: use ``batch_size=None``)."""

    def __init__(self, cfg: WorldVAEConfig, length: int | None = None, offset: int = 0):
        self.cfg, self.length, self.offset = cfg, int(length or cfg.steps), int(offset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, step: int) -> torch.Tensor:
        c = self.cfg
        return render_batch(c.seed, self.offset + step, c.batch_size, c.geometry, c.max_objects, c.extra_shapes,
                            c.extra_shape_share)


class WorldVAEModule(pl.LightningModule):
    """Reconstruction + edge + KL training of an ``AutoencoderKL`` (see :mod:`deft_omni.world.vae`)."""

    def __init__(self, cfg: WorldVAEConfig, vae: AutoencoderKL | None = None):
        super().__init__()
        self.cfg = cfg
        self.vae = vae if vae is not None else build_world_vae(cfg)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        g = torch.Generator(device=batch.device).manual_seed(derive_seed("world-vae-noise", self.cfg.seed,
                                                                         int(self.global_step)))
        parts = vae_loss(self.vae, batch, self.cfg, g)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, prog_bar=False, on_step=True)
        return parts["loss"]

    def configure_optimizers(self):
        c = self.cfg
        opt = torch.optim.AdamW(self.vae.parameters(), lr=c.lr, weight_decay=c.weight_decay)

        def factor(step: int) -> float:
            if step < c.warmup_steps:
                return (step + 1) / c.warmup_steps
            progress = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
            return c.lr_min_ratio + (1 - c.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit_world_vae(cfg: WorldVAEConfig, logger=False, callbacks=None) -> tuple[AutoencoderKL, dict]:
    """Train a world VAE from scratch; returns (vae in eval mode, calibrated, and run facts)."""
    module = WorldVAEModule(cfg)
    loader = torch.utils.data.DataLoader(RenderBatches(cfg), batch_size=None, shuffle=False, num_workers=0)
    trainer = pl.Trainer(max_steps=cfg.steps, accelerator="cpu", devices=1, logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=callbacks or [], gradient_clip_val=1.0, deterministic=True)
    start = time.perf_counter()
    trainer.fit(module, loader)
    train_s = time.perf_counter() - start
    vae = module.vae.eval()
    calib = RenderBatches(cfg, length=1, offset=10**9)[0]  # a batch no training step drew
    factor = calibrate_scaling(vae, calib)
    return vae, {"train_seconds": round(train_s, 1), "steps": cfg.steps, "scaling_factor": factor,
                 "threads": torch.get_num_threads(),
                 "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}


def save_world_vae(vae: AutoencoderKL, out_dir: str | Path, cfg: WorldVAEConfig, facts: dict) -> Path:
    """``out_dir`` (replaced atomically): diffusers' ``config.json`` + safetensors, and the recipe."""
    with atomic_dir(out_dir) as staging:
        vae.save_pretrained(staging, safe_serialization=True)
        write_json(Path(staging) / RECIPE_NAME, {"recipe": cfg.as_dict(), **facts})
    return Path(out_dir)


def train_world_vae(cfg: WorldVAEConfig, out_dir: str | Path) -> tuple[AutoencoderKL, dict]:
    vae, facts = fit_world_vae(cfg)
    save_world_vae(vae, out_dir, cfg, facts)
    return vae, facts
