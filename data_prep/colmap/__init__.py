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

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deft_omni.data.schema import SampleError, make_sample

from ..cli import add_common_args, cli_main, make_parser
from ..conversion import Conversion, Skip
from ..errors import ConversionError
from ..images import ImageError, is_image_file, prepare_image
from ..output import check_output
from ..text import make_key, words_from_name
from .cameras import POSE_KEYS, camera_centre, check_model, intrinsics
from .formats import read_model
from .model import CAMERA_MODELS, EXPECTED, Camera, ImageRecord, ModelError, find_model_dir


SOURCE = "sfm_camera"


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
