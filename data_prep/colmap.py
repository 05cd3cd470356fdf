"""COLMAP sparse models (SfM) -> deft_omni shards with per-image cameras.

Layout read (COLMAP's ``doc/format.rst``)::

    <root>/sparse/0/cameras.{bin,txt} images.{bin,txt} points3D.{bin,txt}
                    [rigs.{bin,txt} frames.{bin,txt}]   (COLMAP >= 3.12; tolerated)
    <root>/images/<NAME as in images.*>

This module has its own reader for the text and binary formats (no pycolmap at run
time).  Every registered image becomes one sample whose ``camera`` holds the paper's 11
numbers - fx, fy, cx, cy and the world->camera pose qw, qx, qy, qz, tx, ty, tz (Hamilton
quaternion; camera centre = -R^T t) - plus width, height, model_id and the model's
distortion parameters by name (k1, k2, p1, ...).  The schema stores camera values as
floats, so the model *name* and the raw parameter list go to ``meta``.  SIMPLE_* models
(one focal length) give fx = fy = f.  Intrinsics describe the stored (downscaled) image
unless ``--intrinsics original``.  The instruction is a template over the scene words
(``{camera}`` adds the raw numbers as text; by default they stay in ``camera`` only).

    python -m data_prep.colmap --root south-building --out data/sfm_camera/train
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deft_omni.data.schema import SampleError, make_sample

from .common import (
    Conversion,
    ConversionError,
    ImageError,
    Skip,
    add_common_args,
    check_output,
    cli_main,
    is_image_file,
    make_key,
    make_parser,
    prepare_image,
    words_from_name,
)

SOURCE = "sfm_camera"

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
_INTRINSIC_NAMES = {"f", "fx", "fy", "cx", "cy"}
POSE_KEYS = ("qw", "qx", "qy", "qz", "tx", "ty", "tz")


def _known_models() -> str:
    return ", ".join(f"{i} {n}" for i, (n, _) in CAMERA_MODELS.items())


# ----------------------------------------------------------------------------- model


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


# ------------------------------------------------------------------------------ text


def _data_lines(path: str):
    """(line number, stripped line) for non-comment, non-empty lines."""
    with open(path, encoding="utf-8") as fh:
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
                             f"(known: {_known_models()})")
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
    with open(path, encoding="utf-8") as fh:
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


# ---------------------------------------------------------------------------- binary


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
                             f"{_known_models()}); cannot read on (the parameter count depends on the model)")
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


# ------------------------------------------------------------------------- discovery


MODEL_FILES = ("cameras", "images", "points3D")
EXPECTED = ("Expected a COLMAP scene folder: <root>/sparse/0/{cameras,images,points3D}.{bin,txt} "
            "(or give --model DIR) and the photos under <root>/images/ (or --images DIR)")


def _has_model(path: str, ext: str | None = None) -> bool:
    exts = (ext,) if ext else ("bin", "txt")
    return any(all(os.path.isfile(os.path.join(path, f"{f}.{e}")) for f in ("cameras", "images")) for e in exts)


def find_model_dir(root: str, model: str | None) -> str:
    if model:
        if not os.path.isdir(model):
            raise ModelError(f"--model {model!r} is not a folder. {EXPECTED}")
        if not _has_model(model):
            raise ModelError(f"--model {model!r} has no cameras/images .bin or .txt files "
                             f"(it holds: {', '.join(sorted(os.listdir(model))[:8]) or 'nothing'}). {EXPECTED}")
        return model
    if not os.path.isdir(root):
        raise ModelError(f"--root {root!r} does not exist. {EXPECTED}")
    for cand in (os.path.join(root, "sparse", "0"), os.path.join(root, "sparse"), root):
        if os.path.isdir(cand) and _has_model(cand):
            return cand
    sparse = os.path.join(root, "sparse")
    subs = sorted(os.listdir(sparse)) if os.path.isdir(sparse) else []
    hint = f" sparse/ holds {subs}: pass one with --model." if subs else ""
    held = ", ".join(sorted(os.listdir(root))[:8]) or "nothing"
    raise ModelError(f"--root {root!r} holds no COLMAP model (it holds: {held}).{hint} {EXPECTED}")


def read_model(path: str, fmt: str = "auto") -> Model:
    """Read cameras, images and the points3D count; ``fmt``: auto (binary if present), bin, txt."""
    if fmt == "auto":
        fmt = "bin" if _has_model(path, "bin") else "txt"
    if not _has_model(path, fmt):
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


# -------------------------------------------------------------------------- cameras


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


# ------------------------------------------------------------------------- samples


# The camera numbers stay in the sample's `camera` field: normalising and serialising them
# (by image size, scene scale) happens where they are used, in training.  `{camera}` in a
# custom template writes the raw numbers into the text instead.
DEFAULT_TEMPLATE = "a photo of {token} {scene}"


@dataclass(frozen=True)
class Job:
    key: str
    path: str
    instruction_template: str
    token: str
    scene: str
    camera: Camera
    image: ImageRecord
    precision: int
    scale_intrinsics: bool
    max_side: int | None
    image_format: str
    reencode: bool


def _fmt(v: float, precision: int) -> str:
    s = f"{v:.{precision}f}"
    return "0" if float(s) == 0 else s.rstrip("0").rstrip(".") if "." in s else s


def build(job: Job) -> Any:
    cam, img = job.camera, job.image
    try:
        out, (w, h) = prepare_image(job.path, max_side=job.max_side, image_format=job.image_format,
                                    reencode=job.reencode)
    except ImageError as exn:
        return Skip(job.key, str(exn))
    sx, sy = (w / cam.width, h / cam.height) if job.scale_intrinsics else (1.0, 1.0)
    camera = intrinsics(cam, sx, sy)
    camera.update(zip(POSE_KEYS, (*img.qvec, *img.tvec), strict=True))
    camera.update(width=float(w if job.scale_intrinsics else cam.width),
                  height=float(h if job.scale_intrinsics else cam.height), model_id=float(cam.model_id))
    text = " ".join(f"{k} {_fmt(camera[k], job.precision)}" for k in ("fx", "fy", "cx", "cy", *POSE_KEYS))
    fields = {k: _fmt(v, job.precision) for k, v in camera.items()}
    try:
        instruction = " ".join(job.instruction_template.format(token=job.token, scene=job.scene, camera=text,
                                                               name=img.name, **fields).split())
    except KeyError as exn:
        return Skip(job.key, f"template field missing: {{{exn.args[0]}}} is not a parameter of camera {cam.id} "
                             f"({cam.model})")
    meta = {"scene": job.scene, "image": img.name, "image_id": img.id, "camera_id": cam.id, "model": cam.model,
            "params": list(cam.params), "colmap_size": [cam.width, cam.height], "stored_size": [w, h],
            "intrinsics": "stored" if job.scale_intrinsics else "original",
            "camera_centre": camera_centre(img.qvec, img.tvec), "num_points2D": img.num_points2D,
            "num_points3D": img.num_points3D}
    try:
        return make_sample(job.key, instruction, out, task="sfm_camera", meta=meta, camera=camera,
                           image_format=job.image_format)
    except SampleError as exn:
        return Skip(job.key, f"invalid sample: {exn.reason}")


def parse_args(argv: Sequence[str] | None = None):
    p = make_parser("COLMAP sparse model + images -> deft_omni webdataset shards with cameras",
                    prog="python -m data_prep.colmap")
    p.add_argument("--root", required=True, help="scene folder holding sparse/0/ and images/")
    p.add_argument("--model", default=None, help="model folder (default: <root>/sparse/0, <root>/sparse, <root>)")
    p.add_argument("--images", default=None, help="image folder (default: <root>/images)")
    p.add_argument("--format", choices=["auto", "bin", "txt"], default="auto",
                   help="model format to read (auto: binary when present)")
    p.add_argument("--scene-name", default=None, help="words for the scene (default: from the root folder name)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE,
                   help="instruction; fields {token} {scene} {camera} {name} and every camera key "
                        "({fx} {fy} {cx} {cy} {qw} ... {tz})")
    p.add_argument("--precision", type=int, default=3, help="decimals of the numbers in the instruction")
    p.add_argument("--intrinsics", choices=["stored", "original"], default="stored",
                   help="fx, fy, cx, cy, width, height for the stored (downscaled) image or COLMAP's size")
    add_common_args(p)
    return p.parse_args(argv)


def run(argv: Sequence[str] | None = None):
    args = parse_args(argv)
    check_output(args.out, args.overwrite)  # Refuse before any (long) listing of the inputs.
    model_dir = find_model_dir(args.root, args.model)
    model = read_model(model_dir, args.format)
    check_model(model)
    image_dir = args.images or os.path.join(args.root, "images")
    if not os.path.isdir(image_dir):
        raise ModelError(f"image folder {image_dir!r} does not exist (give --images DIR). {EXPECTED}")
    scene = args.scene_name or words_from_name(os.path.basename(os.path.normpath(os.path.abspath(args.root))),
                                               drop_leading_number=False)
    try:
        dummy = {n: 0 for _, names in CAMERA_MODELS.values() for n in names}
        dummy.update({k: 0 for k in ("fx", "fy", "cx", "cy", *POSE_KEYS, "width", "height", "model_id")})
        args.template.format(token="t", scene="s", camera="c", name="n", **dummy)
    except (KeyError, IndexError, ValueError) as exn:
        raise ConversionError(f"--template {args.template!r}: unknown or malformed field {exn}") from exn
    jobs = [Job(key=make_key("img", f"{img.id:06d}", os.path.splitext(img.name)[0]),
                path=os.path.join(image_dir, img.name), instruction_template=args.template,
                token=args.unique_token, scene=scene, camera=model.cameras[img.camera_id], image=img,
                precision=args.precision, scale_intrinsics=args.intrinsics == "stored", max_side=args.max_side,
                image_format=args.image_format, reencode=args.reencode)
            for img in sorted(model.images.values(), key=lambda r: r.id)]
    if not jobs:
        raise ModelError(f"{model_dir!r} registers no images")
    options = {"root": os.path.abspath(args.root), "model": os.path.abspath(model_dir), "format": model.format,
               "images": os.path.abspath(image_dir), "scene": scene, "template": args.template,
               "intrinsics": args.intrinsics, "max_side": args.max_side, "cameras": len(model.cameras),
               "registered_images": len(model.images), "points3D": model.num_points3D,
               "rig_files": list(model.extras)}
    registered = {img.name for img in model.images.values()}
    unregistered = 0
    for folder, _, files in os.walk(image_dir):
        for f in files:
            rel = os.path.relpath(os.path.join(folder, f), image_dir).replace(os.sep, "/")
            unregistered += is_image_file(f) and rel not in registered
    with Conversion(args, source=SOURCE, options=options) as conv:
        if unregistered:
            conv.note("image files not registered in the model", unregistered)
        conv.run(build, jobs)
    return conv


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, argv, prog="data_prep.colmap")


if __name__ == "__main__":
    raise SystemExit(main())
