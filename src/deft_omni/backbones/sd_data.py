"""Shard samples -> Stable Diffusion training inputs (the processor the loaders call).

SD learns text-to-image: a sample is its instruction (the prompt, e.g. DreamBooth's "a photo of
sks dog") and its output image; a sample with input images is refused (skipped, counted).  The
image is scaled to cover the training size and centre-cropped, as diffusers' DreamBooth scripts
with ``--center_crop`` (their default crop is random); the training size is
``data.max_image_side`` squared, or with ``data.bucket_sizes`` the listed (H, W) of the closest
aspect ratio.  SDXL's micro-conditioning records the image's size before the resize
(``original_size``), the crop's top-left corner in the resized image (``crops_coords_top_left``)
and the training size (``target_size``).  Condition dropout replaces the prompt by "" (the
unconditional prompt of SD's classifier-free guidance).  Prompts stay text: the backbone encodes
them (and caches the encodings while the text encoders are frozen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from ..core.seeding import derive_seed
from ..data.processor import image_to_tensor
from ..data.schema import Sample, SampleError, to_rgb

EMPTY_PROMPT = ""


@dataclass
class SDSample:
    """One processed sample, ready for :meth:`SDTrainProcessor.collate`."""

    key: str
    prompt: str
    output_image: torch.Tensor  # (3, H, W) in [-1, 1]
    original_size: tuple[int, int]  # (h, w) before the resize
    crop_top_left: tuple[int, int]  # (top, left) in the resized image
    task: str = ""
    loss_weight: float = 1.0
    is_prior: bool = False
    cfg_dropped: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    is_cached = False  # SD trains on pixels: the loader's buckets never mix it with cached latents

    @property
    def output_size(self) -> tuple[int, int]:
        return int(self.output_image.shape[-2]), int(self.output_image.shape[-1])


def cover_crop(img: Image.Image, height: int, width: int) -> tuple[Image.Image, tuple[int, int]]:
    """Scale to cover (height, width) keeping the aspect ratio, then centre-crop; returns the crop
    and its (top, left) corner in the scaled image."""
    w, h = img.size
    scale = max(width / w, height / h)
    size = (max(width, math.ceil(w * scale)), max(height, math.ceil(h * scale)))
    if size != (w, h):
        img = img.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return img.crop((left, top, left + width, top + height)), (top, left)


class SDTrainProcessor:
    """Samples -> :class:`SDSample`; lists of those -> batches.  See the module docstring.

    ``size_multiple``: training sides must be multiples of it (the VAE's factor times the UNet's
    downsampling).  Picklable (no tokenizer), so DataLoader workers get a copy."""

    def __init__(self, resolution: int, size_multiple: int = 8, cfg_dropout: float = 0.0, seed: int = 0,
                 prior_loss_weight: float = 1.0, bucket_sizes: Optional[Sequence[tuple[int, int]]] = None) -> None:
        if resolution < size_multiple or resolution % size_multiple:
            raise ValueError(f"data.max_image_side={resolution} is the SD training resolution: a positive multiple "
                             f"of {size_multiple} (the VAE's 8x times the UNet's downsampling), e.g. 1024 for SDXL")
        if not 0.0 <= cfg_dropout <= 1.0:
            raise ValueError(f"cfg_dropout must lie in [0, 1], got {cfg_dropout}")
        self.resolution, self.size_multiple = int(resolution), int(size_multiple)
        self.cfg_dropout, self.seed, self.prior_loss_weight = float(cfg_dropout), int(seed), float(prior_loss_weight)
        self.bucket_sizes = self._check_buckets(bucket_sizes)

    def _check_buckets(self, buckets):
        if not buckets:
            return None
        out = [(int(h), int(w)) for h, w in buckets]
        bad = [s for s in out if min(s) <= 0 or s[0] % self.size_multiple or s[1] % self.size_multiple]
        if bad:
            raise ValueError(f"bucket sizes {bad} are not positive multiples of {self.size_multiple}")
        return out

    def target_size(self, width: int, height: int, buckets=None) -> tuple[int, int]:
        buckets = buckets or self.bucket_sizes
        if not buckets:
            return self.resolution, self.resolution
        aspect = math.log(width / height)
        return min(buckets, key=lambda s: (abs(math.log(s[1] / s[0]) - aspect), -s[0] * s[1]))

    def drops_condition(self, key: str, rng: Optional[np.random.Generator] = None, epoch: int = 0) -> bool:
        """The condition-dropout draw: from ``rng`` if given, else seeded by (seed, epoch, key)."""
        if self.cfg_dropout <= 0.0:
            return False
        if rng is None:
            rng = np.random.default_rng(derive_seed(self.seed, "cfg", int(epoch), key))
        return bool(rng.random() < self.cfg_dropout)

    def __call__(self, sample: Sample, *, train: bool = True, rng: Optional[np.random.Generator] = None,
                 epoch: int = 0, is_prior: Optional[bool] = None,
                 bucket_sizes: Optional[Sequence[tuple[int, int]]] = None) -> SDSample:
        if sample.inputs:
            raise SampleError(f"{len(sample.inputs)} input image(s): Stable Diffusion learns text-to-image",
                              key=sample.key, url=sample.url, field="input_1",
                              fix="train SD on samples without input images (data_prep.dreambooth writes those)")
        dropped = train and self.drops_condition(sample.key, rng, epoch)
        img = to_rgb(sample.output)
        height, width = self.target_size(img.width, img.height, self._check_buckets(bucket_sizes))
        crop, corner = cover_crop(img, height, width)
        prior = sample.is_prior if is_prior is None else bool(is_prior)
        return SDSample(key=sample.key, prompt=EMPTY_PROMPT if dropped else sample.instruction.strip(),
                        output_image=image_to_tensor(crop), original_size=(img.height, img.width),
                        crop_top_left=corner, task=sample.task,
                        loss_weight=self.prior_loss_weight if prior else 1.0, is_prior=prior, cfg_dropped=dropped,
                        meta=dict(sample.meta))

    def collate(self, items: Sequence[SDSample]) -> dict[str, Any]:
        """One batch of one output size: ``output_images`` (B, 3, H, W), ``prompts``, SDXL's
        ``original_sizes`` / ``crop_top_left`` / ``target_sizes`` (B, 2) long, ``loss_weight`` (B,),
        ``is_prior``, ``cfg_dropped`` (B,) bool, ``keys``, ``tasks``, ``output_size`` (H, W)."""
        if not items:
            raise ValueError("cannot collate an empty batch")
        sizes = {it.output_size for it in items}
        if len(sizes) != 1:
            raise ValueError(f"a batch must share one output size; got {sorted(sizes)}: bucket by size first")
        size = sizes.pop()
        return {
            "output_images": torch.stack([it.output_image for it in items]),
            "prompts": [it.prompt for it in items],
            "original_sizes": torch.tensor([it.original_size for it in items], dtype=torch.long),
            "crop_top_left": torch.tensor([it.crop_top_left for it in items], dtype=torch.long),
            "target_sizes": torch.tensor([size] * len(items), dtype=torch.long),
            "loss_weight": torch.tensor([it.loss_weight for it in items], dtype=torch.float32),
            "is_prior": torch.tensor([it.is_prior for it in items], dtype=torch.bool),
            "cfg_dropped": torch.tensor([it.cfg_dropped for it in items], dtype=torch.bool),
            "keys": [it.key for it in items],
            "tasks": [it.task for it in items],
            "output_size": size,
        }
