"""`CameraSampleCallback`: progress renders of a few training cameras (camera.mode text/embed).

The generic sample callback renders plain prompts, which carry no camera; this one renders the
training instruction + each chosen camera through the module's own camera conditioning, as a
grid in ``<out>/camera_samples/step_XXXXXX.png`` (the real image's camera, not the image).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..training.callbacks import PeriodicGridCallback
from .render import CameraRenderer, key_from_dict


def spread(items: Sequence, n: int) -> list:
    """``n`` items evenly spread over ``items`` (all of them when fewer)."""
    if n >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)]


class CameraSampleCallback(PeriodicGridCallback):
    def __init__(self, dirpath: str | Path, extension: Any, cameras: Sequence[dict], every_n_steps: int = 500,
                 size: int = 32, num_steps: int = 8) -> None:
        super().__init__(dirpath, every_n_steps)
        self.extension = extension
        self.cameras = list(cameras)
        self.size, self.num_steps = int(size), int(num_steps)

    def render(self, pl_module) -> object:
        from ..generation.sampler import make_grid, tensor_to_pil

        bundle = self.extension.bundle()
        renderer = CameraRenderer(pl_module.transformer, pl_module.vae, pl_module.tokenizer, bundle,
                                  self.extension.hook, max_image_side=self.size)
        was_training = pl_module.transformer.training
        pl_module.transformer.eval()
        try:
            with torch.autocast(device_type=pl_module.device.type, enabled=False):
                row = [tensor_to_pil(renderer.render(key_from_dict(c, f"view {i}").vector(bundle.frame),
                                                     height=self.size, width=self.size, num_steps=self.num_steps,
                                                     seed=i))
                       for i, c in enumerate(self.cameras)]
        finally:
            pl_module.transformer.train(was_training)
        return make_grid([row], [bundle.instruction + " (training cameras)"])
