"""The embedded demo data set: coloured shapes, small enough to learn on a CPU.

Two kinds of samples, both written through :mod:`deft_omni.data.schema`:

* text-to-image: "a red circle on a blue background";
* image-conditioned: input = a shape in one colour, output = the same shape, place and
  background in another; instruction "<img><|image_1|></img> the same shape in green".

Images are 32x32 or 48x48 by default (latents 4x4 / 6x6), so batches come in two
output sizes and exercise bucketing.  Every sample draws from its own generator seeded by
(seed, split, index): the data are a pure function of the options, written once into a
temporary directory that is renamed into place (atomic for concurrent ranks), and reused
as long as the options match.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..core.atomic import atomic_dir, clean_stale, write_json
from .schema import ShardSetWriter, make_sample, read_manifest

SOURCE = "deft_omni.synthetic"
GENERATOR_VERSION = 1
SHAPES = ("circle", "square", "triangle")
SHAPE_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
                 "yellow": (235, 210, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128),
               "blue": (40, 80, 220)}
SPLITS = ("train", "val")
_STAMP = "synthetic.json"


def draw_shape(shape: str, colour: str, background: str, size: tuple[int, int],
               centre: tuple[float, float], radius: float) -> Image.Image:
    """One RGB image (size = (H, W)) with a filled shape; centre/radius in pixels."""
    height, width = size
    img = Image.new("RGB", (width, height), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    cx, cy = centre
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    fill = SHAPE_COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def synthetic_sample(index: int, split: str, seed: int, image_sizes: Sequence[tuple[int, int]],
                     edit_fraction: float) -> dict[str, Any]:
    """The sample dict (for the shard writer) of one index; a pure function of its arguments."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    size = tuple(int(v) for v in image_sizes[int(rng.integers(len(image_sizes)))])
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    colours = [c for c in SHAPE_COLOURS if c != background]
    colour = colours[int(rng.integers(len(colours)))]
    side = min(size)
    radius = float(side * rng.uniform(0.22, 0.32))
    jitter = side / 8
    centre = (size[1] / 2 + float(rng.uniform(-jitter, jitter)), size[0] / 2 + float(rng.uniform(-jitter, jitter)))
    key = f"syn_{split}_{index:06d}"
    meta = {"shape": shape, "colour": colour, "background": background, "size": list(size)}
    if rng.random() < edit_fraction:
        source = [c for c in colours if c != colour]
        src_colour = source[int(rng.integers(len(source)))]
        meta["input_colour"] = src_colour
        return make_sample(
            key, f"<img><|image_1|></img> the same shape in {colour}",
            draw_shape(shape, colour, background, size, centre, radius),
            [draw_shape(shape, src_colour, background, size, centre, radius)],
            task="image_edit", meta=meta)
    return make_sample(key, f"a {colour} {shape} on a {background} background",
                       draw_shape(shape, colour, background, size, centre, radius),
                       task="text_to_image", meta=meta)


def _options(n_train, n_val, image_sizes, seed, maxcount, edit_fraction) -> dict[str, Any]:
    return {"n_train": int(n_train), "n_val": int(n_val), "image_sizes": [list(map(int, s)) for s in image_sizes],
            "seed": int(seed), "maxcount": int(maxcount), "edit_fraction": float(edit_fraction),
            "generator_version": GENERATOR_VERSION}


def _existing_options(out_dir: str, source: str = SOURCE) -> dict[str, Any] | None:
    """Options of a complete generated set of ``source`` in out_dir, None if absent; raises if not ours."""
    stamp = os.path.join(out_dir, _STAMP)
    if not os.path.exists(out_dir):
        return None
    if not os.path.isfile(stamp):
        if os.listdir(out_dir):
            raise FileExistsError(f"{out_dir!r} exists and is not a deft_omni synthetic data set ({source}); "
                                  "pass another out_dir")
        return None
    with open(stamp, encoding="utf-8") as fh:
        info = json.load(fh)
    if info.get("source") != source:
        raise FileExistsError(f"{out_dir!r} holds {info.get('source')!r}, not the {source} data set")
    for split in SPLITS:  # Also proves the manifests are intact.
        read_manifest(os.path.join(out_dir, split))
    return info["options"]


class _SameSetInstalled(Exception):
    """Another process (another rank) installed the identical set while this one was writing."""


def write_generated_set(out_dir: str, source: str, options: dict[str, Any], counts: dict[str, int],
                        make: Callable[[int, str], dict[str, Any]], maxcount: int) -> dict[str, str]:
    """Write (or reuse, when ``options`` match) ``out_dir/{train,val}`` of ``make(index, split)``.

    The set is a pure function of ``options``: it is written into a staging folder
    (deft_omni.core.atomic) and renamed into place, so concurrent ranks never see half a set and
    the first one to finish wins; the others find it there and keep it.
    """
    out_dir = os.path.abspath(out_dir)
    paths = {split: os.path.join(out_dir, split) for split in SPLITS}
    existing = _existing_options(out_dir, source)
    if existing == options:
        return paths
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    clean_stale(parent, own=False)  # Sets half-written by killed processes.
    # Replace only a set of other options (or an empty folder): a rename onto a complete set
    # fails instead, which is how a rank that lost the race finds out.
    replace = existing is not None or os.path.isdir(out_dir)
    try:
        with atomic_dir(out_dir, replace=replace) as staging:
            for split in SPLITS:
                with ShardSetWriter(os.path.join(staging, split), source=source, prefix=split,
                                    maxcount=maxcount, options={**options, "split": split}) as writer:
                    for i in range(counts[split]):
                        writer.write(make(i, split))
            write_json(os.path.join(staging, _STAMP), {"source": source, "options": options}, indent=1,
                       sort_keys=True)
            if _existing_options(out_dir, source) == options:
                raise _SameSetInstalled
    except _SameSetInstalled:
        pass
    except OSError:
        if _existing_options(out_dir, source) != options:
            raise
    return paths


def make_synthetic_shards(out_dir: str, n_train: int = 512, n_val: int = 64,
                          image_sizes: Sequence[tuple[int, int]] = ((32, 32), (48, 48)), seed: int = 0,
                          maxcount: int = 64, edit_fraction: float = 0.5) -> dict[str, str]:
    """Write (or reuse) ``out_dir/{train,val}/`` shards + manifests; returns the two paths.

    ``image_sizes``: (H, W) pairs, multiples of 16.  ``maxcount``: samples per shard (keep
    it small enough for ranks x workers shards).
    """
    bad = [s for s in image_sizes if s[0] % 16 or s[1] % 16 or min(s) <= 0]
    if bad or not image_sizes:
        raise ValueError(f"image_sizes must be non-empty (H, W) multiples of 16, got {list(image_sizes)}")
    if n_train < 1 or n_val < 0:
        raise ValueError("need n_train >= 1 and n_val >= 0")
    options = _options(n_train, n_val, image_sizes, seed, maxcount, edit_fraction)
    return write_generated_set(out_dir, SOURCE, options, {"train": n_train, "val": n_val},
                               lambda i, split: synthetic_sample(i, split, seed, image_sizes, edit_fraction),
                               maxcount)
