"""Subject and class-prior images -> conversion jobs, built in the worker processes."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deft_omni.data.schema import SampleError, make_sample

from ..conversion import Skip
from ..errors import ConversionError
from ..images import ImageError, find_image, list_images, prepare_image, prepare_mask
from ..text import make_key


@dataclass(frozen=True)
class Job:
    key: str
    path: str
    instruction: str
    task: str
    meta: tuple[tuple[str, Any], ...]
    prior: bool
    max_side: int | None
    image_format: str
    reencode: bool
    mask: str | None = None  # stored as the sample's output_mask


def build(job: Job | Skip) -> Any:
    if isinstance(job, Skip):
        return job
    try:
        img, size = prepare_image(job.path, max_side=job.max_side, image_format=job.image_format,
                                  reencode=job.reencode)
        mask = prepare_mask(job.mask, size) if job.mask else None
        return make_sample(job.key, job.instruction, img, task=job.task,
                           meta={**dict(job.meta), "stored_size": list(size)}, image_format=job.image_format,
                           prior=job.prior, output_mask=mask)
    except ImageError as exn:
        return Skip(job.key, str(exn))
    except SampleError as exn:
        return Skip(job.key, f"invalid sample: {exn.reason}")


def fill(template: str, option: str, **fields: Any) -> str:
    try:
        return " ".join(template.format(**fields).split())
    except (KeyError, IndexError, ValueError) as exn:
        raise ConversionError(f"{option} {template!r}: unknown or malformed field {exn}; "
                              f"use {', '.join('{' + k + '}' for k in fields)}") from exn


def common_options(args) -> dict[str, Any]:
    return dict(max_side=args.max_side, image_format=args.image_format, reencode=args.reencode)


def mask_of(args, folder: str, name: str) -> str | None:
    """The --masks file of image ``<folder>/<name>``: ``<--masks>/<folder>/<stem>.png`` (or another
    image suffix); None without --masks or when there is none."""
    masks = getattr(args, "masks", None)
    return find_image(os.path.join(masks, folder), os.path.splitext(name)[0]) if masks else None


def _class_dir_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def prior_jobs(args, classes: Sequence[str] | None) -> list[Job | Skip]:
    """Class-prior jobs from --class-images: sub-folders per class, or a flat folder + --class-name."""
    folder = args.class_images
    if not folder:
        return []
    if not os.path.isdir(folder):
        raise ConversionError(f"--class-images {folder!r} is not a folder")
    subdirs = {_class_dir_name(d): os.path.join(folder, d) for d in sorted(os.listdir(folder))
               if os.path.isdir(os.path.join(folder, d))}
    flat = list_images(folder)
    if flat and not subdirs:
        if not args.class_name:
            raise ConversionError(f"--class-images {folder!r} holds images directly: give --class-name "
                                  "(or use one sub-folder per class)")
        by_class = {args.class_name: folder}
    elif subdirs:
        wanted = classes if classes is not None else [d.replace("_", " ") for d in subdirs]
        if args.class_name:
            wanted = [args.class_name]
        by_class = {}
        for cls in wanted:
            d = subdirs.get(_class_dir_name(cls))
            if d is None:
                raise ConversionError(f"--class-images {folder!r} has no sub-folder for class {cls!r} "
                                      f"(sub-folders: {', '.join(sorted(subdirs))})")
            by_class[cls] = d
    else:
        raise ConversionError(f"--class-images {folder!r} holds no images")
    jobs: list[Job | Skip] = []
    for cls, d in by_class.items():
        names = list_images(d)[: args.num_class_images or None]
        if not names:
            raise ConversionError(f"no class images in {d!r} for class {cls!r}")
        instruction = fill(args.prior_template, "--prior-template", cls=cls)
        for name in names:
            jobs.append(Job(key=make_key("prior", cls, os.path.splitext(name)[0]), path=os.path.join(d, name),
                            instruction=instruction, task="dreambooth_prior",
                            meta=(("class", cls), ("image", name)), prior=True, **common_options(args)))
    return jobs


def select(names: Sequence[str], spec: str | None, what: str) -> list[str]:
    if not spec:
        return list(names)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ConversionError(f"--{what}: unknown {unknown} (have: {', '.join(list(names)[:12])}"
                              f"{' ...' if len(names) > 12 else ''})")
    return [n for n in names if n in wanted]
