"""Image reading for the converters: decode-checked, EXIF-rotated, downscaled, never re-encoded
without need.

:func:`prepare_image` gives what ``make_sample`` stores: the original bytes when they already
are a fully decodable RGB/L file of the output format within ``--max-side`` and upright (no
quality loss), else a decoded, EXIF-rotated, downscaled RGB image.  :func:`load_rgb` and
:func:`load_mask` decode fully.  Per-item failures raise :class:`ImageError`, which the
converters turn into a recorded skip.
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from deft_omni.data.images import LFS_FIX, is_lfs_pointer, lfs_pointer_reason, to_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_PIL_FORMAT = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
MIN_SIDE = 16  # one OmniGen token (VAE 8x times 2x2 patches); the processor drops smaller images


class ImageError(Exception):
    """An unreadable/unusable image; converters turn it into a skip."""


def read_bytes(src: str | os.PathLike | bytes, what: str = "image") -> bytes:
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    try:
        with open(src, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exn:
        raise ImageError(f"{what} file not found: {os.fspath(src)}") from exn
    except OSError as exn:
        raise ImageError(f"cannot read {what}: {os.fspath(src)} ({exn.strerror or exn})") from exn


def _describe(src: Any) -> str:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else "image bytes"


def open_image(data: bytes, src: Any, what: str = "image") -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exn:
        if is_lfs_pointer(data):
            raise ImageError(f"git-LFS pointer, not an {what}: {_describe(src)} is {lfs_pointer_reason(data)}; "
                             f"{LFS_FIX}") from exn
        raise ImageError(f"not a readable {what}: {_describe(src)}") from exn
    except Exception as exn:  # noqa: BLE001 - PIL raises many types (DecompressionBombError, ...)
        raise ImageError(f"corrupt {what}: {_describe(src)} ({exn})") from exn


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - broken EXIF blocks are common; ignore them
        return 1


def _fitted_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def decode_image(img: Image.Image, src: Any, max_side: int | None, *, min_scale_side: int | None = None,
                 what: str = "image") -> Image.Image:
    """Load (with JPEG draft decoding when shrinking), EXIF-rotate, downscale."""
    try:
        if max_side and img.format == "JPEG" and max(img.size) > max_side:
            # DCT-domain scaling (1/2, 1/4, 1/8) to at least the target size: far faster
            # than decoding 8k scene photos in full.  Uniform scale: orientation-proof.
            want = _fitted_size(img.size, max_side if min_scale_side is None else min_scale_side)
            img.draft("RGB", want)
        img.load()
        img = ImageOps.exif_transpose(img) if _orientation(img) != 1 else img
    except ImageError:
        raise
    except Exception as exn:  # noqa: BLE001 - truncated / corrupt data
        raise ImageError(f"corrupt {what}: {_describe(src)} ({exn})") from exn
    return img


def shrink(img: Image.Image, max_side: int | None) -> Image.Image:
    size = _fitted_size(img.size, max_side)
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def load_rgb(src: str | os.PathLike | bytes, max_side: int | None = None) -> Image.Image:
    """A fully decoded RGB image (alpha composited on white), longer side <= max_side."""
    data = read_bytes(src)
    img = decode_image(open_image(data, src), src, max_side)
    return shrink(to_rgb(img), max_side)


def load_mask(src: str | os.PathLike | bytes, size: tuple[int, int] | None = None) -> Image.Image:
    """A mask as mode 'L' (0 background .. 255 foreground; 0/1 label masks are stretched),
    resized bilinearly to ``size`` when given."""
    data = read_bytes(src, "mask")
    img = decode_image(open_image(data, src, "mask"), src, None, what="mask")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        mask = img.convert("RGBA").getchannel("A")
        if mask.getextrema() == (255, 255):  # Opaque: the mask is in the colour channels.
            mask = img.convert("L")
    else:
        mask = img.convert("L")
    if mask.getextrema()[1] == 1:  # 0/1 label masks
        mask = mask.point(lambda v: 255 if v else 0)
    if size is not None and mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.Resampling.BILINEAR)
    return mask


def prepare_mask(src: str | os.PathLike | bytes, stored_size: tuple[int, int]) -> Image.Image:
    """The mask of an output image stored at ``stored_size``, resized to it.  The mask must have
    its image's shape (the image's size, or that size scaled): ImageError otherwise."""
    mask = load_mask(src)
    (mw, mh), (w, h) = mask.size, stored_size
    if abs(mh * w / mw - h) > 1 or abs(mw * h / mh - w) > 1:
        raise ImageError(f"mask size mismatch: {_describe(src)} is {mw}x{mh} px, not the shape of its image "
                         f"(stored at {w}x{h} px); a mask must be its image's size")
    return mask if mask.size == (w, h) else mask.resize((w, h), Image.Resampling.BILINEAR)


def find_image(folder: str, stem: str) -> str | None:
    """``<folder>/<stem>.<image suffix>`` (png first), or None."""
    for suffix in (".png", *(s for s in IMAGE_SUFFIXES if s != ".png")):
        path = os.path.join(folder, stem + suffix)
        if os.path.isfile(path):
            return path
    return None


def check_min_side(size: tuple[int, int], what: Any) -> None:
    """ImageError when a side is below 16 px: the training processor could not use it."""
    if min(size) < MIN_SIDE:
        raise ImageError(f"image too small: {_describe(what)} is "
                         f"{size[0]}x{size[1]} px as stored; OmniGen needs sides of at least {MIN_SIDE} px")


def prepare_image(src: str | os.PathLike | bytes, *, max_side: int | None, image_format: str,
                  reencode: bool = False) -> tuple[bytes | Image.Image, tuple[int, int]]:
    """An image ready for ``make_sample``: the original bytes when they already are a fully
    decodable RGB/L ``image_format`` file within ``max_side`` and upright (no quality loss,
    no re-encode), else a decoded, EXIF-rotated, downscaled RGB PIL image.  Returns
    (image, (width, height) as stored).  Raises :class:`ImageError`."""
    data = read_bytes(src)
    img = open_image(data, src)
    fmt = _PIL_FORMAT[image_format.lower()]
    passthrough = (not reencode and img.format == fmt and img.mode in ("RGB", "L")
                   and (not max_side or max(img.size) <= max_side) and _orientation(img) == 1)
    if passthrough:
        decode_image(img, src, None)  # Full decode: truncated files fail here, not at train time.
        check_min_side(img.size, src)
        return data, img.size
    out = shrink(to_rgb(decode_image(img, src, max_side)), max_side)
    check_min_side(out.size, src)
    return out, out.size


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def list_images(directory: str) -> list[str]:
    """Image file names in a folder, sorted (hidden files and non-images ignored)."""
    try:
        return sorted(n for n in os.listdir(directory) if is_image_file(n)
                      and os.path.isfile(os.path.join(directory, n)))
    except FileNotFoundError:
        return []

