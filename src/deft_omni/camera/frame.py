"""The scene-normalised frame: camera centres shifted to their mean and scaled to unit RMS.

SfM reconstructions have an arbitrary origin and scale (COLMAP fixes neither), so raw
translations differ by orders of magnitude between scenes.  With C' = (C - c) / s (c the mean
camera centre, s the RMS distance of the centres from c) the training cameras sit around the
origin at unit spread; rotations are unchanged and t' = -R C' = (t + R c) / s.  The frame is
computed once from the training shards and saved in the adapter folder (``camera.json``) so
generation maps new cameras of the same reconstruction identically.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import CameraError
from .pose import camera_centre, check_finite, normalise_quaternion, quat_to_rotmat

FRAME_FORMAT = "deft_omni.camera_frame"
POSE_KEYS = ("qw", "qx", "qy", "qz", "tx", "ty", "tz")


@dataclass(frozen=True)
class SceneFrame:
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    num_cameras: int = 0

    def __post_init__(self) -> None:
        check_finite([*self.centre, self.scale], "camera frame", ("cx", "cy", "cz", "scale"))
        if len(self.centre) != 3 or not self.scale > 0:
            raise CameraError(f"camera frame: need a 3-vector centre and a positive scale, got {self.centre}, "
                              f"{self.scale}")

    @classmethod
    def from_centres(cls, centres: Sequence[Sequence[float]]) -> SceneFrame:
        pts = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
        if len(pts) == 0:
            raise CameraError("no camera centres to build a scene frame from: the training shards hold no "
                              "json 'camera' (make them with data_prep/colmap.py or camera.synthetic)")
        c = pts.mean(axis=0)
        rms = float(np.sqrt(((pts - c) ** 2).sum(axis=1).mean()))
        # One camera (or all at one spot) has no spread: keep the world's unit rather than divide by ~0.
        return cls(tuple(float(v) for v in c), rms if rms > 1e-9 else 1.0, len(pts))

    def normalise_translation(self, q: Sequence[float], t: Sequence[float]) -> np.ndarray:
        """t' = (t + R(q) c) / s: the translation of the same camera in this frame."""
        return (np.asarray(t, dtype=np.float64) + quat_to_rotmat(q) @ np.asarray(self.centre)) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"format": FRAME_FORMAT, "version": 1, "centre": list(self.centre), "scale": self.scale,
                "num_cameras": self.num_cameras}

    @classmethod
    def from_dict(cls, data: Any, source: str = "camera frame") -> SceneFrame:
        if not isinstance(data, dict) or data.get("format") != FRAME_FORMAT:
            raise CameraError(f"{source}: not a deft_omni camera frame (format != {FRAME_FORMAT!r})")
        try:
            return cls(tuple(float(v) for v in data["centre"]), float(data["scale"]),
                       int(data.get("num_cameras", 0)))
        except (KeyError, TypeError, ValueError) as exn:
            raise CameraError(f"{source}: broken camera frame ({exn}); re-save the adapter") from exn


def _shard_jsons(url: str) -> Iterable[tuple[str, dict]]:
    with tarfile.open(url) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                fh = tar.extractfile(member)
                if fh is not None:
                    yield member.name, json.loads(fh.read())


def scan_shards(paths: Sequence[str], tolerance: float = 1e-3
                ) -> tuple[list[np.ndarray], Counter, list[dict[str, float]]]:
    """(camera centres, instruction counts, camera dicts) of every sample with a json ``camera`` in
    the shard sets ``paths`` (folders with a manifest, patterns or tars).  Reads only the json."""
    from tqdm.auto import tqdm

    from ..data.schema import ShardSet

    centres: list[np.ndarray] = []
    cameras: list[dict[str, float]] = []
    instructions: Counter = Counter()
    urls = [url for spec in paths for url in ShardSet.resolve(spec).urls]
    for url in tqdm(urls, desc="camera frame", disable=len(urls) < 16):
        for name, meta in _shard_jsons(url):
            camera = meta.get("camera")
            if not isinstance(camera, dict):
                continue
            where = f"{os.path.basename(url)}:{name} json.camera"
            missing = [k for k in POSE_KEYS if k not in camera]
            if missing:
                raise CameraError(f"{where}: missing {missing}; the camera dict needs {list(POSE_KEYS)} "
                                  "(data_prep/colmap.py writes them)")
            q = normalise_quaternion([camera[k] for k in POSE_KEYS[:4]], where, tolerance)
            t = check_finite([camera[k] for k in POSE_KEYS[4:]], where, POSE_KEYS[4:])
            centres.append(camera_centre(q, t))
            cameras.append({str(k): float(v) for k, v in camera.items()})
            instructions[str(meta.get("instruction", ""))] += 1
    return centres, instructions, cameras


def frame_from_shards(paths: Sequence[str], tolerance: float = 1e-3
                      ) -> tuple[SceneFrame, str, list[dict[str, float]]]:
    """(scene frame, most common instruction, camera dicts) of the training shards."""
    centres, instructions, cameras = scan_shards(paths, tolerance)
    frame = SceneFrame.from_centres(centres)
    return frame, instructions.most_common(1)[0][0], cameras
