"""Generate world images with a model (and adapters) and read them with the judge.

One function for every place that scores a world model: the build (targets and ``world.json``),
the demo (before / after in ``summary.json``), the retention study and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..core.seeding import derive_seed
from ..generation.sampler import SamplePrompt, decode_latents, generate_latents_batch
from .metrics import WorldScores, evaluate_pairs
from .render import render_array
from .spec import Geometry, TaskSpec
from .tasks import held_out_prompts
from .vae import to_uint8_images

#: (task, combo) sets the base is scored on, in report order
BASE_SETS: tuple[tuple[str, str], ...] = (
    ("text_one", "seen"), ("text_one", "unseen"), ("text_two", "seen"), ("recolour", "seen"), ("move", "seen"),
    ("background", "seen"), ("same_but", "seen"))


@dataclass
class SamplerSettings:
    steps: int = 16
    guidance_scale: float = 2.5
    img_guidance_scale: float = 1.6
    image_size: int = 96

    @classmethod
    def from_info(cls, info: dict, steps: Optional[int] = None) -> "SamplerSettings":
        s = info.get("sampler", {})
        return cls(steps=int(steps or s.get("steps", 16)), guidance_scale=float(s.get("guidance_scale", 2.5)),
                   img_guidance_scale=float(s.get("img_guidance_scale", 1.6)), image_size=int(s.get("height", 96)))


def _pixels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)


@torch.no_grad()
def generate_for(specs: Sequence[TaskSpec], transformer, vae, processor, sampler: SamplerSettings,
                 seed: int = 0, chunk: int = 25, instructions: Optional[Sequence[str]] = None) -> list[np.ndarray]:
    """uint8 images generated for ``specs`` (their instructions, or ``instructions``; their input
    scenes rendered as input images), prompt ``i`` at seed (seed, i): independent of chunking."""
    was_training = transformer.training
    transformer.eval()
    images: list[np.ndarray] = []
    side = sampler.image_size
    for start in range(0, len(specs), chunk):
        prompts = []
        for i in range(start, min(len(specs), start + chunk)):
            spec = specs[i]
            prompts.append(SamplePrompt(
                instruction=instructions[i] if instructions is not None else spec.instruction,
                input_images=[_pixels(render_array(s)) for s in spec.inputs], height=side, width=side,
                seed=derive_seed("world-judge", int(seed), i), guidance_scale=sampler.guidance_scale,
                img_guidance_scale=sampler.img_guidance_scale))
        latents = generate_latents_batch(transformer, vae, processor, prompts, num_steps=sampler.steps)
        images.extend(to_uint8_images(decode_latents(vae, latents)))
    transformer.train(was_training)
    return images


def judge_sets(transformer, vae, processor, sampler: SamplerSettings, n: int,
               sets: Sequence[tuple[str, str]] = BASE_SETS, seed: int = 123,
               geometry: Geometry = Geometry()) -> tuple[dict[str, WorldScores], dict[str, list[np.ndarray]]]:
    """Scores (and the images) of ``n`` held-out prompts per (task, combo)."""
    rows, images = {}, {}
    for task, combo in sets:
        specs = held_out_prompts(n, task, combo, seed=seed, geometry=geometry)
        imgs = generate_for(specs, transformer, vae, processor, sampler)
        rows[f"{task}/{combo}"] = evaluate_pairs(zip(specs, imgs), geometry)
        images[f"{task}/{combo}"] = imgs
    return rows, images


def scores_dict(rows: dict[str, WorldScores]) -> dict[str, Any]:
    return {k: v.as_dict() for k, v in rows.items()}
