"""Camera pose maths on COLMAP's convention: world->camera, Hamilton quaternion (w, x, y, z).

x_cam = R(q) x_world + t, so the camera centre is C = -R^T t.  q and -q are the same
rotation and COLMAP files hold both signs, so every quaternion is normalised and put in one
canonical sign (w > 0; for w = 0 the first non-zero of x, y, z positive) before it is used.
Everything is float64 numpy: these are a handful of numbers per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .config import CameraError


def check_finite(values: Sequence[float], where: str, names: Sequence[str] | None = None) -> np.ndarray:
    """``values`` as float64, or a CameraError naming the non-finite entries and ``where``."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = [i for i, v in enumerate(arr) if not math.isfinite(v)]
    if bad:
        labels = [names[i] if names is not None and i < len(names) else f"#{i}" for i in bad]
        raise CameraError(f"{where}: non-finite camera value(s) {', '.join(f'{n}={arr[i]}' for n, i in zip(labels, bad))}; "
                          "every camera number must be a finite float (fix or drop this camera)")
    return arr


def canonical_sign(q: np.ndarray) -> np.ndarray:
    """q or -q, whichever has w > 0 (ties at w = 0 broken by the first non-zero of x, y, z)."""
    for v in q:
        if abs(v) > 1e-12:
            return q if v > 0 else -q
    return q


def normalise_quaternion(q: Sequence[float], where: str = "quaternion", tolerance: float = 1e-3) -> np.ndarray:
    """Unit, sign-fixed (w, x, y, z); refuses NaN/inf and norms further than ``tolerance`` from 1."""
    arr = check_finite(q, where, ("qw", "qx", "qy", "qz"))
    if arr.shape != (4,):
        raise CameraError(f"{where}: a quaternion needs 4 numbers (qw, qx, qy, qz), got {arr.size}")
    norm = float(np.linalg.norm(arr))
    if abs(norm - 1.0) > tolerance:
        raise CameraError(f"{where}: quaternion (qw, qx, qy, qz) = {tuple(float(v) for v in arr)} has norm "
                          f"{norm:.6g}, not 1 within {tolerance:g}; COLMAP writes unit quaternions, so this "
                          "is a corrupted or hand-edited value: fix it (or normalise it yourself if intended)")
    return canonical_sign(arr / norm)


def quat_to_rotmat(q: Sequence[float]) -> np.ndarray:
    """3x3 rotation of a unit quaternion (w, x, y, z) (COLMAP's qvec2rotmat)."""
    w, x, y, z = (float(v) for v in q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def rotmat_to_quat(rot: np.ndarray) -> np.ndarray:
    """Unit, sign-fixed quaternion of a rotation matrix (Shepperd's method: stable for any angle)."""
    m = np.asarray(rot, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    arr = np.asarray(q)
    return canonical_sign(arr / np.linalg.norm(arr))


def camera_centre(q: Sequence[float], t: Sequence[float]) -> np.ndarray:
    """C = -R(q)^T t for a world->camera pose (q must already be unit)."""
    return -quat_to_rotmat(q).T @ np.asarray(t, dtype=np.float64)


def translation_from_centre(q: Sequence[float], centre: Sequence[float]) -> np.ndarray:
    """t = -R(q) C, the inverse of :func:`camera_centre`."""
    return -quat_to_rotmat(q) @ np.asarray(centre, dtype=np.float64)


def slerp(q0: Sequence[float], q1: Sequence[float], s: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions along the shorter arc; s = 0 -> q0, s = 1 -> q1."""
    a, b = np.asarray(q0, dtype=np.float64), np.asarray(q1, dtype=np.float64)
    dot = float(a @ b)
    if dot < 0.0:  # -b is the same rotation as b and lies on the shorter arc from a
        b, dot = -b, -dot
    if dot > 0.9995:  # nearly equal: the sine ratio is ill-conditioned, a normalised lerp is exact enough
        out = a + s * (b - a)
    else:
        theta = math.acos(min(1.0, dot))
        out = (math.sin((1 - s) * theta) * a + math.sin(s * theta) * b) / math.sin(theta)
    return canonical_sign(out / np.linalg.norm(out))


def path_parameters(num_keys: int, frames: int) -> list[tuple[int, float]]:
    """(segment index, fraction in [0, 1]) of ``frames`` points spread evenly over ``num_keys - 1``
    segments, from the first key to the last inclusive."""
    if num_keys < 2:
        raise CameraError(f"a camera path needs at least 2 cameras, got {num_keys}; give two or more "
                          "image names (or explicit cameras) to interpolate between")
    if frames < 2:
        raise CameraError(f"a camera path needs at least 2 frames, got {frames}")
    out = []
    for i in range(frames):
        u = i * (num_keys - 1) / (frames - 1)
        seg = min(math.floor(u), num_keys - 2)
        out.append((seg, u - seg))
    return out
