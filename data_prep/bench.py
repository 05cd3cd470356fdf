"""Throughput of the converters on generated data in each real layout (images/s).

    python -m data_prep.bench [--n 300] [--side 256] [--workers 1 2] [--dir /tmp/prep-bench]

Writes small JPEG/PNG sets (``--n`` images of ``--side`` px; InsDet scenes at 2048x1536),
converts each with ``--workers`` 1 and 2, and prints images written per second (the
number the converters' summary prints).  'reencode' rows force decode + resize + encode
of every image (``--max-side side/2 --reencode``); the others store already-fitting
JPEGs unchanged after a full decode check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from typing import Any

from PIL import Image


def _img(path: str, size: tuple[int, int], seed: int, fmt: str | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    noise = Image.effect_noise(size, 40 + seed % 30).convert("RGB")
    tint = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    Image.blend(noise, tint, 0.6).save(path, format=fmt, quality=90)


def make_sets(base: str, n: int, side: int) -> dict[str, Any]:
    sz = (side, side)
    os.makedirs(base, exist_ok=True)
    # OmniGen JSONL
    j = os.path.join(base, "jsonl")
    with open(os.path.join(base, "train.jsonl"), "w") as fh:
        for i in range(n):
            _img(os.path.join(j, f"{i}.jpg"), sz, i)
            fh.write(json.dumps({"task_type": "t2i", "instruction": f"image {i}", "input_images": [],
                                 "output_image": f"{i}.jpg"}) + "\n")
    # InsDet objects (views + masks) and scenes
    ins = os.path.join(base, "InsDet")
    per = 24
    mask = Image.new("L", sz, 0)
    mask.paste(255, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    for o in range(max(1, n // per)):
        obj = os.path.join(ins, "Objects", f"{o:03d}_thing_{o}")
        os.makedirs(os.path.join(obj, "masks"), exist_ok=True)
        for v in range(per):
            _img(os.path.join(obj, "images", f"{v + 1:03d}.jpg"), sz, o * per + v)
            mask.save(os.path.join(obj, "masks", f"{v + 1:03d}.png"))
    for s in range(max(1, n // 10)):
        _img(os.path.join(ins, "Scenes", "easy", f"room_{s:02d}", "rgb_000.jpg"), (2048, 1536), s)
    # COLMAP text model
    cm = os.path.join(base, "colmap_scene")
    os.makedirs(os.path.join(cm, "sparse", "0"), exist_ok=True)
    with open(os.path.join(cm, "sparse", "0", "cameras.txt"), "w") as fh:
        fh.write(f"1 SIMPLE_RADIAL {side} {side} {side * 1.2} {side / 2} {side / 2} 0.01\n")
    with open(os.path.join(cm, "sparse", "0", "images.txt"), "w") as fh:
        for i in range(n):
            _img(os.path.join(cm, "images", f"{i:04d}.jpg"), sz, i)
            fh.write(f"{i + 1} 1 0 0 0 {i * 0.1} 0 0 1 {i:04d}.jpg\n1 2 -1 3 4 -1\n")
    open(os.path.join(cm, "sparse", "0", "points3D.txt"), "w").close()
    # Graph200K folder export (pair mode: depth -> target)
    vc = os.path.join(base, "graph200k", "train")
    rows = []
    for i in range(n // 2):
        cond = {}
        for col in ("depth", "target"):
            p = os.path.join(vc, col, f"{i}_{col}.jpg")
            _img(p, sz, i + (col == "depth") * 1000)
            cond[col] = os.path.abspath(p)
        rows.append({"quality_assessment": {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 5},
                     "description": {"description_0": f"scene {i}", "description_valid": True},
                     "collection": "c", "condition": cond})
    with open(os.path.join(vc, "data.json"), "w") as fh:
        json.dump(rows, fh)
    # DreamBooth
    db = os.path.join(base, "dreambooth", "dataset")
    subjects = [f"subject{k}" for k in range(max(1, n // 10))]
    for k, s in enumerate(subjects):
        for i in range(10):
            _img(os.path.join(db, s, f"{i:02d}.jpg"), sz, k * 10 + i)
    with open(os.path.join(db, "prompts_and_classes.txt"), "w") as fh:
        fh.write("Classes\n\nsubject_name,class\n" + "".join(f"{s},toy\n" for s in subjects)
                 + "\nPrompts\n\nObject Prompts\n\nprompt_list = [\n'a {0} {1}'.format(unique_token, class_token)\n]\n"
                 + "\nLive Subject Prompts\n\nprompt_list = [\n'a {0} {1}'.format(unique_token, class_token)\n]\n")
    return {"jsonl": (os.path.join(base, "train.jsonl"), j), "insdet": ins, "colmap": cm,
            "graph200k": os.path.join(base, "graph200k"), "dreambooth": os.path.join(base, "dreambooth")}


def cases(sets: dict[str, Any], side: int) -> list[tuple[str, Any, list[str]]]:
    from . import colmap, dreambooth, insdet, omnigen_jsonl, visualcloze

    jl, jdir = sets["jsonl"]
    half = str(side // 2)
    return [
        ("omnigen_jsonl", omnigen_jsonl.run, ["--jsonl", jl, "--images", jdir]),
        ("omnigen_jsonl reencode", omnigen_jsonl.run, ["--jsonl", jl, "--images", jdir, "--reencode"]),
        ("omnigen_jsonl resize 1/2", omnigen_jsonl.run, ["--jsonl", jl, "--images", jdir, "--max-side", half]),
        ("insdet objects", insdet.run, ["objects", "--root", sets["insdet"]]),
        ("insdet objects composite", insdet.run, ["objects", "--root", sets["insdet"], "--composite", "colour"]),
        ("insdet scenes 2048px->512", insdet.run, ["scenes", "--root", sets["insdet"], "--max-side", "512"]),
        ("colmap", colmap.run, ["--root", sets["colmap"]]),
        ("visualcloze pair", visualcloze.run, ["--root", sets["graph200k"], "--tasks", "depth"]),
        ("dreambooth", dreambooth.run, ["dreambooth", "--root", sets["dreambooth"]]),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="images per set")
    p.add_argument("--side", type=int, default=256, help="image side in px")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed after)")
    args = p.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="prep-bench-")
    try:
        sets = make_sets(os.path.join(base, "in"), args.n, args.side)
        print(f"{'converter':28s} " + " ".join(f"{f'workers={w}':>22s}" for w in args.workers))
        for name, run, argv_ in cases(sets, args.side):
            cells = []
            for w in args.workers:
                out = os.path.join(base, "out", name.replace(" ", "_"), str(w))
                conv = run([*argv_, "--out", out, "--workers", str(w), "--quiet", "--overwrite"])
                cells.append(f"{conv.stats.images_per_s:8.1f} img/s ({conv.stats.images:4d})")
            print(f"{name:28s} " + " ".join(f"{c:>22s}" for c in cells), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
