"""A COLMAP sparse model in memory: cameras, registered images, and where to find the files."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConversionError


# id -> (name, parameter names), COLMAP's src/colmap/sensor/models.h.
CAMERA_MODELS: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("SIMPLE_PINHOLE", ("f", "cx", "cy")),
    1: ("PINHOLE", ("fx", "fy", "cx", "cy")),
    2: ("SIMPLE_RADIAL", ("f", "cx", "cy", "k")),
    3: ("RADIAL", ("f", "cx", "cy", "k1", "k2")),
    4: ("OPENCV", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    5: ("OPENCV_FISHEYE", ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4")),
    6: ("FULL_OPENCV", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
    7: ("FOV", ("fx", "fy", "cx", "cy", "omega")),
    8: ("SIMPLE_RADIAL_FISHEYE", ("f", "cx", "cy", "k")),
    9: ("RADIAL_FISHEYE", ("f", "cx", "cy", "k1", "k2")),
    10: ("THIN_PRISM_FISHEYE", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "sx1", "sy1")),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", ("fx", "fy", "cx", "cy", "k0", "k1", "k2", "k3", "k4", "k5", "p0", "p1",
                                       "s0", "s1", "s2", "s3")),
    12: ("SIMPLE_DIVISION", ("f", "cx", "cy", "k")),
    13: ("DIVISION", ("fx", "fy", "cx", "cy", "k")),
    14: ("SIMPLE_FISHEYE", ("f", "cx", "cy")),
    15: ("FISHEYE", ("fx", "fy", "cx", "cy")),
    16: ("EUCM", ("fx", "fy", "cx", "cy", "alpha", "beta")),
    17: ("EQUIRECTANGULAR", ("w", "h")),
}
MODEL_IDS = {name: mid for mid, (name, _) in CAMERA_MODELS.items()}


def known_models() -> str:
    return ", ".join(f"{i} {n}" for i, (n, _) in CAMERA_MODELS.items())


@dataclass(frozen=True)
class Camera:
    id: int
    model_id: int
    width: int
    height: int
    params: tuple[float, ...]

    @property
    def model(self) -> str:
        return CAMERA_MODELS[self.model_id][0]

    @property
    def param_names(self) -> tuple[str, ...]:
        return CAMERA_MODELS[self.model_id][1]


@dataclass(frozen=True)
class ImageRecord:
    id: int
    qvec: tuple[float, float, float, float]  # w, x, y, z (world -> camera)
    tvec: tuple[float, float, float]
    camera_id: int
    name: str
    num_points2D: int
    num_points3D: int  # observations with a 3-D point


@dataclass
class Model:
    path: str
    format: str  # "bin" | "txt"
    cameras: dict[int, Camera]
    images: dict[int, ImageRecord]
    num_points3D: int | None  # None: no points3D file
    extras: tuple[str, ...]  # rigs/frames files present (COLMAP >= 3.12)


class ModelError(ConversionError):
    """An unreadable or inconsistent COLMAP model; the message names the file and place."""


MODEL_FILES = ("cameras", "images", "points3D")
EXPECTED = ("Expected a COLMAP scene folder: <root>/sparse/0/{cameras,images,points3D}.{bin,txt} "
            "(or give --model DIR) and the photos under <root>/images/ (or --images DIR)")


def has_model(path: str, ext: str | None = None) -> bool:
    exts = (ext,) if ext else ("bin", "txt")
    return any(all(os.path.isfile(os.path.join(path, f"{f}.{e}")) for f in ("cameras", "images")) for e in exts)


def find_model_dir(root: str, model: str | None) -> str:
    if model:
        if not os.path.isdir(model):
            raise ModelError(f"--model {model!r} is not a folder. {EXPECTED}")
        if not has_model(model):
            raise ModelError(f"--model {model!r} has no cameras/images .bin or .txt files "
                             f"(it holds: {', '.join(sorted(os.listdir(model))[:8]) or 'nothing'}). {EXPECTED}")
        return model
    if not os.path.isdir(root):
        raise ModelError(f"--root {root!r} does not exist. {EXPECTED}")
    for cand in (os.path.join(root, "sparse", "0"), os.path.join(root, "sparse"), root):
        if os.path.isdir(cand) and has_model(cand):
            return cand
    sparse = os.path.join(root, "sparse")
    subs = sorted(os.listdir(sparse)) if os.path.isdir(sparse) else []
    hint = f" sparse/ holds {subs}: pass one with --model." if subs else ""
    held = ", ".join(sorted(os.listdir(root))[:8]) or "nothing"
    raise ModelError(f"--root {root!r} holds no COLMAP model (it holds: {held}).{hint} {EXPECTED}")
