"""Helpers shared by the converter tests: tiny images in real formats and shard read-back
through deft_omni.data (a uniquely named module; several test folders have a conftest.py)."""

from __future__ import annotations

import io
import json
import os
import tarfile

from PIL import Image

from deft_omni.core.atomic import TMP_MARK
from deft_omni.data import ShardSet, build_train_loader, parse_sample, read_manifest


def colour_image(size_wh=(40, 32), colour=(200, 40, 40), mode="RGB"):
    img = Image.new(mode, size_wh, colour if mode == "RGB" else 255)
    # A second colour block so that images are not flat (JPEG of a flat image is trivial).
    block = Image.new(mode, (max(1, size_wh[0] // 3), max(1, size_wh[1] // 3)),
                      tuple(255 - c for c in colour) if mode == "RGB" else 0)
    img.paste(block, (size_wh[0] // 4, size_wh[1] // 4))
    return img


def save_image(path, size_wh=(40, 32), colour=(200, 40, 40), fmt=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = colour_image(size_wh, colour)
    img.save(path, format=fmt, **({"quality": 90} if str(path).endswith((".jpg", ".jpeg")) else {}), **kwargs)
    return str(path)


def save_mask(path, size_wh=(40, 32), box=None):
    """A binary PNG mask (0 / 255) with a foreground rectangle."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mask = Image.new("L", size_wh, 0)
    w, h = size_wh
    box = box or (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    mask.paste(255, box)
    mask.save(path)
    return str(path)


def corrupt_jpeg(path):
    """A file named .jpg holding the first bytes of a JPEG: opens, fails to decode."""
    buf = io.BytesIO()
    colour_image((64, 64)).save(buf, format="JPEG", quality=90)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(buf.getvalue()[:200])
    return str(path)


def read_samples(directory):
    """Every sample of a shard folder, in shard order, parsed by deft_omni's schema."""
    shards = ShardSet.resolve(str(directory))
    out = []
    for url in shards.urls:
        groups: dict[str, dict] = {}
        order = []
        with tarfile.open(url) as tar:
            for member in tar:
                base = os.path.basename(member.name)
                key_dir = os.path.dirname(member.name)
                key, _, ext = base.partition(".")
                key = f"{key_dir}/{key}" if key_dir else key
                if key not in groups:
                    groups[key] = {"__key__": key, "__url__": url}
                    order.append(key)
                groups[key][ext] = tar.extractfile(member).read()
        out.extend(parse_sample(groups[k]) for k in order)
    return out


def manifest(directory):
    return read_manifest(str(directory))


def loader_batches(directory, processor, n_batches=None, batch_size=1):
    """One epoch through build_train_loader (strict: any sample the loader rejects fails)."""
    total = ShardSet.resolve(str(directory)).total
    n = n_batches or max(1, total // batch_size)
    loader = build_train_loader([str(directory)], processor, batch_size=batch_size, num_workers=0,
                                epoch_length_batches=n, shuffle_buffer=0, strict=True, seed=0)
    batches = list(loader)
    assert len(batches) == n
    assert loader.stats["skipped"] == 0
    return batches


def skipped_keys(directory):
    return {rec["key"]: rec["reason"] for rec in manifest(directory)["skipped"]}


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
    return str(path)


def temporaries(folder):
    """Names in ``folder`` that look like a writer's temporary (today's or an older scheme's)."""
    return sorted(n for n in os.listdir(folder) if TMP_MARK in n or ".tmp-" in n or ".old-" in n)


def jsonl_set(tmp_path, n=6, size=(40, 32)):
    """An OmniGen JSONL of n text-to-image lines and its image folder."""
    imgs = tmp_path / "imgs"
    for i in range(n):
        save_image(imgs / f"{i}.jpg", size, (20 * i % 255, 100, 50))
    path = tmp_path / "t.jsonl"
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"task_type": "t2i", "instruction": f"image {i}", "input_images": [],
                                 "output_image": f"{i}.jpg"}) + "\n")
    return str(path), str(imgs)


def run_jsonl(jsonl, imgs, out, *extra):
    from data_prep import omnigen_jsonl

    return omnigen_jsonl.main(["--jsonl", jsonl, "--images", imgs, "--out", str(out), "--quiet", *extra])


def add_bom(path):
    """Put the UTF-8 byte-order mark that Windows editors write in front of a text file."""
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
