"""How an image is fitted for training: downscaled (never upscaled) so the longer side is at most
``max_image_side`` keeping the aspect ratio, then centre-cropped to the next lower multiple of
``size_multiple``; with ``bucket_sizes``, scaled to cover the bucket of the closest aspect ratio,
then centre-cropped to it.  The processor, the latent encoder and the data summary share it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from .images import to_rgb


def _centre_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    left, top = (img.width - width) // 2, (img.height - height) // 2
    return img.crop((left, top, left + width, top + height))


def fit_geometry(width: int, height: int, max_side: int, multiple: int = 16,
                 bucket_sizes: Sequence[tuple[int, int]] | None = None
                 ) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """(size to resize to or None, (crop width, crop height)) of :func:`fit_image`, from sizes only."""
    w, h = width, height
    if bucket_sizes:
        aspect = math.log(w / h)
        bh, bw = min(bucket_sizes, key=lambda s: (abs(math.log(s[1] / s[0]) - aspect), -s[0] * s[1]))
        scale = max(bw / w, bh / h)
        size = (max(bw, math.ceil(w * scale)), max(bh, math.ceil(h * scale)))
        return (size if size != (w, h) else None), (bw, bh)
    resize = None
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        resize = (max(1, round(w * scale)), max(1, round(h * scale)))
        w, h = resize
    cw, ch = (w // multiple) * multiple, (h // multiple) * multiple
    if cw == 0 or ch == 0:
        raise ValueError(f"image of {w}x{h} px (after fitting to max side {max_side}) has a side "
                         f"below {multiple} px")
    return resize, (cw, ch)


def fit_image(img: Image.Image, max_side: int, multiple: int = 16,
              bucket_sizes: Sequence[tuple[int, int]] | None = None, *, mask: bool = False) -> Image.Image:
    """Resize/crop as described in the module docstring; returns an RGB image (``mask``: the same
    geometry for a single-channel mask, resized with box averaging so soft edges stay soft)."""
    img = img.convert("L") if mask else to_rgb(img)
    resize, (cw, ch) = fit_geometry(img.width, img.height, max_side, multiple, bucket_sizes)
    if resize is not None:
        img = img.resize(resize, Image.Resampling.BOX if mask else Image.Resampling.BICUBIC)
    return _centre_crop(img, cw, ch) if (cw, ch) != img.size else img
