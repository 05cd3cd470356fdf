"""COLMAP's text and binary model files (``doc/format.rst``), read without pycolmap.

Every error names the file and the line or byte where reading stopped."""

from __future__ import annotations

import os
import struct

import numpy as np

from ..text import open_text
from .model import (
    CAMERA_MODELS,
    EXPECTED,
    MODEL_FILES,
    MODEL_IDS,
    Camera,
    ImageRecord,
    Model,
    ModelError,
    has_model,
    known_models,
)


def _data_lines(path: str):
    """(line number, stripped line) for non-comment, non-empty lines."""
    with open_text(path) as fh:
        for n, line in enumerate(fh, start=1):
            s = line.strip()
            if s and not s.startswith("#"):
                yield n, s


def read_cameras_text(path: str) -> dict[int, Camera]:
    cameras = {}
    name = os.path.basename(path)
    for n, line in _data_lines(path):
        parts = line.split()
        try:
            cam_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = tuple(float(p) for p in parts[4:])
        except (IndexError, ValueError) as exn:
            raise ModelError(f"{name} line {n}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', "
                             f"got {line[:80]!r}") from exn
        if model not in MODEL_IDS:
            raise ModelError(f"{name} line {n}: camera {cam_id} has unknown camera model {model!r} "
                             f"(known: {known_models()})")
        mid = MODEL_IDS[model]
        want = len(CAMERA_MODELS[mid][1])
        if len(params) != want:
            raise ModelError(f"{name} line {n}: camera {cam_id} ({model}) has {len(params)} parameters, "
                             f"the model has {want} ({', '.join(CAMERA_MODELS[mid][1])})")
        cameras[cam_id] = Camera(cam_id, mid, width, height, params)
    return cameras


def read_images_text(path: str) -> dict[int, ImageRecord]:
    images = {}
    name = os.path.basename(path)
    with open_text(path) as fh:
        lines = fh.readlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        # The next line holds the 2-D points and may be empty: take it unconditionally.
        points = lines[i].split() if i < len(lines) else []
        i += 1
        parts = line.split(maxsplit=9)
        try:
            image_id = int(parts[0])
            q = tuple(float(v) for v in parts[1:5])
            t = tuple(float(v) for v in parts[5:8])
            cam_id = int(parts[8])
            img_name = parts[9].rstrip("\r\n")
        except (IndexError, ValueError) as exn:
            raise ModelError(f"{name} line {i - 1}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', "
                             f"got {line[:80]!r}") from exn
        if len(points) % 3:
            raise ModelError(f"{name} line {i}: image {image_id}: the POINTS2D line must hold (X, Y, POINT3D_ID) "
                             f"triples, got {len(points)} values")
        ids = points[2::3]
        n3d = sum(1 for p in ids if p != "-1")
        images[image_id] = ImageRecord(image_id, q, t, cam_id, img_name, len(ids), n3d)  # type: ignore[arg-type]
    return images


def count_points3D_text(path: str) -> int:
    return sum(1 for _ in _data_lines(path))


class _Reader:
    def __init__(self, path: str):
        self.name = os.path.basename(path)
        with open(path, "rb") as fh:
            self.buf = fh.read()
        self.pos = 0

    def take(self, fmt: str) -> tuple:
        try:
            out = struct.unpack_from("<" + fmt, self.buf, self.pos)
        except struct.error as exn:
            raise ModelError(f"{self.name} is truncated or corrupt (reading {fmt!r} at byte {self.pos} of "
                             f"{len(self.buf)})") from exn
        self.pos += struct.calcsize("<" + fmt)
        return out

    def cstring(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ModelError(f"{self.name} is truncated (unterminated image name at byte {self.pos})")
        raw = self.buf[self.pos:end]
        self.pos = end + 1
        return raw.decode("utf-8", errors="replace")

    def skip(self, nbytes: int) -> bytes:
        if self.pos + nbytes > len(self.buf):
            raise ModelError(f"{self.name} is truncated (needs {nbytes} bytes at byte {self.pos} of {len(self.buf)})")
        out = self.buf[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return out


def read_cameras_binary(path: str) -> dict[int, Camera]:
    r = _Reader(path)
    (n,) = r.take("Q")
    cameras = {}
    for _ in range(n):
        cam_id, mid, width, height = r.take("iiQQ")
        if mid not in CAMERA_MODELS:
            raise ModelError(f"{r.name}: camera {cam_id} has unknown camera model id {mid} (known: "
                             f"{known_models()}); cannot read on (the parameter count depends on the model)")
        params = r.take("d" * len(CAMERA_MODELS[mid][1]))
        cameras[cam_id] = Camera(cam_id, mid, width, height, tuple(params))
    return cameras


_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def read_images_binary(path: str) -> dict[int, ImageRecord]:
    r = _Reader(path)
    (n,) = r.take("Q")
    images = {}
    for _ in range(n):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.take("I7di")
        name = r.cstring()
        (n2d,) = r.take("Q")
        pts = np.frombuffer(r.skip(n2d * _POINT2D.itemsize), dtype=_POINT2D)
        n3d = int(np.count_nonzero(pts["id"] != -1)) if n2d else 0
        images[image_id] = ImageRecord(image_id, (qw, qx, qy, qz), (tx, ty, tz), cam_id, name, int(n2d), n3d)
    return images


def count_points3D_binary(path: str) -> int:
    return _Reader(path).take("Q")[0]


def read_model(path: str, fmt: str = "auto") -> Model:
    """Read cameras, images and the points3D count; ``fmt``: auto (binary if present), bin, txt."""
    if fmt == "auto":
        fmt = "bin" if has_model(path, "bin") else "txt"
    if not has_model(path, fmt):
        missing = [f"{f}.{fmt}" for f in ("cameras", "images") if not os.path.isfile(os.path.join(path, f"{f}.{fmt}"))]
        raise ModelError(f"{path!r}: missing {', '.join(missing)}. {EXPECTED}")
    file = {f: os.path.join(path, f"{f}.{fmt}") for f in MODEL_FILES}
    try:
        if fmt == "bin":
            cameras, images = read_cameras_binary(file["cameras"]), read_images_binary(file["images"])
            npts = count_points3D_binary(file["points3D"]) if os.path.isfile(file["points3D"]) else None
        else:
            cameras, images = read_cameras_text(file["cameras"]), read_images_text(file["images"])
            npts = count_points3D_text(file["points3D"]) if os.path.isfile(file["points3D"]) else None
    except UnicodeDecodeError as exn:
        raise ModelError(f"{path!r}: a .{fmt} model file is not UTF-8 text ({exn}); binary files need "
                         "the .bin extension") from exn
    extras = tuple(sorted(f for f in os.listdir(path) if os.path.splitext(f)[0] in ("rigs", "frames")))
    return Model(path=path, format=fmt, cameras=cameras, images=images, num_points3D=npts, extras=extras)
