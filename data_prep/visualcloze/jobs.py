"""Graph200K rows -> conversion jobs (pairs or in-context grids), built in the worker processes."""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from deft_omni.core.atomic import atomic_path
from deft_omni.data.schema import SampleError, make_sample

from ..conversion import Conversion, Skip
from ..errors import ConversionError
from ..images import ImageError, load_rgb, prepare_image
from ..text import make_key
from .columns import content_of, incontext_instruction, pair_instruction, parse_tasks
from .sources import ArrowSource, Source


@dataclass(frozen=True)
class Job:
    key: str
    task: str
    instruction: str
    output: bytes | str
    inputs: tuple[bytes | str, ...]
    meta: tuple[tuple[str, Any], ...]
    max_side: int | None
    image_format: str
    reencode: bool
    render: str | None = None  # path of a grid picture to write
    grid: tuple[int, int] = (1, 1)  # rows, columns (render order: inputs then output)


def render_grid(cells: Sequence[Image.Image], rows: int, cols: int, path: str, cell: int = 256) -> None:
    """All cells, row-major, each scaled to ``cell`` px high, separated by 4 px gaps."""
    scaled = [c.resize((max(1, round(c.width * cell / c.height)), cell)) for c in cells]
    widths = [max(scaled[r * cols + j].width for r in range(rows)) for j in range(cols)]
    gap = 4
    canvas = Image.new("RGB", (sum(widths) + gap * (cols + 1), rows * cell + gap * (rows + 1)), (255, 255, 255))
    for idx, img in enumerate(scaled):
        r, j = divmod(idx, cols)
        canvas.paste(img, (gap + sum(widths[:j]) + gap * j, gap + r * (cell + gap)))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="JPEG", quality=90)


def build(job: Job | Skip) -> Any:
    if isinstance(job, Skip):
        return job
    try:
        out, _ = prepare_image(job.output, max_side=job.max_side, image_format=job.image_format,
                               reencode=job.reencode)
        ins = [prepare_image(src, max_side=job.max_side, image_format=job.image_format, reencode=job.reencode)[0]
               for src in job.inputs]
        sample = make_sample(job.key, job.instruction, out, ins, task=job.task, meta=dict(job.meta),
                             image_format=job.image_format)
        if job.render:
            cells = [load_rgb(src, 512) for src in (*job.inputs, job.output)]
            render_grid(cells, *job.grid, job.render)
        return sample
    except ImageError as exn:
        return Skip(job.key, str(exn))
    except SampleError as exn:
        return Skip(job.key, f"invalid sample: {exn.reason}")


def _quality_ok(info: dict[str, Any], minimum: int | None, keys: Sequence[str]) -> bool:
    if minimum is None:
        return True
    qa = info.get("quality_assessment")
    if not isinstance(qa, dict):
        return False
    for k in keys:
        v = qa.get(k)
        if v is None or not isinstance(v, (int, float)) or v < minimum:
            return False
    return True


def iter_jobs(args, source: Source, conv: Conversion):
    """Jobs (and Skips) in row order, made lazily: image bytes are read only for the job at hand."""
    tasks = parse_tasks(args.tasks)
    columns = sorted({c for t in tasks for c in t.columns})
    if isinstance(source, ArrowSource):
        if not any(source.has_column(c) for c in columns):
            raise ConversionError(f"{source.name} has none of the columns {columns} (it has: "
                                  f"{', '.join(sorted(source.names))}); is this Graph200K?")
    present = {c: source.has(c) for c in columns}
    n = len(source)
    keys = [k.strip() for k in args.quality_keys.split(",") if k.strip()]
    if args.min_quality is None:
        quality = [True] * n
    else:
        quality = [_quality_ok({"quality_assessment": qa}, args.min_quality, keys) for qa in source.qualities()]
    common = dict(max_side=args.max_side, image_format=args.image_format, reencode=args.reencode)
    pools = {}
    if args.mode == "incontext":
        for t in tasks:
            pools[t] = [i for i in range(n) if quality[i] and all(present[c][i] for c in t.columns)]
    rendered = 0
    for i in range(n):
        if not quality[i]:
            conv.note(f"rows below --min-quality {args.min_quality}")
            continue
        info = source.info(i)
        content = content_of(info, args.description_field)
        for t in tasks:
            parts = [args.split, f"{i:06d}"] + (["icl"] if args.mode == "incontext" else [])
            key = make_key(*parts, t.name.replace(">", "_to_"))
            missing = [c for c in t.columns if not present[c][i]]
            if missing:
                yield Skip(key, f"missing image: row {i} has no {' / '.join(repr(c) for c in missing)} image "
                                f"(None in Graph200K) for task {t.name}")
                continue
            meta = {"row": i, "split": args.split, "task": t.name, "collection": info.get("collection"),
                    "quality_assessment": info.get("quality_assessment"), "content": content}
            if args.mode == "pair":
                yield Job(key=key, task=f"visualcloze_{t.name}", instruction=pair_instruction(t, content),
                          output=source.image(i, t.output), inputs=tuple(source.image(i, c) for c in t.conditions),
                          meta=tuple(meta.items()), **common)
                continue
            rng = random.Random(zlib.crc32(f"{args.seed}:{t.name}:{i}".encode()))
            others = [j for j in pools[t] if j != i]
            if len(others) < args.examples:
                yield Skip(key, f"not enough example rows: task {t.name} has {len(others)} other usable "
                                f"row(s), --examples {args.examples}")
                continue
            examples = rng.sample(others, args.examples)
            conds = list(t.conditions)
            if args.shuffle_columns:
                rng.shuffle(conds)
            cols = (*conds, t.output)
            inputs = [source.image(r, c) for r in examples for c in cols] + [source.image(i, c) for c in conds]
            render = None
            if args.render_grid and rendered < args.render_limit:
                render = os.path.join(args.render_grid, key + ".jpg")
                rendered += 1
            meta.update(examples=examples, columns=list(cols))
            yield Job(key=key, task=f"visualcloze_icl_{t.name}",
                      instruction=incontext_instruction(cols, len(examples) + 1, content),
                      output=source.image(i, t.output), inputs=tuple(inputs), meta=tuple(meta.items()),
                      render=render, grid=(len(examples) + 1, len(cols)), **common)
