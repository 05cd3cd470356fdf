"""data_prep.images: pass-through, resize, EXIF, alpha, masks and the errors of unusable files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import images
from deft_omni.data.schema import make_sample

from ._prep_helpers import corrupt_jpeg, save_image


def test_prepare_image_passthrough_resize_exif_alpha(tmp_path):
    small = save_image(tmp_path / "s.jpg", (40, 30))
    data, size = images.prepare_image(small, max_side=64, image_format="jpg")
    assert data == Path(small).read_bytes() and size == (40, 30)
    big = save_image(tmp_path / "b.jpg", (800, 400))
    img, size = images.prepare_image(big, max_side=64, image_format="jpg")
    assert isinstance(img, Image.Image) and size == (64, 32) and img.mode == "RGB"
    # A JPEG asked for as PNG: not passed through, but re-encoded, losslessly, as PNG.
    png_from_jpg, _ = images.prepare_image(small, max_side=64, image_format="png")
    stored = make_sample("k", "x", png_from_jpg, image_format="png")["output.png"]
    assert stored[:8] == b"\x89PNG\r\n\x1a\n" and stored != Path(small).read_bytes()
    with Image.open(io.BytesIO(stored)) as back, Image.open(small) as source:
        assert back.format == "PNG" and np.array_equal(np.asarray(back), np.asarray(source.convert("RGB")))
    # EXIF orientation 6 (rotate 90 CW): stored 40x30, shown 30x40.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "r.jpg"
    Image.new("RGB", (40, 30), (10, 200, 10)).save(rotated, exif=exif)
    img, size = images.prepare_image(str(rotated), max_side=64, image_format="jpg")
    assert size == (30, 40)
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    img = images.load_rgb(buf.getvalue())
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(images.ImageError, match="corrupt image"):
        images.prepare_image(corrupt_jpeg(tmp_path / "c.jpg"), max_side=64, image_format="jpg")
    with pytest.raises(images.ImageError, match="not a readable image"):
        images.load_rgb(b"plain text, not an image")
    with pytest.raises(images.ImageError, match="image file not found"):
        images.load_rgb(tmp_path / "missing.png")


def test_masks(tmp_path):
    Image.new("1", (8, 8), 1).save(tmp_path / "m1.png")
    assert images.load_mask(tmp_path / "m1.png").getextrema() == (255, 255)
    Image.new("L", (8, 8), 1).save(tmp_path / "m01.png")
    assert images.load_mask(tmp_path / "m01.png", size=(4, 4)).size == (4, 4)
    assert images.load_mask(tmp_path / "m01.png").getextrema() == (255, 255)
