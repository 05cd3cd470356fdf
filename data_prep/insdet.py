"""InsDet (instance detection) -> deft_omni shards: object views and scenes.

Layout read (the data set's release)::

    <root>/Objects/000_aveda_shampoo/images/001.jpg ... 024.jpg   (turntable views)
                                    /masks/001.png ...             (binary masks)
    <root>/Scenes/{easy,hard}/<scene_name>/rgb_000.jpg + rgb_000.xml (Pascal VOC boxes)
    <root>/Background/*.jpg

``objects``: one sample per view, "a photo of sks <object words>" (words from the folder
name, token from --unique-token, template configurable).  The mask can composite the
object on a plain colour or on a Background/ image; objects by id or name; N views per
object, evenly spaced.

``scenes``: one sample per scene photo (downscaled on conversion: 8192x6144 originals are
decoded at 1/8 scale in the JPEG DCT domain), "a photo of sks <scene words>"; with
``--crops add|only`` also one object-in-scene crop per VOC box, captioned with that
object's words.

Captions: ``--template`` (fields {token} {words} {name} {id}) and an optional
``--captioner module:function`` called as ``function(image, info) -> str | None`` in the
worker processes (``info``: kind, words, token, caption (the template's), path, ...;
None keeps the template caption).  Nothing is downloaded.

    python -m data_prep.insdet objects --root InsDet --out data/insdet_objects/train
    python -m data_prep.insdet scenes --root InsDet --out data/insdet_scenes/train --crops add
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from deft_omni.data.schema import SampleError, make_sample, to_rgb

from .common import (
    MIN_SIDE,
    Conversion,
    ConversionError,
    ImageError,
    Skip,
    add_common_args,
    check_min_side,
    check_output,
    cli_main,
    decode_image,
    list_images,
    load_callable,
    load_mask,
    load_rgb,
    make_key,
    make_parser,
    open_image,
    parse_colour,
    prepare_image,
    read_bytes,
    shrink,
    words_from_name,
)

SOURCE_OBJECTS = "insdet_objects"
SOURCE_SCENES = "insdet_scenes"
LEVELS = ("easy", "hard")
_OBJECT_DIR = re.compile(r"^(\d+)_(.+)$")
DEFAULT_TEMPLATE = "a photo of {token} {words}"


# ------------------------------------------------------------------------ root checks


def _looks_like_object_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "images"))


EXPECTED_LAYOUT = ("Expected the InsDet root folder, which holds Objects/NNN_name/images/*.jpg (+ masks/*.png), "
                   "Scenes/{easy,hard}/<scene>/rgb_*.jpg (+ rgb_*.xml) and Background/")


def _describe_wrong_root(root: str, want: str) -> str:
    if not os.path.isdir(root):
        return f"--root {root!r} does not exist; {EXPECTED_LAYOUT}"
    entries = sorted(os.listdir(root))
    name = os.path.basename(os.path.normpath(root))
    if _looks_like_object_dir(root):
        hint = "it looks like ONE object folder (it has images/); pass the folder two levels up. "
    elif any(_OBJECT_DIR.match(e) and _looks_like_object_dir(os.path.join(root, e)) for e in entries):
        hint = "it looks like the Objects/ folder itself; pass its parent. "
    elif any(e in LEVELS for e in entries):
        hint = "it looks like the Scenes/ folder itself; pass its parent. "
    elif name in LEVELS:
        hint = "it looks like a Scenes/<level> folder; pass the folder two levels up. "
    else:
        hint = ""
    missing = "Objects/" if want == "objects" else "Scenes/easy/ or Scenes/hard/"
    shown = ", ".join(entries[:8]) + (" ..." if len(entries) > 8 else "") if entries else "nothing"
    return f"--root {root!r} has no {missing} (it holds: {shown}); {hint}{EXPECTED_LAYOUT}"


# --------------------------------------------------------------------------- captions


_CAPTIONERS: dict[str, Any] = {}


def _caption(spec: str | None, image: Image.Image, info: dict[str, Any]) -> str:
    """The template caption, or the captioner's when one is given and returns a string."""
    if not spec:
        return info["caption"]
    fn = _CAPTIONERS.get(spec)
    if fn is None:
        fn = _CAPTIONERS[spec] = load_callable(spec)
    try:
        text = fn(image, dict(info))
    except Exception as exn:  # noqa: BLE001 - a user hook: report, do not crash the run
        raise ImageError(f"captioner failed: {spec} on {info.get('path')} ({type(exn).__name__}: {exn})") from exn
    if text is None:
        return info["caption"]
    if not isinstance(text, str) or not text.strip():
        raise ImageError(f"captioner failed: {spec} returned {text!r} for {info.get('path')} (expected a string)")
    return text.strip()


def _check_template(template: str, option: str) -> None:
    try:
        template.format(token="sks", words="w", name="n", id=0, level="easy")
    except (KeyError, IndexError, ValueError) as exn:
        raise ConversionError(f"{option} {template!r}: unknown or malformed field {exn}; "
                              "use {token}, {words}, {name}, {id} (scenes also {level})") from exn


# ---------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class ObjectInfo:
    id: int
    name: str  # folder name, e.g. 000_aveda_shampoo
    words: str
    path: str


def list_objects(root: str) -> list[ObjectInfo]:
    objects_dir = os.path.join(root, "Objects")
    if not os.path.isdir(objects_dir):
        raise ConversionError(_describe_wrong_root(root, "objects"))
    out = []
    for entry in sorted(os.listdir(objects_dir)):
        m = _OBJECT_DIR.match(entry)
        path = os.path.join(objects_dir, entry)
        if m and os.path.isdir(path):
            out.append(ObjectInfo(int(m.group(1)), entry, words_from_name(entry), path))
    if not out:
        raise ConversionError(f"{objects_dir!r} holds no NNN_name object folders; {EXPECTED_LAYOUT}")
    return out


def select_objects(objects: list[ObjectInfo], selectors: str | None) -> list[ObjectInfo]:
    """'--objects 0,12,aveda_shampoo,binder clips': by id, folder name or words."""
    if not selectors:
        return objects
    chosen: list[ObjectInfo] = []
    for sel in (s.strip() for s in selectors.split(",")):
        if not sel:
            continue
        norm = sel.lower().replace("_", " ")
        hits = [o for o in objects if (sel.isdigit() and o.id == int(sel)) or o.name.lower() == sel.lower()
                or o.words.lower() == norm]
        if not hits:
            sample = ", ".join(f"{o.id}:{o.words}" for o in objects[:6])
            raise ConversionError(f"--objects: no object matches {sel!r} (give ids, folder names or words; "
                                  f"e.g. {sample}{' ...' if len(objects) > 6 else ''})")
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen, key=lambda o: o.id)


def pick_views(names: list[str], n: int | None) -> list[str]:
    """n views evenly spaced over the turntable (all when n is None or >= the count)."""
    if not n or n >= len(names):
        return names
    return [names[(i * len(names)) // n] for i in range(n)]


@dataclass(frozen=True)
class ObjectJob:
    key: str
    image: str
    mask: str | None
    instruction: str
    meta: tuple[tuple[str, Any], ...]
    composite: str  # none | colour | background
    colour: tuple[int, int, int]
    background: str | None
    captioner: str | None
    max_side: int | None
    image_format: str
    reencode: bool


def _cover(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover ``size`` and centre-crop (backgrounds keep their aspect)."""
    w, h = size
    s = max(w / img.width, h / img.height)
    resized = img.resize((max(w, round(img.width * s)), max(h, round(img.height * s))), Image.Resampling.BILINEAR)
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))


def build_object(job: ObjectJob) -> Any:
    meta = dict(job.meta)
    try:
        if job.composite == "none" and not job.captioner:
            out, size = prepare_image(job.image, max_side=job.max_side, image_format=job.image_format,
                                      reencode=job.reencode)
            caption = job.instruction
        else:
            img = load_rgb(job.image, job.max_side)
            if job.composite != "none":
                if job.mask is None or not os.path.isfile(job.mask):
                    return Skip(job.key, f"mask not found: {job.mask or job.image} (needed by --composite "
                                         f"{job.composite}; use --composite none or add masks/)")
                mask = load_mask(job.mask, size=img.size)
                if job.composite == "colour":
                    back = Image.new("RGB", img.size, job.colour)
                else:
                    back = _cover(load_rgb(job.background, max(img.size) * 2), img.size)
                img = Image.composite(img, back, mask)
            check_min_side(img.size, job.image)
            caption = _caption(job.captioner, img, {**meta, "kind": "object", "caption": job.instruction,
                                                    "path": job.image})
            out, size = img, img.size
        meta["stored_size"] = list(size)
        return make_sample(job.key, caption, out, task="insdet_object", meta=meta, image_format=job.image_format)
    except ImageError as exn:
        return Skip(job.key, str(exn))
    except SampleError as exn:
        return Skip(job.key, f"invalid sample: {exn.reason}")


def object_jobs(args) -> list[ObjectJob]:
    root = args.root
    objects = select_objects(list_objects(root), args.objects)
    template = args.template
    _check_template(template, "--template")
    backgrounds: list[str] = []
    if args.composite == "background":
        bg_dir = args.backgrounds or os.path.join(root, "Background")
        backgrounds = [os.path.join(bg_dir, n) for n in list_images(bg_dir)]
        if not backgrounds:
            raise ConversionError(f"--composite background: no images in {bg_dir!r} (InsDet's Background/ "
                                  "folder, or give --backgrounds DIR)")
    jobs = []
    for obj in objects:
        views = list_images(os.path.join(obj.path, "images"))
        if not views:
            jobs.append(Skip(make_key("obj", f"{obj.id:03d}"),
                             f"no views: {os.path.join(obj.path, 'images')} holds no images"))
            continue
        for view in pick_views(views, args.views):
            stem = os.path.splitext(view)[0]
            key = make_key("obj", f"{obj.id:03d}", stem)
            mask = os.path.join(obj.path, "masks", stem + ".png")
            background = None
            if backgrounds:
                background = backgrounds[zlib.crc32(key.encode()) % len(backgrounds)]
            meta = {"object_id": obj.id, "object": obj.name, "words": obj.words, "view": view,
                    "token": args.unique_token, "composite": args.composite}
            if background:
                meta["background"] = os.path.basename(background)
            instruction = template.format(token=args.unique_token, words=obj.words, name=obj.name, id=obj.id,
                                          level="")
            jobs.append(ObjectJob(key=key, image=os.path.join(obj.path, "images", view),
                                  mask=mask if os.path.isfile(mask) else None,
                                  instruction=" ".join(instruction.split()), meta=tuple(meta.items()),
                                  composite=args.composite, colour=args.background_colour,
                                  background=background, captioner=args.captioner, max_side=args.max_side,
                                  image_format=args.image_format, reencode=args.reencode))
    return jobs


# ----------------------------------------------------------------------------- scenes


class VocError(ValueError):
    pass


def parse_voc(path: str) -> tuple[tuple[int, int] | None, list[tuple[str, tuple[float, float, float, float]]]]:
    """Pascal VOC: ((width, height) or None, [(object name, (xmin, ymin, xmax, ymax))])."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exn:
        raise VocError(f"unreadable XML: {path} ({exn})") from exn
    except OSError as exn:
        raise VocError(f"unreadable XML: {path} ({exn.strerror or exn})") from exn
    root = tree.getroot()
    size = None
    s = root.find("size")
    if s is not None:
        try:
            size = (int(float(s.findtext("width"))), int(float(s.findtext("height"))))
        except (TypeError, ValueError):
            size = None
    boxes = []
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        try:
            coords = tuple(float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError) as exn:
            raise VocError(f"unreadable XML: {path}: object {i} ({name or 'no name'}) has no valid bndbox") from exn
        if not name:
            raise VocError(f"unreadable XML: {path}: object {i} has no <name>")
        boxes.append((name, coords))  # type: ignore[arg-type]
    return size, boxes


@dataclass(frozen=True)
class SceneJob:
    key: str
    image: str
    xml: str | None
    level: str
    scene: str
    words: str
    instruction: str
    crops: str  # off | add | only
    crop_template: str
    crop_margin: float
    min_crop_side: int
    token: str
    captioner: str | None
    max_side: int | None
    image_format: str
    reencode: bool
    object_words: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _scene_decode(path: str, max_side: int | None, boxes: list,
                  want_crops: bool) -> tuple[Image.Image, tuple[int, int]]:
    """Decode once, at the smallest JPEG draft scale that still serves the scene (max_side)
    and every crop (each box's longer side up to max_side).  Returns (image, original size)."""
    data = read_bytes(path)
    img = open_image(data, path)
    orig = img.size
    need = max_side
    if want_crops and boxes and max_side:
        longest = max(orig)
        for _, (x0, y0, x1, y1) in boxes:
            side = max(x1 - x0, y1 - y0, 1.0)
            need = max(need, math.ceil(max_side * longest / side))
    img = decode_image(img, path, None if need is None or need >= max(orig) else need)
    return to_rgb(img), orig


def build_scene(job: SceneJob) -> list[Any]:
    out: list[Any] = []
    boxes: list = []
    xml_size = None
    if job.xml is not None:
        try:
            xml_size, boxes = parse_voc(job.xml)
        except VocError as exn:
            out.append(Skip(make_key(job.key, "xml"), f"{exn}; the scene is kept without boxes"
                            + ("" if job.crops == "off" else " and crops")))
    elif job.crops != "off":
        out.append(Skip(make_key(job.key, "xml"), f"annotation not found: {job.image} has no .xml beside it; "
                                                  "no crops for this scene"))
    try:
        img, orig = _scene_decode(job.image, job.max_side, boxes, job.crops != "off")
    except ImageError as exn:
        return out + [Skip(job.key, str(exn))]
    # Boxes live in the annotated size (VOC <size>, else the original image size).
    ref = xml_size or orig
    sx, sy = img.width / ref[0], img.height / ref[1]
    meta = {"level": job.level, "scene": job.scene, "image": os.path.basename(job.image),
            "original_size": list(orig), "objects": [n for n, _ in boxes],
            "boxes": [[round(v, 1) for v in b] for _, b in boxes], "token": job.token}
    if job.crops != "only":
        scene = shrink(img, job.max_side)
        try:
            check_min_side(scene.size, job.image)
            caption = _caption(job.captioner, scene, {**meta, "kind": "scene", "caption": job.instruction,
                                                      "path": job.image, "words": job.words})
            out.append(make_sample(job.key, caption, scene, task="insdet_scene",
                                   meta={**meta, "stored_size": list(scene.size)}, image_format=job.image_format))
        except ImageError as exn:
            out.append(Skip(job.key, str(exn)))
        except SampleError as exn:
            out.append(Skip(job.key, f"invalid sample: {exn.reason}"))
    if job.crops == "off":
        return out
    words = dict(job.object_words)
    for i, (name, (x0, y0, x1, y1)) in enumerate(boxes):
        key = make_key(job.key, "crop", f"{i:02d}")
        if min(x1 - x0, y1 - y0) < job.min_crop_side:
            out.append(Skip(key, f"crop too small: box {i} ({name}) is {x1 - x0:.0f}x{y1 - y0:.0f} px "
                                 f"< --min-crop-side {job.min_crop_side}"))
            continue
        mx, my = (x1 - x0) * job.crop_margin, (y1 - y0) * job.crop_margin
        box = (max(0, (x0 - mx) * sx), max(0, (y0 - my) * sy), min(img.width, (x1 + mx) * sx),
               min(img.height, (y1 + my) * sy))
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            out.append(Skip(key, f"box outside image: box {i} ({name}) {x0, y0, x1, y1} lies outside {ref}"))
            continue
        crop = shrink(img.crop(tuple(round(v) for v in box)), job.max_side)
        if min(crop.size) < MIN_SIDE:
            out.append(Skip(key, f"crop too small: box {i} ({name}) gives {crop.size[0]}x{crop.size[1]} px; "
                                 f"OmniGen needs sides of at least {MIN_SIDE} px"))
            continue
        w = words.get(name) or words_from_name(name)
        default = " ".join(job.crop_template.format(token=job.token, words=w, name=name,
                                                    id=_object_id(name), level=job.level).split())
        cmeta = {"level": job.level, "scene": job.scene, "image": os.path.basename(job.image), "object": name,
                 "words": w, "box": [round(v, 1) for v in (x0, y0, x1, y1)], "token": job.token,
                 "stored_size": list(crop.size)}
        try:
            caption = _caption(job.captioner, crop, {**cmeta, "kind": "crop", "caption": default,
                                                     "path": job.image})
            out.append(make_sample(key, caption, crop, task="insdet_crop", meta=cmeta, image_format=job.image_format))
        except ImageError as exn:
            out.append(Skip(key, str(exn)))
        except SampleError as exn:
            out.append(Skip(key, f"invalid sample: {exn.reason}"))
    return out


def _object_id(name: str) -> int | str:
    m = _OBJECT_DIR.match(name)
    return int(m.group(1)) if m else ""


def scene_jobs(args) -> list[SceneJob]:
    root = args.root
    scenes_dir = os.path.join(root, "Scenes")
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise ConversionError(f"--levels: unknown level(s) {bad}; InsDet has {list(LEVELS)}")
    present = [lv for lv in levels if os.path.isdir(os.path.join(scenes_dir, lv))]
    if not present:
        raise ConversionError(_describe_wrong_root(root, "scenes"))
    _check_template(args.template, "--template")
    _check_template(args.crop_template, "--crop-template")
    wanted = {s.strip() for s in (args.scenes or "").split(",") if s.strip()}
    object_words = ()
    if os.path.isdir(os.path.join(root, "Objects")):
        try:
            object_words = tuple((o.name, o.words) for o in list_objects(root))
        except ConversionError:
            object_words = ()
    jobs = []
    for level in present:
        level_dir = os.path.join(scenes_dir, level)
        for scene in sorted(os.listdir(level_dir)):
            scene_dir = os.path.join(level_dir, scene)
            if not os.path.isdir(scene_dir) or (wanted and scene not in wanted):
                continue
            words = words_from_name(scene, drop_leading_number=False)
            instruction = " ".join(args.template.format(token=args.unique_token, words=words, name=scene,
                                                        id=scene, level=level).split())
            for name in list_images(scene_dir):
                stem = os.path.splitext(name)[0]
                xml = os.path.join(scene_dir, stem + ".xml")
                jobs.append(SceneJob(key=make_key("scene", level, scene, stem), image=os.path.join(scene_dir, name),
                                     xml=xml if os.path.isfile(xml) else None, level=level, scene=scene,
                                     words=words, instruction=instruction, crops=args.crops,
                                     crop_template=args.crop_template,
                                     crop_margin=args.crop_margin, min_crop_side=args.min_crop_side,
                                     token=args.unique_token, captioner=args.captioner, max_side=args.max_side,
                                     image_format=args.image_format, reencode=args.reencode,
                                     object_words=object_words))
    if wanted:
        found = {j.scene for j in jobs}
        if wanted - found:
            raise ConversionError(f"--scenes: not found under {scenes_dir!r}: {sorted(wanted - found)}")
    if not jobs:
        raise ConversionError(f"no scene images (rgb_*.jpg) under {scenes_dir!r}/{{{','.join(present)}}}/<scene>/")
    return jobs


# -------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None):
    p = make_parser("InsDet objects / scenes -> deft_omni webdataset shards", prog="python -m data_prep.insdet")
    sub = p.add_subparsers(dest="mode", required=True)
    fmt = {"formatter_class": p.formatter_class}
    o = sub.add_parser("objects", help="one sample per object view (Objects/NNN_name/images/*.jpg)", **fmt)
    s = sub.add_parser("scenes", help="one sample per scene photo (Scenes/{easy,hard}/<scene>/rgb_*.jpg)",
                       **fmt)
    for q in (o, s):
        q.add_argument("--root", required=True, help="the InsDet folder holding Objects/, Scenes/, Background/")
        q.add_argument("--template", default=DEFAULT_TEMPLATE,
                       help="caption template; fields {token} {words} {name} {id} (scenes: {level})")
        q.add_argument("--captioner", default=None,
                       help="module:function called as function(image, info) -> caption or None")
    o.add_argument("--objects", default=None, help="comma-separated ids, folder names or words (default: all)")
    o.add_argument("--views", type=int, default=None, help="views per object, evenly spaced (default: all)")
    o.add_argument("--composite", choices=["none", "colour", "background"], default="none",
                   help="paste the masked object on a plain colour or a Background/ image")
    o.add_argument("--background-colour", type=parse_colour, default=(255, 255, 255),
                   help="colour for --composite colour: white, black, gray, #rrggbb or r,g,b")
    o.add_argument("--backgrounds", default=None, help="folder of background images (default: <root>/Background)")
    s.add_argument("--levels", default="easy,hard", help="scene levels to convert")
    s.add_argument("--scenes", default=None, help="comma-separated scene folder names (default: all)")
    s.add_argument("--crops", choices=["off", "add", "only"], default="off",
                   help="object-in-scene crops from the VOC boxes: none, besides the scenes, or only crops")
    s.add_argument("--crop-template", default=DEFAULT_TEMPLATE, help="caption template of crops")
    s.add_argument("--crop-margin", type=float, default=0.1, help="margin around a box, as a fraction of its size")
    s.add_argument("--min-crop-side", type=int, default=32, help="skip boxes smaller than this (original px)")
    add_common_args(o)
    add_common_args(s)
    return p.parse_args(argv)


def run(argv: Sequence[str] | None = None):
    args = parse_args(argv)
    check_output(args.out, args.overwrite)  # Refuse before any (long) listing of the inputs.
    if args.captioner:
        load_callable(args.captioner)  # Fail now, with a message, not in every worker.
    if args.mode == "objects":
        if args.views is not None and args.views < 1:
            raise ConversionError(f"--views must be >= 1, got {args.views}")
        jobs, build, source = object_jobs(args), build_object, SOURCE_OBJECTS
        options = {"root": os.path.abspath(args.root), "objects": args.objects, "views": args.views,
                   "composite": args.composite, "template": args.template, "captioner": args.captioner,
                   "token": args.unique_token, "max_side": args.max_side}
    else:
        jobs, build, source = scene_jobs(args), build_scene, SOURCE_SCENES
        options = {"root": os.path.abspath(args.root), "levels": args.levels, "scenes": args.scenes,
                   "crops": args.crops, "template": args.template, "crop_template": args.crop_template,
                   "captioner": args.captioner, "token": args.unique_token, "max_side": args.max_side}
    with Conversion(args, source=source, options=options) as conv:
        ready = [j for j in jobs if isinstance(j, Skip)]
        for item in ready:
            conv.handle(item)
        # Scene photos are heavy (8k JPEGs): one per message keeps both workers busy.
        conv.run(build, [j for j in jobs if not isinstance(j, Skip)], chunk=1 if args.mode == "scenes" else None)
    return conv


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, argv, prog="data_prep.insdet")


if __name__ == "__main__":
    raise SystemExit(main())
