"""A small synthetic evaluation set (shapes on noise) for ``--demo`` and the tests.

Layout written under ``root``: ``subjects/`` (generated images in per-subject
sub-folders, with sidecars), ``references/<subject>/``, ``targets/``, ``canny/`` and
``depth/`` (conditions derived from the targets), ``gen_canny/`` and ``gen_depth/``
(generated images named like their targets, with sidecars).
"""

from __future__ import annotations

from ..core.atomic import atomic_path, write_json

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUBJECTS = ("dog", "backpack")


def shapes_image(seed: int, size: int = 48) -> Image.Image:
    """Random rectangles and ellipses on a noisy background: plenty of edges, some texture."""
    rng = np.random.default_rng(seed)
    base = (rng.random((size, size, 3)) * 40 + rng.integers(0, 180, 3)).astype(np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.integers(0, size // 2, 2)
        w, h = rng.integers(8, size // 2, 2)
        x1, y1 = x0 + w, y0 + h
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([int(x0), int(y0), int(x1), int(y1)], fill=fill)
    return img


def _save(img: Image.Image, path: str, sidecar: dict | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    if sidecar is not None:
        write_json(os.path.splitext(path)[0] + ".json", sidecar, indent=None)


def write_demo_set(root: str, per_subject: int = 3, n_control: int = 3) -> dict[str, str]:
    import cv2

    out = {k: os.path.join(root, k) for k in ("subjects", "references", "targets", "canny", "depth",
                                              "gen_canny", "gen_depth")}
    for s_idx, subject in enumerate(SUBJECTS):
        for j in range(2):
            _save(shapes_image(100 * s_idx + j), os.path.join(out["references"], subject, f"{j:02d}.png"))
        for j in range(per_subject):
            prompt = f"a sks {subject} in the snow" if j % 2 else f"a photo of sks {subject}"
            _save(shapes_image(1000 + 10 * s_idx + j), os.path.join(out["subjects"], subject, f"{j}_gen.png"),
                  {"instruction": prompt, "input_images": [], "seed": j})
    for k in range(n_control):
        target = shapes_image(5000 + k)
        key = f"{k:03d}"
        _save(target, os.path.join(out["targets"], f"{key}.png"))
        edges = cv2.Canny(np.asarray(target.convert("L")), 100, 200)
        _save(Image.fromarray(edges).convert("RGB"), os.path.join(out["canny"], f"{key}.png"))
        depth = np.asarray(target.convert("L").filter(ImageFilter.GaussianBlur(3)))
        _save(Image.fromarray(depth).convert("RGB"), os.path.join(out["depth"], f"{key}.png"))
        blurred = target.filter(ImageFilter.GaussianBlur(1))
        for kind in ("canny", "depth"):
            _save(blurred, os.path.join(out[f"gen_{kind}"], f"{key}.png"),
                  {"instruction": f"a high-quality image from a {kind} map", "input_images": [], "seed": k})
    return {"subjects_generated": out["subjects"], "references": out["references"], "targets": out["targets"],
            "canny_conditions": out["canny"], "depth_conditions": out["depth"],
            "canny_generated": out["gen_canny"], "depth_generated": out["gen_depth"]}
