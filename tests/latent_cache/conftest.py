"""A small pixel shard set whose images need every kind of fitting, and its encodings."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from deft_omni.data import ShardSetWriter, make_sample
from deft_omni.latent_cache import EncodeSettings, encode_latents


def _image(w: int, h: int, seed: int) -> Image.Image:
    img = Image.new("RGB", (w, h), ((seed * 53) % 256, 120, (seed * 97) % 256))
    ImageDraw.Draw(img).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(250, (seed * 31) % 256, 20))
    return img


def _mask(w: int, h: int) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, (0, 0, w // 2, h))
    return mask


# (key, output (w, h), input sizes, mask, format): a plain image, one that is resized and cropped
# (300x180 at max side 64 -> 64x38 -> 64x32; its thumbnail is 128 px), two inputs of which one is
# resized, a mask, an image too small to train (skipped), a tall one, and a JPEG.
SAMPLES = [("plain", (32, 32), [], False, "png"),
           ("resized", (300, 180), [(48, 32)], False, "png"),
           ("two_inputs", (48, 32), [(32, 32), (80, 80)], True, "png"),
           ("tiny", (8, 8), [], False, "png"),
           ("tall", (32, 48), [], False, "png"),
           ("jpeg", (64, 64), [(32, 32)], False, "jpg")]


@pytest.fixture(autouse=True)
def _quiet_threads(one_thread, single_process):
    yield


@pytest.fixture(scope="session")
def pixel_set(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("latent_cache") / "pixels")
    with ShardSetWriter(folder, source="test", maxcount=3, options={"split": "train"}) as writer:
        for i, (key, size, inputs, mask, fmt) in enumerate(SAMPLES):
            tags = " ".join(f"<img><|image_{k}|></img>" for k in range(1, len(inputs) + 1))
            writer.write(make_sample(key, f"{tags} picture {i}".strip(), _image(*size, i),
                                     [_image(w, h, 10 * i + k) for k, (w, h) in enumerate(inputs)],
                                     image_format=fmt, output_mask=_mask(*size) if mask else None))
    return folder


def encode(pixel_set: str, out: str, **kw) -> dict:
    settings = dict(model="tiny", input=pixel_set, output=out, max_image_side=64, quiet=True)
    settings.update(kw)
    return encode_latents(EncodeSettings(**settings), log=lambda m: None)
