"""A short, fully seeded training loop on the synthetic camera scene (no Lightning: fast)."""

from __future__ import annotations

import numpy as np
import torch
import webdataset as wds

from deft_omni.backbones import OmniGenBackbone
from deft_omni.camera.extension import CameraExtension
from deft_omni.camera.frame import frame_from_shards
from deft_omni.data import OmniGenTrainProcessor
from deft_omni.data.processor import collate_processed, image_to_tensor
from deft_omni.data.schema import ShardSet, parse_sample
from deft_omni.model import load_omnigen
from deft_omni.training import DeftOmniModule

ADAPTER = {"method": "deft", "rank": 8, "target_modules": "all-linear"}
# Low t: the noisy latent says little about the target there, so the conditioning is all the model
# has; that is where using the camera shows (at t near 1 the latent itself gives the image away).
LOSS = {"latent_mode": "mean", "t_mean": -1.5, "t_std": 0.5, "val_t_grid": [0.05, 0.1, 0.2]}


def read_samples(path):
    return [parse_sample(r) for r in wds.WebDataset(ShardSet.resolve(path).urls, shardshuffle=False,
                                                     empty_check=False)]


def calibrated_parts(model_dir, samples):
    """The tiny OmniGen with its random VAE's scaling factor set so the targets' latents vary with
    unit variance across images, as SDXL's factor does for the real VAE (the tiny VAE's latents
    differ by ~0.02 between images, far below the unit noise: no conditioning could matter)."""
    parts = load_omnigen(str(model_dir))
    with torch.no_grad():
        z = parts.vae.encode(torch.stack([image_to_tensor(s.output) for s in samples])).latent_dist.mean
    parts.vae.register_to_config(scaling_factor=float(1 / (z - z.mean(0)).pow(2).mean().sqrt()))
    return parts


def held_out_loss(model_dir, scene, mode, steps=150, batch_size=8, lr=1e-2, seed=0):
    """Train ``steps`` steps with camera.mode=``mode`` and return the held-out validation loss."""
    train, val = read_samples(scene["train"]), read_samples(scene["val"])
    frame, instruction, _ = frame_from_shards([scene["train"]])
    camera = [CameraExtension({"mode": mode}, frame, instruction)] if mode != "none" else []
    module = DeftOmniModule(backbone=OmniGenBackbone(calibrated_parts(model_dir, train)), adapter=ADAPTER,
                            optim={"lr": lr, "warmup_steps": 0}, loss={**LOSS, "seed": seed},
                            model={"init_seed": seed}, verbose=False, extensions=camera)
    proc = OmniGenTrainProcessor(module.tokenizer, max_image_side=32, cfg_dropout=0.0,
                                 conditioners=[c.conditioner() for c in camera])
    items = [proc(s, train=False) for s in train]
    val_batch = collate_processed([proc(s, train=False) for s in val], pad_id=proc.pad_id)
    opt = module.configure_optimizers()["optimizer"]
    rng = np.random.default_rng(seed)
    for step in range(steps):
        batch = collate_processed([items[i] for i in rng.choice(len(items), batch_size, replace=False)],
                                  pad_id=proc.pad_id)
        loss = module.training_loss(batch, torch.Generator().manual_seed(step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(module.validation_loss(val_batch)[0])
