"""Depth controllability: RMSE between a depth model's prediction on the output and the condition.

Depth estimators such as DPT and Depth Anything predict *relative* inverse depth
(disparity: near is large) with an unknown scale and shift, and a depth condition image
is such a map rendered to 8 bits (near is bright). So both are put on one scale
before the RMSE:

* ``minmax`` (default): the prediction, resized bilinearly to the condition's size,
  and the condition's grayscale are each min-max normalised to [0, 1] per image;
* ``scale-shift``: the prediction is aligned to the condition (grayscale / 255) with
  the least-squares scale and shift, as MiDaS-style evaluations align relative depth.

The RMSE is reported on the 0-255 scale of the condition image. A constant map
normalises to zeros. ``invert=True`` flips a condition stored with far = bright.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .models import LoadedModel

ALIGNMENTS = ("minmax", "scale-shift")


@torch.no_grad()
def predict_depth(loaded: LoadedModel, images: Sequence[Image.Image], batch_size: int = 8) -> list[np.ndarray]:
    """Raw ``predicted_depth`` maps (at the model's resolution), one float64 array per image.

    Images are batched only with others of the same size, since a processor that keeps the
    aspect ratio gives differently shaped inputs for different sizes.
    """
    device = next(loaded.model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        by_size.setdefault(img.size, []).append(i)
    for idx in by_size.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            pixels = loaded.image_processor(images=[images[i].convert("RGB") for i in chunk],
                                            return_tensors="pt")["pixel_values"].to(device)
            pred = loaded.model(pixel_values=pixels).predicted_depth.float().cpu()
            for i, p in zip(chunk, pred):
                out[i] = p.numpy().astype(np.float64)
    return out  # type: ignore[return-value]


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (align_corners=False) of an (h, w) map to PIL-style (width, height)."""
    t = torch.from_numpy(np.asarray(depth, np.float64))[None, None]
    t = torch.nn.functional.interpolate(t, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def depth_rmse(predicted: np.ndarray, condition: Image.Image, align: str = "minmax", invert: bool = False) -> float:
    """RMSE (0-255 scale) of a raw depth prediction against a depth condition image."""
    if align not in ALIGNMENTS:
        raise ValueError(f"depth alignment must be one of {ALIGNMENTS}, got {align!r}")
    cond = np.asarray(condition.convert("L"), np.float64) / 255.0
    if invert:
        cond = 1.0 - cond
    pred = resize_depth(predicted, condition.size)
    if align == "minmax":
        diff = _minmax(pred) - _minmax(cond)
    else:
        design = np.stack([pred.ravel(), np.ones(pred.size)], axis=1)
        coef, *_ = np.linalg.lstsq(design, cond.ravel(), rcond=None)
        diff = (design @ coef).reshape(cond.shape) - cond
    return float(np.sqrt(np.mean(diff * diff)) * 255.0)
