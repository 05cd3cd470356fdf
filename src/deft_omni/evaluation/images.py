"""Reading images for evaluation, with errors that name the file."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class EvaluationInputError(ValueError):
    """Bad evaluation input: the message names the file or flag and says how to fix it."""


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def load_rgb(path: str, what: str = "image") -> Image.Image:
    """The image at ``path`` as RGB (alpha dropped, palettes expanded)."""
    if not os.path.isfile(path):
        raise EvaluationInputError(f"{what} not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exn:
        raise EvaluationInputError(f"{what} {path} is not a readable image ({exn})") from exn


def to_gray_uint8(img: Image.Image) -> np.ndarray:
    """ITU-R 601 luma as uint8 (PIL's "L"), the grayscale OpenCV's cvtColor also gives."""
    return np.asarray(img.convert("L"), dtype=np.uint8)


def resize_to(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to (width, height) with bicubic filtering; a no-op when the size already matches."""
    return img if img.size == tuple(size) else img.resize(tuple(size), Image.BICUBIC)
