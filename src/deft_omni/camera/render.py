"""Render a scene adapter from new cameras.

    python -m deft_omni.camera.render ADAPTER_DIR [--base MODEL] --colmap MODEL_DIR --image NAME --out DIR
    python -m deft_omni.camera.render ADAPTER_DIR --camera fx,fy,cx,cy,qw,qx,qy,qz,tx,ty,tz --camera-size WxH --out DIR
    python -m deft_omni.camera.render ADAPTER_DIR --colmap MODEL_DIR --path NAME1 NAME2 [...] --frames 24 --out DIR [--mp4]

Cameras are in the COLMAP model's world and pixel units (the frame saved with the adapter
normalises them exactly as training did).  A path (image names, or two or more ``--camera``)
interpolates rotations by slerp, camera centres linearly and normalised intrinsics linearly.
Writes ``frame_NNN.png``, ``cameras.json`` (per frame: the camera, its normalised vector, the
instruction, the seed) and, for several frames, ``path.gif`` (and ``path.mp4`` with ``--mp4``
when imageio-ffmpeg is installed).  ``--base`` defaults to the model the adapter was trained on.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.atomic import atomic_path, write_json
from .conditioning import CameraConditioning
from .config import CameraError
from .encoder import CameraEmbedHook
from .frame import SceneFrame
from .io import CameraBundle, load_camera_files
from .pose import (
    camera_centre,
    check_finite,
    normalise_quaternion,
    path_parameters,
    slerp,
    translation_from_centre,
)
from .serialize import CAMERA_KEYS


@dataclass
class KeyCamera:
    """A camera as interpolation wants it: normalised intrinsics, unit quaternion, world centre."""

    label: str
    intrinsics: np.ndarray  # fx/W, fy/H, cx/W, cy/H
    q: np.ndarray
    centre: np.ndarray
    raw: dict[str, float]

    def vector(self, frame: SceneFrame) -> np.ndarray:
        t = translation_from_centre(self.q, self.centre)
        return np.concatenate([self.intrinsics, self.q, frame.normalise_translation(self.q, t)])


def key_from_dict(camera: dict[str, float], label: str, tolerance: float = 1e-3) -> KeyCamera:
    missing = [k for k in (*CAMERA_KEYS, "width", "height") if k not in camera]
    if missing:
        raise CameraError(f"{label}: missing camera value(s) {missing}")
    vals = check_finite([camera[k] for k in (*CAMERA_KEYS, "width", "height")], label, (*CAMERA_KEYS, "width", "height"))
    w, h = vals[11], vals[12]
    if w <= 0 or h <= 0:
        raise CameraError(f"{label}: width/height must be positive, got {w} x {h}")
    q = normalise_quaternion(vals[4:8], label, tolerance)
    return KeyCamera(label, np.array([vals[0] / w, vals[1] / h, vals[2] / w, vals[3] / h]), q,
                     camera_centre(q, vals[8:11]), {k: float(camera[k]) for k in (*CAMERA_KEYS, "width", "height")})


def colmap_camera(model: Any, name: str, tolerance: float = 1e-3) -> KeyCamera:
    """The camera of image ``name`` (or numeric image id) of a COLMAP model (data_prep.colmap.read_model)."""
    from data_prep.colmap import intrinsics

    by_name = {img.name: img for img in model.images.values()}
    img = by_name.get(name)
    if img is None and name.isdigit():
        img = model.images.get(int(name))
    if img is None:
        few = ", ".join(repr(n) for n in sorted(by_name)[:5])
        raise CameraError(f"no image {name!r} in the COLMAP model {model.path!r} ({len(by_name)} images, e.g. {few}); "
                          "give a name exactly as images.txt/bin writes it, or an image id")
    if img.camera_id not in model.cameras:
        few = ", ".join(str(c) for c in sorted(model.cameras)[:5])
        raise CameraError(f"image {img.name!r} in {model.path!r} refers to camera id {img.camera_id}, which the "
                          f"model does not define (camera ids: {few})")
    cam = model.cameras[img.camera_id]
    camera = intrinsics(cam)
    camera.update(zip(("qw", "qx", "qy", "qz", "tx", "ty", "tz"), (*img.qvec, *img.tvec)))
    camera.update(width=float(cam.width), height=float(cam.height))
    return key_from_dict(camera, f"{model.path}: image {img.name!r}", tolerance)


def explicit_camera(text: str, size: tuple[int, int], tolerance: float = 1e-3) -> KeyCamera:
    """``fx,fy,cx,cy,qw,qx,qy,qz,tx,ty,tz`` (pixels of a ``size`` = (W, H) image, world units)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError as exn:
        raise CameraError(f"--camera {text!r}: {exn}; give 11 comma-separated numbers {','.join(CAMERA_KEYS)}") from None
    if len(values) != len(CAMERA_KEYS):
        raise CameraError(f"--camera {text!r} has {len(values)} numbers; give 11: {','.join(CAMERA_KEYS)}")
    camera = dict(zip(CAMERA_KEYS, values))
    camera.update(width=float(size[0]), height=float(size[1]))
    return key_from_dict(camera, f"--camera {text!r}", tolerance)


def interpolate_path(keys: Sequence[KeyCamera], frames: int) -> list[KeyCamera]:
    """``frames`` cameras from the first key to the last: slerp rotations, lerp centres and intrinsics."""
    out = []
    for i, (seg, s) in enumerate(path_parameters(len(keys), frames)):
        a, b = keys[seg], keys[seg + 1]
        out.append(KeyCamera(f"path frame {i} ({a.label} -> {b.label}, s={s:.3f})",
                             (1 - s) * a.intrinsics + s * b.intrinsics, slerp(a.q, b.q, s),
                             (1 - s) * a.centre + s * b.centre, {}))
    return out


class CameraRenderer:
    """A base model + scene adapter + camera files, ready to render camera vectors."""

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, tokenizer: Any, bundle: CameraBundle,
                 hook: CameraEmbedHook | None = None, max_image_side: int = 1024) -> None:
        from ..data import OmniGenTrainProcessor

        self.transformer, self.vae, self.bundle, self.hook = transformer, vae, bundle, hook
        self.conditioning = CameraConditioning(bundle.cfg, bundle.frame, bundle.token_id)
        self.processor = OmniGenTrainProcessor(tokenizer, max_image_side=max_image_side, cfg_dropout=0.0,
                                               conditioners=[self.conditioning])

    @classmethod
    def load(cls, adapter_dir: str, base: str | None = None, device: str = "cpu",
             dtype: torch.dtype = torch.float32) -> CameraRenderer:
        from ..adapters.io import load_adapter, read_adapter_config
        from ..backbones import resolve_model
        from ..model import load_omnigen

        bundle_check = load_camera_files(adapter_dir)  # fail on a camera-less folder before loading a model
        if base is None:
            _, meta = read_adapter_config(adapter_dir)
            base = (meta.get("training") or {}).get("model_path")
            if not base:
                raise CameraError(f"{adapter_dir}: no base model recorded; pass --base MODEL_DIR")
        base = str(resolve_model(base, "omnigen")[1])
        parts = load_omnigen(base, torch_dtype=dtype, device=device)
        load_adapter(parts.transformer, adapter_dir)
        embed = parts.transformer.embed_tokens
        bundle = load_camera_files(adapter_dir, hidden_size=int(embed.embedding_dim)) if bundle_check.encoder \
            is not None else bundle_check
        hook = None
        if bundle.encoder is not None:
            bundle.encoder.to(embed.weight.device)
            hook = CameraEmbedHook(bundle.encoder, bundle.token_id).attach(parts.transformer)
        parts.transformer.eval()
        return cls(parts.transformer, parts.vae, parts.tokenizer, bundle, hook)

    def instruction(self, vec: np.ndarray, prompt: str | None = None) -> str:
        base = self.bundle.instruction if prompt is None else prompt
        return base + self.conditioning.suffix(vec)

    @torch.no_grad()
    def render(self, vec: np.ndarray, *, prompt: str | None = None, height: int = 32, width: int = 32,
               num_steps: int = 8, seed: int = 0, guidance_scale: float = 2.5) -> torch.Tensor:
        """(3, H, W) in [-1, 1] for one normalised camera vector."""
        from ..generation.sampler import SamplePrompt, generate_image

        text = self.instruction(vec, prompt)
        vectors = torch.as_tensor(np.asarray(vec), dtype=torch.float32).reshape(1, -1)
        scope = self.hook.cameras(vectors) if self.hook is not None else contextlib.nullcontext()
        with scope:
            return generate_image(self.transformer, self.vae, self.processor,
                                  SamplePrompt(instruction=text, height=height, width=width, seed=seed,
                                               guidance_scale=guidance_scale), num_steps)


def save_outputs(out: Path, images: Sequence[Image.Image], records: list[dict], mp4: bool = False,
                 fps: int = 8) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, img in enumerate(images):
        with atomic_path(out / f"frame_{i:03d}.png") as tmp:
            img.save(tmp, format="PNG")
        written.append(out / f"frame_{i:03d}.png")
    write_json(out / "cameras.json", {"frames": records}, indent=1)
    if len(images) > 1:
        with atomic_path(out / "path.gif") as tmp:
            images[0].save(tmp, format="GIF", save_all=True, append_images=list(images[1:]),
                           duration=int(1000 / fps), loop=0)
        written.append(out / "path.gif")
        if mp4:
            try:
                import imageio.v2 as imageio
                import imageio_ffmpeg  # noqa: F401 - the writer's backend
            except ImportError:
                print("no MP4 written: install imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg); "
                      "the GIF is there", file=sys.stderr)
            else:
                with imageio.get_writer(out / "path.mp4", fps=fps) as writer:
                    for img in images:
                        writer.append_data(np.asarray(img))
                written.append(out / "path.mp4")
    return written


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CameraError(f"sizes are WxH in pixels, got {text!r}") from None
    return w, h


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deft_omni.camera.render", description=__doc__.splitlines()[0])
    p.add_argument("adapter", help="adapter folder written by training (with camera.json)")
    p.add_argument("--base", default=None, help="OmniGen folder or a named model: tiny, world (default: the adapter's training base)")
    p.add_argument("--colmap", default=None, help="COLMAP model folder (cameras/images .bin or .txt)")
    p.add_argument("--image", default=None, help="render the camera of this image (name or id) of --colmap")
    p.add_argument("--camera", action="append", default=[],
                   help="explicit camera fx,fy,cx,cy,qw,qx,qy,qz,tx,ty,tz (repeat for a path)")
    p.add_argument("--camera-size", default=None, help="WxH the --camera intrinsics refer to (default: output size)")
    p.add_argument("--path", nargs="+", default=None, help="image names of --colmap to interpolate between")
    p.add_argument("--frames", type=int, default=None, help="frames along a path (default 16)")
    p.add_argument("--size", default="512x512", help="output WxH, multiples of 16")
    p.add_argument("--prompt", default=None, help="instruction before the camera (default: the training one)")
    p.add_argument("--steps", type=int, default=50, help="Euler steps (OmniGen's default)")
    p.add_argument("--guidance", type=float, default=2.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--mp4", action="store_true", help="also write path.mp4 (needs imageio-ffmpeg)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def select_cameras(args: argparse.Namespace, tolerance: float = 1e-3) -> list[KeyCamera]:
    """The cameras the arguments ask for (one, or a path's frames)."""
    width, height = _size(args.size)
    csize = _size(args.camera_size) if args.camera_size else (width, height)
    model = None
    if args.image or args.path:
        if not args.colmap:
            raise CameraError("--image/--path name images of a COLMAP model: add --colmap MODEL_DIR")
        from data_prep.colmap import read_model
        model = read_model(args.colmap)
    if args.path is not None or args.frames is not None:
        keys = [colmap_camera(model, n, tolerance) for n in args.path] if args.path else \
            [explicit_camera(c, csize, tolerance) for c in args.camera]
        return interpolate_path(keys, args.frames or 16)
    if args.image:
        return [colmap_camera(model, args.image, tolerance)]
    if len(args.camera) == 1:
        return [explicit_camera(args.camera[0], csize, tolerance)]
    raise CameraError("choose one: --image NAME (with --colmap), --camera NUMBERS, or a path (--path NAMES or "
                      "several --camera, with --frames N)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        bundle = load_camera_files(args.adapter)
        cameras = select_cameras(args, bundle.cfg.quat_tolerance)
        renderer = CameraRenderer.load(args.adapter, args.base, device=args.device)
    except CameraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    from ..generation.sampler import tensor_to_pil

    width, height = _size(args.size)
    images, records = [], []
    for i, cam in enumerate(tqdm(cameras, desc="rendering", disable=len(cameras) < 2)):
        vec = cam.vector(renderer.bundle.frame)
        img = renderer.render(vec, prompt=args.prompt, height=height, width=width, num_steps=args.steps,
                              seed=args.seed, guidance_scale=args.guidance)
        images.append(tensor_to_pil(img))
        records.append({"frame": i, "label": cam.label, "camera": cam.raw or None,
                        "vector": dict(zip(CAMERA_KEYS, (float(v) for v in vec))),
                        "instruction": renderer.instruction(vec, args.prompt), "seed": args.seed})
    for path in save_outputs(Path(args.out), images, records, mp4=args.mp4, fps=args.fps):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
