"""The world base's training data: tasks drawn once, their images encoded once with the world VAE,
and batches served as cached-latent samples to :class:`deft_omni.training.DeftOmniModule`.

The samples are the processor's own :class:`~deft_omni.data.ProcessedSample` with cached
posteriors (the form ``python -m deft_omni.encode_latents`` puts in shards), so the module, the
backbone's loss and its VAE-fingerprint check run exactly as on any cached shard set; the set is
just held in memory rather than read from tars, because 20k 96 px samples fit in 30 MB and a step
must not wait for a loader.  Step ``s`` draws its samples from (seed, s): a rebuild is
bit-identical on one machine and thread count.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..core.atomic import atomic_path
from ..core.seeding import derive_seed
from ..data import CFG_INSTRUCTION, ProcessedSample, collate_processed
from ..model.vae_identity import vae_fingerprint
from .base_recipe import WorldBaseConfig
from .render import render_array
from .spec import TaskSpec
from .tasks import mixed_task


def to_pixels(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] from uint8 HxWx3 renders."""
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)


@torch.no_grad()
def encode_posteriors(vae, arrays: Sequence[np.ndarray], batch_size: int = 256) -> torch.Tensor:
    """(N, 2, C, h, w): the VAE posterior's mean and std of each render (fp32)."""
    out = []
    for i in range(0, len(arrays), batch_size):
        dist = vae.encode(to_pixels(arrays[i:i + batch_size])).latent_dist
        out.append(torch.stack([dist.mean, dist.std], dim=1))
    return torch.cat(out) if out else torch.zeros(0)


def training_tasks(cfg: WorldBaseConfig) -> list[TaskSpec]:
    return [mixed_task(cfg.seed, "train", i, cfg.mix) for i in range(cfg.n_train)]


def encoded_tasks(cfg: WorldBaseConfig, vae, cache: Path | None = None) -> tuple[list[TaskSpec], dict]:
    """The training tasks and their posteriors ({"target": (N,2,C,h,w), "inputs": (M,...),
    "input_index": (M,) task index}); cached in ``cache`` (safetensors) when given."""
    specs = training_tasks(cfg)
    fingerprint = vae_fingerprint(vae)
    if cache is not None and cache.is_file():
        loaded = load_file(str(cache))
        if int(loaded["n"]) == len(specs) and bytes(loaded["vae"].tolist()).decode() == fingerprint:
            return specs, loaded
    with_inputs = [i for i, s in enumerate(specs) if s.inputs]
    latents = {
        "target": encode_posteriors(vae, [render_array(s.target) for s in specs]),
        "inputs": encode_posteriors(vae, [render_array(specs[i].inputs[0]) for i in with_inputs]),
        "input_index": torch.tensor(with_inputs, dtype=torch.long),
        "n": torch.tensor(len(specs)),
        "vae": torch.tensor(list(fingerprint.encode()), dtype=torch.uint8),
    }
    if cache is not None:
        with atomic_path(cache) as tmp:
            save_file(latents, str(tmp))
    return specs, latents


class WorldBatches(torch.utils.data.Dataset):
    """Item ``s`` = the collated batch of step ``s`` (use ``DataLoader(batch_size=None)``).

    A batch holds one kind of task (text-to-image, or edits with one input image), drawn in
    proportion to the set; ``cfg_dropout`` of its samples train on ``<cfg>`` with no inputs."""

    def __init__(self, cfg: WorldBaseConfig, specs: Sequence[TaskSpec], latents: dict, processor,
                 steps: int | None = None):
        self.cfg, self.specs, self.processor = cfg, list(specs), processor
        self.length = int(steps or cfg.steps)
        self.target = latents["target"]
        self.inputs = {int(i): latents["inputs"][k] for k, i in enumerate(latents["input_index"].tolist())}
        self.fingerprint = bytes(latents["vae"].tolist()).decode()
        side = cfg.image_size
        self.tokens = [processor.tokenize(s.instruction, [(side, side)] * len(s.inputs)) for s in self.specs]
        self.cfg_ids, _ = processor.tokenize(CFG_INSTRUCTION, [])
        self.groups = [[i for i, s in enumerate(self.specs) if not s.inputs], sorted(self.inputs)]
        self.groups = [g for g in self.groups if len(g) >= cfg.batch_size]
        if not self.groups:
            raise ValueError(f"no task kind has batch_size={cfg.batch_size} samples among {len(self.specs)}")

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int, dropped: bool) -> ProcessedSample:
        side = self.cfg.image_size
        common = dict(key=f"world_train_{index:06d}", output_image=None, output_latent=self.target[index],
                      latent_vae=self.fingerprint, latent_pixel_size=(side, side), task=self.specs[index].task)
        if dropped:
            return ProcessedSample(input_ids=list(self.cfg_ids), image_spans=[], input_images=[], cfg_dropped=True,
                                   **common)
        ids, spans = self.tokens[index]
        return ProcessedSample(input_ids=list(ids), image_spans=list(spans), input_images=[],
                               input_latents=[self.inputs[index]] if spans else [], **common)

    def __getitem__(self, step: int) -> dict:
        rng = random.Random(derive_seed("world-base-batch", self.cfg.seed, int(step)))
        group = rng.choices(self.groups, [len(g) for g in self.groups])[0]
        picked = rng.sample(group, self.cfg.batch_size)
        items = [self.sample(i, rng.random() < self.cfg.cfg_dropout) for i in picked]
        return collate_processed(items, pad_id=0)
