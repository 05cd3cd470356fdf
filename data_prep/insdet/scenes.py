"""InsDet scene photos (decoded small from 8k JPEGs) and object-in-scene crops from their VOC boxes."""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from deft_omni.data.schema import SampleError, make_sample, to_rgb

from ..conversion import Skip
from ..errors import ConversionError
from ..images import MIN_SIDE, ImageError, check_min_side, decode_image, list_images, open_image, read_bytes, shrink
from ..text import make_key, words_from_name
from .captions import caption_for, check_template
from .layout import LEVELS, describe_wrong_root, list_objects, object_id


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


def decode_scene(path: str, max_side: int | None, boxes: list,
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
        img, orig = decode_scene(job.image, job.max_side, boxes, job.crops != "off")
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
            caption = caption_for(job.captioner, scene, {**meta, "kind": "scene", "caption": job.instruction,
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
                                                    id=object_id(name), level=job.level).split())
        cmeta = {"level": job.level, "scene": job.scene, "image": os.path.basename(job.image), "object": name,
                 "words": w, "box": [round(v, 1) for v in (x0, y0, x1, y1)], "token": job.token,
                 "stored_size": list(crop.size)}
        try:
            caption = caption_for(job.captioner, crop, {**cmeta, "kind": "crop", "caption": default,
                                                     "path": job.image})
            out.append(make_sample(key, caption, crop, task="insdet_crop", meta=cmeta, image_format=job.image_format))
        except ImageError as exn:
            out.append(Skip(key, str(exn)))
        except SampleError as exn:
            out.append(Skip(key, f"invalid sample: {exn.reason}"))
    return out


def scene_jobs(args) -> list[SceneJob]:
    root = args.root
    scenes_dir = os.path.join(root, "Scenes")
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise ConversionError(f"--levels: unknown level(s) {bad}; InsDet has {list(LEVELS)}")
    present = [lv for lv in levels if os.path.isdir(os.path.join(scenes_dir, lv))]
    if not present:
        raise ConversionError(describe_wrong_root(root, "scenes"))
    check_template(args.template, "--template")
    check_template(args.crop_template, "--crop-template")
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
