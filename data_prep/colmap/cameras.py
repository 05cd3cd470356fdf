"""The camera numbers of a sample: intrinsics scaled to the stored image, the pose, the centre."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .model import Camera, Model, ModelError


_INTRINSIC_NAMES = {"f", "fx", "fy", "cx", "cy"}
POSE_KEYS = ("qw", "qx", "qy", "qz", "tx", "ty", "tz")


def intrinsics(cam: Camera, scale_x: float = 1.0, scale_y: float = 1.0) -> dict[str, float]:
    """fx, fy, cx, cy (+ distortion by name) of a camera, scaled to a resized image.

    SIMPLE_* models (one focal length f) give fx = fy = f.  Raises ModelError for models
    without a focal length and principal point (EQUIRECTANGULAR)."""
    names = cam.param_names
    if not ({"cx", "cy"} <= set(names) and ({"f"} & set(names) or {"fx", "fy"} <= set(names))):
        raise ModelError(f"camera {cam.id} has model {cam.model}, which has no focal length / principal point "
                         f"(parameters: {', '.join(names)}); the camera task needs fx, fy, cx, cy. Undistort the "
                         "model to a perspective one (colmap image_undistorter) or drop these images")
    p = dict(zip(names, cam.params, strict=True))
    fx = p["f"] if "f" in p else p["fx"]
    fy = p["f"] if "f" in p else p["fy"]
    out = {"fx": fx * scale_x, "fy": fy * scale_y, "cx": p["cx"] * scale_x, "cy": p["cy"] * scale_y}
    for n in names:
        if n not in _INTRINSIC_NAMES:
            out[n] = p[n]
    return out


def camera_centre(q: Sequence[float], t: Sequence[float]) -> list[float]:
    """-R^T t for the world->camera pose (q = w, x, y, z, normalised here)."""
    w, x, y, z = (v / (math.sqrt(sum(c * c for c in q)) or 1.0) for v in q)
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    return [float(v) for v in -rot.T @ np.asarray(t, dtype=float)]


def check_model(model: Model) -> None:
    """Every image's camera exists and has usable intrinsics (fatal, with names, otherwise)."""
    files = f"{model.format} model {model.path!r}"
    known = ", ".join(str(c) for c in sorted(model.cameras)) or "none"
    users: dict[int, list[str]] = {}
    for img in model.images.values():
        if img.camera_id not in model.cameras:
            raise ModelError(f"images.{model.format}: image {img.id} ({img.name!r}) refers to camera "
                             f"{img.camera_id}, which cameras.{model.format} does not define (cameras: {known}) "
                             f"in {files}")
        users.setdefault(img.camera_id, []).append(img.name)
    for cam_id, names in sorted(users.items()):
        try:
            intrinsics(model.cameras[cam_id])
        except ModelError as exn:
            raise ModelError(f"{exn} ({len(names)} image(s) use it, e.g. {names[0]!r})") from None
