"""The 11 camera numbers: from a camera dict to a normalised vector, and text mode's serialisation.

Vector (in this order, ``CAMERA_KEYS``):

    fx / W, fy / H, cx / W, cy / H      intrinsics over the image size the camera describes
    qw, qx, qy, qz                      world->camera rotation, unit and sign-fixed (w > 0)
    tx, ty, tz                          translation in the scene-normalised frame (frame.py)

Text mode appends ``<|camera|>`` (no space before it: the marker is one id) and the 11 numbers separated by single spaces, fixed-point:
``CameraConfig.intrinsics_decimals`` (4) for the first four, ``rotation_decimals`` (4) for the
quaternion, ``translation_decimals`` (3) for the translation; negative zero is written as zero.
No field names: they would cost tokens and add nothing (the order is fixed).  Example:
``<|camera|> 0.8000 0.8000 0.5000 0.5000 0.9239 0.0000 0.3827 0.0000 0.000 0.000 1.000``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .config import CameraConfig, CameraError
from .frame import SceneFrame
from .pose import check_finite, normalise_quaternion

CAMERA_KEYS = ("fx", "fy", "cx", "cy", "qw", "qx", "qy", "qz", "tx", "ty", "tz")
NUM_CAMERA_VALUES = len(CAMERA_KEYS)


def camera_vector(camera: Mapping[str, Any], frame: SceneFrame, *, where: str = "camera",
                  width: float | None = None, height: float | None = None,
                  tolerance: float = 1e-3) -> np.ndarray:
    """The normalised 11-vector (float64) of a camera dict in data_prep/colmap.py's format.

    ``width``/``height`` are used when the dict has none (the image size fx..cy refer to)."""
    missing = [k for k in CAMERA_KEYS if k not in camera]
    if missing:
        raise CameraError(f"{where}: missing camera value(s) {missing}; a camera needs {list(CAMERA_KEYS)} "
                          "(+ width, height) as data_prep/colmap.py writes them")
    raw = check_finite([camera[k] for k in CAMERA_KEYS], where, CAMERA_KEYS)
    w, h = camera.get("width", width), camera.get("height", height)
    if w is None or h is None:
        raise CameraError(f"{where}: no image width/height to normalise fx, fy, cx, cy by; add 'width' and "
                          "'height' to the camera (pixels of the image the intrinsics describe)")
    w, h = check_finite([w, h], where, ("width", "height"))
    if w <= 0 or h <= 0:
        raise CameraError(f"{where}: width/height must be positive, got {w} x {h}")
    q = normalise_quaternion(raw[4:8], where, tolerance)
    t = frame.normalise_translation(q, raw[8:11])
    return np.concatenate([[raw[0] / w, raw[1] / h, raw[2] / w, raw[3] / h], q, t])


def _decimals(cfg: CameraConfig) -> list[int]:
    return [cfg.intrinsics_decimals] * 4 + [cfg.rotation_decimals] * 4 + [cfg.translation_decimals] * 3


def round_vector(vec: Sequence[float], cfg: CameraConfig) -> np.ndarray:
    """What text mode keeps of a vector: each value rounded to its decimals."""
    return np.array([float(_fmt(v, d)) for v, d in zip(_check_len(vec), _decimals(cfg))])


def _check_len(vec: Sequence[float]) -> np.ndarray:
    arr = check_finite(vec, "camera vector", CAMERA_KEYS)
    if arr.size != NUM_CAMERA_VALUES:
        raise CameraError(f"a camera vector has {NUM_CAMERA_VALUES} values {CAMERA_KEYS}, got {arr.size}")
    return arr


def _fmt(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text  # no "-0.000"


def serialize(vec: Sequence[float], cfg: CameraConfig) -> str:
    """The 11 numbers as text mode writes them after the camera token."""
    return " ".join(_fmt(v, d) for v, d in zip(_check_len(vec), _decimals(cfg)))


def parse(text: str, token: str | None = None) -> np.ndarray:
    """The 11 numbers back from :func:`serialize`'s text (after ``token`` when given)."""
    if token is not None:
        if token not in text:
            raise CameraError(f"no camera token {token!r} in {text!r}")
        text = text.split(token, 1)[1]
    parts = text.split()
    if len(parts) < NUM_CAMERA_VALUES:
        raise CameraError(f"expected {NUM_CAMERA_VALUES} camera numbers, found {len(parts)} in {text!r}")
    try:
        values = [float(p) for p in parts[:NUM_CAMERA_VALUES]]
    except ValueError as exn:
        raise CameraError(f"camera numbers must be decimals: {exn} in {text!r}") from None
    return check_finite(values, "parsed camera text", CAMERA_KEYS)


def instruction_suffix(vec: Sequence[float] | None, cfg: CameraConfig) -> str:
    """What the processor appends to an instruction: nothing, the token, or the token + numbers."""
    if vec is None or cfg.mode == "none":
        return ""
    # No space before the token: it is split out as one id, and a trailing space would become a
    # token of its own at the end of the instruction's text.
    if cfg.mode == "embed":
        return cfg.token
    return f"{cfg.token} {serialize(vec, cfg)}"
