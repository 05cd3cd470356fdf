"""A synthetic camera-dependent scene: a ground plane with four coloured, checkered quadrants
under a sky gradient, ray-cast with numpy from cameras orbiting the origin.

What a camera sees depends strongly (and smoothly) on its azimuth and height, so a model that
uses the camera numbers can predict the image and one that does not can only learn the average
view: the test bed for "the camera signal is used".  Samples are written as shards in
data_prep/colmap.py's format (json ``camera`` with fx..tz, width, height, model_id) with one
instruction for every image, and about half the quaternions stored with the negative sign,
as COLMAP files hold both.

    python -m deft_omni.camera.synthetic OUT_DIR [--n-train 64 --n-val 16 --size 32 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np
from PIL import Image

from .pose import quat_to_rotmat, rotmat_to_quat

SOURCE = "synthetic_camera"
INSTRUCTION = "a photo of sks scene"
_QUADRANT_RGB = np.array([[0.9, 0.15, 0.1], [0.1, 0.75, 0.2], [0.15, 0.25, 0.9], [0.95, 0.85, 0.1]])


def look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World->camera rotation of a camera at ``centre`` looking at ``target`` (COLMAP axes: x right,
    y down, z forward; world z up)."""
    fwd = target - centre
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right = right / np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd])  # rows: camera axes in world coordinates


def orbit_camera(azimuth: float, height: float, radius: float = 4.0, size: int = 32,
                 focal: float = 0.9) -> dict[str, float]:
    """The camera dict (colmap.py's keys) of an orbit camera; ``focal`` in units of the image width."""
    centre = np.array([radius * math.cos(azimuth), radius * math.sin(azimuth), height])
    rot = look_at(centre, np.array([0.0, 0.0, 0.3]))
    q = rotmat_to_quat(rot)
    t = -rot @ centre
    f = focal * size
    return {"fx": f, "fy": f, "cx": size / 2, "cy": size / 2, "qw": q[0], "qx": q[1], "qy": q[2], "qz": q[3],
            "tx": t[0], "ty": t[1], "tz": t[2], "width": float(size), "height": float(size), "model_id": 1.0}


def render(camera: dict[str, float]) -> Image.Image:
    """Ray-cast the scene from a camera dict (any quaternion sign) into an RGB image."""
    w, h = int(camera["width"]), int(camera["height"])
    q = np.array([camera[k] for k in ("qw", "qx", "qy", "qz")])
    rot = quat_to_rotmat(q / np.linalg.norm(q))
    centre = -rot.T @ np.array([camera["tx"], camera["ty"], camera["tz"]])
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays = np.stack([(u - camera["cx"]) / camera["fx"], (v - camera["cy"]) / camera["fy"], np.ones_like(u)], -1)
    dirs = rays @ rot  # camera -> world: R^T d, row-wise
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    sky = np.clip(dirs[..., 2:3], 0, 1) * np.array([-0.3, -0.1, 0.1]) + np.array([0.75, 0.85, 0.95])
    dist = np.where(dirs[..., 2] < -1e-6, -centre[2] / np.minimum(dirs[..., 2], -1e-6), np.inf)
    hit = centre + dirs * np.where(np.isfinite(dist), dist, 0.0)[..., None]
    quadrant = (hit[..., 0] < 0).astype(int) + 2 * (hit[..., 1] < 0).astype(int)
    quadrant = np.array([0, 1, 3, 2])[quadrant]  # counter-clockwise from +x+y
    checker = ((np.floor(hit[..., 0]) + np.floor(hit[..., 1])) % 2)[..., None]
    ground = _QUADRANT_RGB[quadrant] * (0.55 + 0.45 * checker)
    fog = np.exp(-np.where(np.isfinite(dist), dist, 1e9) / 12.0)[..., None]
    img = np.where(np.isfinite(dist)[..., None], ground * fog + sky * (1 - fog), sky)
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), "RGB")


def scene_camera(index: int, split: str, seed: int, size: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    camera = orbit_camera(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(1.0, 3.0)), size=size)
    if rng.random() < 0.5:  # the same rotation, stored with the other sign
        for k in ("qw", "qx", "qy", "qz"):
            camera[k] = -camera[k]
    return {k: float(v) for k, v in camera.items()}


def scene_sample(index: int, split: str, seed: int, size: int) -> dict[str, Any]:
    from ..data.schema import make_sample

    camera = scene_camera(index, split, seed, size)
    return make_sample(f"{split}_{index:05d}", INSTRUCTION, render(camera), task="sfm_camera",
                       meta={"scene": "synthetic", "image": f"{split}_{index:05d}.png"}, camera=camera)


def make_camera_scene_shards(out_dir: str, n_train: int = 64, n_val: int = 16, size: int = 32, seed: int = 0,
                             maxcount: int = 32) -> dict[str, str]:
    """Write (or reuse, when the options match) ``out_dir/{train,val}`` shards; returns the paths."""
    from ..data.synthetic import write_generated_set

    if size % 16 or size <= 0 or n_train < 1 or n_val < 0:
        raise ValueError(f"need size a positive multiple of 16, n_train >= 1, n_val >= 0; got {size}, "
                         f"{n_train}, {n_val}")
    options = {"n_train": n_train, "n_val": n_val, "size": size, "seed": seed, "maxcount": maxcount}
    return write_generated_set(out_dir, SOURCE, options, {"train": n_train, "val": n_val},
                               lambda i, split: scene_sample(i, split, seed, size), maxcount)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deft_omni.camera.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(make_camera_scene_shards(args.out_dir, args.n_train, args.n_val, args.size, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
