"""InsDet object views: one sample per turntable view, optionally composited through its mask."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

from PIL import Image

from deft_omni.data.schema import SampleError, make_sample

from ..conversion import Skip
from ..errors import ConversionError
from ..images import ImageError, check_min_side, list_images, load_rgb, prepare_image, prepare_mask
from ..text import make_key
from .captions import caption_for, check_template
from .layout import list_objects, select_objects


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
    store_mask: bool = True  # the view's mask becomes the sample's output_mask


def _cover(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover ``size`` and centre-crop (backgrounds keep their aspect)."""
    w, h = size
    s = max(w / img.width, h / img.height)
    resized = img.resize((max(w, round(img.width * s)), max(h, round(img.height * s))), Image.Resampling.BILINEAR)
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))


def build_object(job: ObjectJob) -> Any:
    meta = dict(job.meta)
    mask = None
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
                mask = prepare_mask(job.mask, img.size)
                if job.composite == "colour":
                    back = Image.new("RGB", img.size, job.colour)
                else:
                    back = _cover(load_rgb(job.background, max(img.size) * 2), img.size)
                img = Image.composite(img, back, mask)
            check_min_side(img.size, job.image)
            caption = caption_for(job.captioner, img, {**meta, "kind": "object", "caption": job.instruction,
                                                    "path": job.image})
            out, size = img, img.size
        meta["stored_size"] = list(size)
        if job.store_mask and job.mask is not None and mask is None:
            mask = prepare_mask(job.mask, size)
        return make_sample(job.key, caption, out, task="insdet_object", meta=meta, image_format=job.image_format,
                           output_mask=mask if job.store_mask else None)
    except ImageError as exn:
        return Skip(job.key, str(exn))
    except SampleError as exn:
        return Skip(job.key, f"invalid sample: {exn.reason}")


def object_jobs(args) -> list[ObjectJob]:
    root = args.root
    objects = select_objects(list_objects(root), args.objects)
    template = args.template
    check_template(template, "--template")
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
                                  image_format=args.image_format, reencode=args.reencode, store_mask=args.masks))
    return jobs
