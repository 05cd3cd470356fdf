"""InsDet (instance detection) -> deft_omni shards: object views and scenes.

Layout read (the data set's release)::

    <root>/Objects/000_aveda_shampoo/images/001.jpg ... 024.jpg   (turntable views)
                                    /masks/001.png ...             (binary masks)
    <root>/Scenes/{easy,hard}/<scene_name>/rgb_000.jpg + rgb_000.xml (Pascal VOC boxes)
    <root>/Background/*.jpg

``objects``: one sample per view, "a photo of sks <object words>" (words from the folder
name, token from --unique-token, template configurable).  Each view's mask is stored as
the sample's ``output_mask`` (for a masked loss; ``--no-masks`` leaves it out) and can
composite the object on a plain colour or on a Background/ image; objects by id or name;
N views per object, evenly spaced.

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

import argparse
import os
from collections.abc import Sequence

from ..cli import add_common_args, cli_main, load_callable, make_parser, parse_colour
from ..conversion import Conversion, Skip
from ..errors import ConversionError
from ..output import check_output
from .captions import DEFAULT_TEMPLATE
from .objects import build_object, object_jobs
from .scenes import build_scene, scene_jobs


SOURCE_OBJECTS = "insdet_objects"
SOURCE_SCENES = "insdet_scenes"


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
    o.add_argument("--masks", action=argparse.BooleanOptionalAction, default=True,
                   help="store each view's mask (masks/NNN.png) as the sample's output_mask, for a masked loss")
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
                   "composite": args.composite, "masks": args.masks, "template": args.template,
                   "captioner": args.captioner, "token": args.unique_token, "max_side": args.max_side}
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
