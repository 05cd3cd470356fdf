"""Image bytes in shards: encoding for the writer, decoding for the reader, with errors that name
the sample and the field, and say what is wrong with the file (a git-LFS pointer, for one)."""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

from PIL import Image

from .errors import MaskWarning, SampleError

# PIL format names, by file extension, for encoding.
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
LFS_FIX = "fetch the real file with `git lfs pull` in the repository it came from, then run again"


def is_lfs_pointer(data: bytes) -> bool:
    """True for the small text file git LFS leaves in place of a file it has not downloaded."""
    return bytes(data[:len(LFS_POINTER_PREFIX)]) == LFS_POINTER_PREFIX


def lfs_pointer_reason(data: bytes) -> str:
    """'a git-LFS pointer, not the file (the real one has N bytes)' for pointer ``data``."""
    m = re.search(rb"^size (\d+)\s*$", bytes(data[:1024]), re.MULTILINE)
    real = f" (the real one has {int(m.group(1)):,} bytes)" if m else ""
    return f"a git-LFS pointer, not the file{real}: git LFS never downloaded it"


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (transparent pixels hold junk colours)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def encode_image(image: Any, image_format: str, key: str, name: str) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        if is_lfs_pointer(data):
            raise SampleError(f"the image bytes are {lfs_pointer_reason(data)}", key=key, field=name, fix=LFS_FIX)
        try:  # Cheap header check: refuse mislabelled bytes here rather than at train time.
            with Image.open(io.BytesIO(data)) as img:
                actual = (img.format or "").upper()
        except Exception as exn:  # noqa: BLE001 - any decoder failure means unusable bytes
            raise SampleError(f"bytes are not a readable image ({exn})", key=key, field=name) from exn
        if actual != PIL_FORMATS[image_format]:
            raise SampleError(f"bytes are {actual or 'unknown'} but image_format is {image_format!r}",
                              key=key, field=name, fix="pass matching image_format or a PIL image")
        return data
    if isinstance(image, Image.Image):
        img = image
        # Keep alpha where the format holds it: the processor composites it on white,
        # which a plain convert("RGB") here would not (transparent pixels keep junk colours).
        if image_format in ("jpg", "jpeg"):
            img = to_rgb(img)
        elif img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
        buf = io.BytesIO()
        kwargs = {"quality": 95} if image_format in ("jpg", "jpeg", "webp") else {}
        img.save(buf, format=PIL_FORMATS[image_format], **kwargs)
        return buf.getvalue()
    raise SampleError(f"expected a PIL image or encoded bytes, got {type(image).__name__}",
                      key=key, field=name)


def decode_image(value: Any, key: str, url: str | None, name: str, *, lazy: bool = False) -> Image.Image:
    """A PIL image of ``value``'s bytes, decoded now (so that a truncated file fails here, with a
    name) unless ``lazy``: then only its header is read, and the pixels on first use."""
    if isinstance(value, Image.Image):
        return value
    if not isinstance(value, (bytes, bytearray)):
        raise SampleError(f"expected image bytes, got {type(value).__name__}", key=key, url=url, field=name)
    if is_lfs_pointer(value):
        raise SampleError(f"the image is {lfs_pointer_reason(value)}", key=key, url=url, field=name, fix=LFS_FIX)
    try:
        img = Image.open(io.BytesIO(value))
        if not lazy:
            img.load()
    except Exception as exn:  # noqa: BLE001 - PIL raises many unrelated types
        raise SampleError(f"cannot decode image ({exn})", key=key, url=url, field=name,
                          fix="re-encode the image or drop the sample in the converter") from exn
    return img


def image_size(image: Any) -> tuple[int, int]:
    """(width, height) of a PIL image or of encoded bytes (read from the header only)."""
    if isinstance(image, Image.Image):
        return image.size
    with Image.open(io.BytesIO(image)) as img:
        return img.size


def check_mask(mask: Image.Image, output_size: tuple[int, int], *, key: str | None, url: str | None = None,
               name: str = "output_mask") -> Image.Image:
    """The output mask as mode 'L' (0 background .. 255 foreground), or a SampleError when it is
    not single-channel, not the output image's size, or empty; a full one warns (MaskWarning)."""
    if mask.mode not in ("L", "1"):
        raise SampleError(f"the mask has mode {mask.mode!r}; it must be single-channel", key=key, url=url,
                          field=name, fix="store a grayscale (mode 'L') PNG: 0 background .. 255 foreground")
    mask = mask.convert("L") if mask.mode == "1" else mask
    if mask.size != tuple(output_size):
        raise SampleError(f"the mask is {mask.size[0]}x{mask.size[1]} px but the output image is "
                          f"{output_size[0]}x{output_size[1]} px", key=key, url=url, field=name,
                          fix="store the mask at the output image's size")
    low, high = mask.getextrema()
    if high == 0:
        raise SampleError("the mask is empty (no foreground pixel): a masked loss would have nothing to learn",
                          key=key, url=url, field=name, fix="check the mask file, or store the sample without one")
    if low == 255:
        where = f" in shard {url!r}" if url else ""
        warnings.warn(f"sample {key!r}{where}: the output mask is full (every pixel foreground), so it weights "
                      "the loss as no mask would", MaskWarning, stacklevel=3)
    return mask


def encode_mask(mask: Any, output_size: tuple[int, int], key: str) -> bytes:
    """PNG bytes of a checked output mask (a PIL image or PNG bytes)."""
    if isinstance(mask, (bytes, bytearray)):
        mask = decode_image(mask, key, None, "output_mask")
    elif not isinstance(mask, Image.Image):
        raise SampleError(f"expected a PIL image or PNG bytes, got {type(mask).__name__}", key=key,
                          field="output_mask")
    buf = io.BytesIO()
    check_mask(mask, output_size, key=key).save(buf, format="PNG")
    return buf.getvalue()
