"""VisualCloze's Graph200K -> deft_omni shards: condition->target pairs or in-context grids.

Layouts read (either):

* the ``datasets`` DatasetDict written by ``save_to_disk`` (``dataset_dict.json``,
  ``<split>/data-XXXXX-of-YYYYY.arrow``, ``dataset_info.json``, ``state.json``), read with
  ``datasets.load_from_disk``; a single split's folder works too;
* VisualCloze's folder export (its ``processing.py``): ``<root>/<split>/data.json`` (a
  list of rows with ``condition``: column -> absolute image path, ``ref`` renamed
  ``reference``, ``qwen_2_5_mask`` -> ``mask``, the box image -> ``bbox``) and one folder
  per column.  Stale absolute paths (a moved export) fall back to ``<split>/<column>/<file>``.

Columns (names as in Graph200K; aliases accepted): reference (ref), target, depth,
canny, hed, normal, mlsd, openpose, sam2_mask, uniformer, foreground, DepthEdit, mask
(qwen_2_5_mask), bbox (qwen_2_5_bounding_box).  A task is ``cond[+cond...][>out]``
(``depth`` = depth -> target; ``reference+depth``; ``target>depth`` = dense prediction).

``--mode pair`` (the DEFT authors' setup): the task's condition image(s) as input(s),
the target as output, "Following the depth map <img><|image_1|></img>, generate a
high-quality image: <description>."
``--mode incontext`` (VisualCloze's): ``--examples`` 1-3 other rows of the same task
plus the query row; every example cell and the query's conditions are input images in
row-major order; the instruction = a layout sentence, a task sentence naming each column
([IMAGE1] ... [IMAGEC]) and a content sentence from the query's description.
``--render-grid DIR`` writes the whole grid of the first ``--render-limit`` samples as one
picture.  ``--min-quality`` filters on ``quality_assessment``; rows whose needed image is
None are skipped (listed in the manifest, counted in the summary).

    python -m data_prep.visualcloze --root Graph200K --split train --out data/visualcloze/train
"""

from __future__ import annotations

import json
import os
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from deft_omni.data.schema import SampleError, make_sample

from .common import (
    Conversion,
    ConversionError,
    ImageError,
    Skip,
    add_common_args,
    check_output,
    cli_main,
    load_rgb,
    make_key,
    make_parser,
    prepare_image,
)

SOURCE = "visualcloze"

# canonical name -> (arrow column, data.json condition key, noun phrase, article)
COLUMNS: dict[str, tuple[str, str, str, str]] = {
    "reference": ("ref", "reference", "reference image of the subject", "a"),
    "target": ("target", "target", "high-quality image", "a"),
    "depth": ("depth", "depth", "depth map", "a"),
    "canny": ("canny", "canny", "canny edge map", "a"),
    "hed": ("hed", "hed", "HED soft-edge map", "an"),
    "normal": ("normal", "normal", "surface normal map", "a"),
    "mlsd": ("mlsd", "mlsd", "MLSD line-segment map", "an"),
    "openpose": ("openpose", "openpose", "OpenPose human skeleton", "an"),
    "sam2_mask": ("sam2_mask", "sam2_mask", "SAM2 segmentation map", "a"),
    "uniformer": ("uniformer", "uniformer", "UniFormer semantic segmentation map", "a"),
    "foreground": ("foreground", "foreground", "foreground object on a plain background", "a"),
    "DepthEdit": ("DepthEdit", "DepthEdit", "depth-guided edit of the image", "a"),
    "mask": ("qwen_2_5_mask", "mask", "open-world object mask", "an"),
    "bbox": ("qwen_2_5_bounding_box", "bbox", "object bounding-box map", "an"),
}
ALIASES = {"ref": "reference", "qwen_2_5_mask": "mask", "qwen_2_5_bounding_box": "bbox",
           "depth_anything_v2": "depth", "midas_depth_normal": "normal", "image": "target"}
DEFAULT_TASKS = "canny,depth,hed,normal,mlsd,openpose,sam2_mask,uniformer"
QUALITY_KEYS = ("compositeStructure", "objectConsistency", "imageQuality")
LAYOUTS = ("a DatasetDict saved with save_to_disk (dataset_dict.json + <split>/data-*.arrow), one split of it "
           "(state.json + data-*.arrow), or VisualCloze's folder export (<split>/data.json + one folder per column)")


def _column(name: str) -> str:
    canon = ALIASES.get(name, name)
    if canon not in COLUMNS:
        raise ConversionError(f"unknown Graph200K column {name!r}; known: {', '.join(COLUMNS)} "
                              f"(aliases: {', '.join(f'{a}={c}' for a, c in ALIASES.items())})")
    return canon


@dataclass(frozen=True)
class Task:
    conditions: tuple[str, ...]
    output: str

    @property
    def name(self) -> str:
        conds = "+".join(self.conditions)
        return conds if self.output == "target" else f"{conds}>{self.output}"

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.conditions, self.output)


def parse_tasks(spec: str) -> list[Task]:
    tasks = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        conds, _, out = item.partition(">")
        task = Task(tuple(_column(c.strip()) for c in conds.split("+") if c.strip()), _column(out.strip() or "target"))
        if not task.conditions:
            raise ConversionError(f"--tasks: {item!r} names no condition column")
        if task.output in task.conditions:
            raise ConversionError(f"--tasks: {item!r} uses {task.output!r} as condition and output")
        tasks.append(task)
    if not tasks:
        raise ConversionError("--tasks is empty")
    return tasks


def _noun(col: str) -> str:
    return COLUMNS[col][2]


def _a(col: str) -> str:
    return f"{COLUMNS[col][3]} {COLUMNS[col][2]}"


# ---------------------------------------------------------------------------- sources


class Source:
    """Row access shared by both layouts: images as bytes or a path (None when absent)."""

    name: str

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def has(self, column: str) -> list[bool]:  # pragma: no cover - interface
        raise NotImplementedError

    def image(self, i: int, column: str) -> bytes | str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def info(self, i: int) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def qualities(self) -> list[Any]:  # pragma: no cover - interface
        raise NotImplementedError


class ArrowSource(Source):
    def __init__(self, path: str, split: str | None):
        try:
            import datasets
        except ImportError as exn:  # pragma: no cover - datasets is in the dev extra
            raise ConversionError("reading a save_to_disk dataset needs the 'datasets' package "
                                  "(pip install datasets)") from exn
        try:
            loaded = datasets.load_from_disk(path)
        except Exception as exn:  # noqa: BLE001 - surface datasets' reason with the path
            raise ConversionError(f"cannot load {path!r} with datasets.load_from_disk "
                                  f"({type(exn).__name__}: {exn}); expected {LAYOUTS}") from exn
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConversionError(f"--split {split!r} is not in {path!r} (splits: {', '.join(loaded)})")
            ds = loaded[split]
        else:
            ds = loaded
        if getattr(ds, "_indices", None) is not None:
            ds = ds.flatten_indices()
        self.ds = ds
        self.table = ds.data.table
        self.name = f"{path}[{split}]" if isinstance(loaded, datasets.DatasetDict) else path
        self.names = set(self.table.column_names)

    def __len__(self) -> int:
        return self.table.num_rows

    def _arrow_name(self, column: str) -> str:
        return COLUMNS[column][0]

    def has_column(self, column: str) -> bool:
        return self._arrow_name(column) in self.names

    def has(self, column: str) -> list[bool]:
        import pyarrow.compute as pc

        if not self.has_column(column):
            return [False] * len(self)
        return [not v for v in pc.is_null(self.table.column(self._arrow_name(column))).to_pylist()]

    def image(self, i: int, column: str) -> bytes | str | None:
        if not self.has_column(column):
            return None
        value = self.table.column(self._arrow_name(column))[i].as_py()
        if value is None:
            return None
        if isinstance(value, dict):
            return value.get("bytes") or value.get("path")
        return value  # bytes stored directly

    def qualities(self) -> list[Any]:
        if "quality_assessment" not in self.names:
            return [None] * len(self)
        return self.table.column("quality_assessment").to_pylist()

    def info(self, i: int) -> dict[str, Any]:
        out = {}
        for name in ("quality_assessment", "description", "collection"):
            if name in self.names:
                out[name] = self.table.column(name)[i].as_py()
        return out


class FolderSource(Source):
    def __init__(self, split_dir: str):
        path = os.path.join(split_dir, "data.json")
        try:
            with open(path, encoding="utf-8") as fh:
                rows = json.load(fh)
        except ValueError as exn:
            raise ConversionError(f"{path} is not valid JSON ({exn}); re-export it with VisualCloze's "
                                  "processing.py") from exn
        except OSError as exn:
            raise ConversionError(f"cannot read {path} ({exn.strerror or exn})") from exn
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ConversionError(f"{path} must hold a JSON list of row objects (VisualCloze's data.json)")
        self.rows, self.split_dir, self.name = rows, split_dir, path

    def __len__(self) -> int:
        return len(self.rows)

    def _path(self, i: int, column: str) -> str | None:
        cond = self.rows[i].get("condition") or {}
        value = cond.get(COLUMNS[column][1])
        if not isinstance(value, str) or not value:
            return None
        if os.path.isabs(value) and os.path.exists(value):
            return value
        # A moved export: keep "<column folder>/<file>" and look beside data.json.
        local = os.path.join(self.split_dir, os.path.basename(os.path.dirname(value)), os.path.basename(value))
        if os.path.exists(local):
            return local
        return value if os.path.isabs(value) else os.path.join(self.split_dir, value)

    def has(self, column: str) -> list[bool]:
        return [self._path(i, column) is not None for i in range(len(self))]

    def image(self, i: int, column: str) -> bytes | str | None:
        return self._path(i, column)

    def qualities(self) -> list[Any]:
        return [r.get("quality_assessment") for r in self.rows]

    def info(self, i: int) -> dict[str, Any]:
        return {k: self.rows[i].get(k) for k in ("quality_assessment", "description", "collection")}


def open_source(root: str, split: str) -> Source:
    if not os.path.exists(root):
        raise ConversionError(f"--root {root!r} does not exist; expected {LAYOUTS}")
    if os.path.isfile(os.path.join(root, "dataset_dict.json")):
        return ArrowSource(root, split)
    if os.path.isfile(os.path.join(root, "state.json")):
        return ArrowSource(root, None)
    split_dir = os.path.join(root, split)
    if os.path.isfile(os.path.join(split_dir, "state.json")):
        return ArrowSource(split_dir, None)
    if os.path.isfile(os.path.join(split_dir, "data.json")):
        return FolderSource(split_dir)
    if os.path.isfile(os.path.join(root, "data.json")):
        return FolderSource(root)
    held = ", ".join(sorted(os.listdir(root))[:10]) if os.path.isdir(root) else "(not a folder)"
    raise ConversionError(f"--root {root!r} (split {split!r}) is not a Graph200K copy (it holds: {held}); "
                          f"expected {LAYOUTS}")


# ------------------------------------------------------------------------ instructions


def _content(info: dict[str, Any], field: str) -> str | None:
    desc = info.get("description")
    if isinstance(desc, str):
        return desc.strip() or None
    if not isinstance(desc, dict) or desc.get("description_valid") is False:
        return None
    for key in (field, "description_0", "description_1", "item"):
        text = desc.get(key)
        if isinstance(text, str) and text.strip():
            return text.strip()
    return None


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def pair_instruction(task: Task, content: str | None) -> str:
    conds = [f"the {_noun(c)} <img><|image_{k}|></img>" for k, c in enumerate(task.conditions, start=1)]
    joined = conds[0] if len(conds) == 1 else ", ".join(conds[:-1]) + " and " + conds[-1]
    text = f"Following {joined}, generate {_a(task.output)}"
    return _sentence(f"{text}: {content}" if content and task.output == "target" else text)


def incontext_instruction(columns: Sequence[str], n_rows: int, content: str | None) -> str:
    """Layout + task + content sentences; tags <|image_k|> in row-major order, the query
    row's last cell being the image to generate."""
    n_cols = len(columns)
    layout = (f"A grid of {n_rows} rows and {n_cols} columns, {n_rows * n_cols} images in all; "
              "every row follows the same task.")
    naming = ", ".join(f"[IMAGE{j}] {_a(c)}" for j, c in enumerate(columns, start=1))
    task = f"In each row: {naming}."
    k = 1
    rows = []
    for r in range(n_rows):
        cells = []
        for j in range(n_cols):
            if r == n_rows - 1 and j == n_cols - 1:
                cells.append("the missing image")
            else:
                cells.append(f"<img><|image_{k}|></img>")
                k += 1
        rows.append(f"Row {r + 1}: " + " ".join(cells) + ".")
    text = " ".join([layout, task, *rows])
    if content:
        text += " " + _sentence(f"The last image of the last row shows: {content}")
    return text


# ---------------------------------------------------------------------------- building


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


def _label(src: bytes | str) -> str:
    return src if isinstance(src, str) else "image bytes"


def render_grid(cells: Sequence[Image.Image], rows: int, cols: int, path: str, cell: int = 256) -> None:
    """All cells, row-major, each scaled to ``cell`` px high, separated by 4 px gaps."""
    scaled = [c.resize((max(1, round(c.width * cell / c.height)), cell)) for c in cells]
    widths = [max(scaled[r * cols + j].width for r in range(rows)) for j in range(cols)]
    gap = 4
    canvas = Image.new("RGB", (sum(widths) + gap * (cols + 1), rows * cell + gap * (rows + 1)), (255, 255, 255))
    for idx, img in enumerate(scaled):
        r, j = divmod(idx, cols)
        canvas.paste(img, (gap + sum(widths[:j]) + gap * j, gap + r * (cell + gap)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path, quality=90)


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
        content = _content(info, args.description_field)
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


def parse_args(argv: Sequence[str] | None = None):
    p = make_parser("VisualCloze Graph200K -> deft_omni webdataset shards", prog="python -m data_prep.visualcloze")
    p.add_argument("--root", required=True, help=f"the Graph200K copy: {LAYOUTS}")
    p.add_argument("--split", default="train", help="split to convert (train / test)")
    p.add_argument("--mode", choices=["pair", "incontext"], default="pair",
                   help="pair: condition(s) -> target (the DEFT authors'); incontext: VisualCloze grids")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help="comma-separated tasks cond[+cond][>out]; the DEFT authors' evaluation used depth,canny")
    p.add_argument("--examples", type=int, default=2, help="in-context example rows (1-3) before the query row")
    p.add_argument("--shuffle-columns", action="store_true",
                   help="in-context: permute the condition columns per sample (same order in every row)")
    p.add_argument("--seed", type=int, default=0, help="seed of example choice and column shuffles")
    p.add_argument("--min-quality", type=int, default=None,
                   help="keep rows whose quality_assessment scores are all >= this")
    p.add_argument("--quality-keys", default=",".join(QUALITY_KEYS), help="scores the quality filter checks")
    p.add_argument("--description-field", default="description_0",
                   help="field of 'description' used as the content sentence")
    p.add_argument("--render-grid", default=None, help="folder for whole-grid pictures (in-context mode)")
    p.add_argument("--render-limit", type=int, default=32, help="grids to render")
    add_common_args(p, max_side=512, token=False)
    args = p.parse_args(argv)
    if not 1 <= args.examples <= 3:
        p.error(f"--examples must be 1, 2 or 3 (grids of 2-4 rows), got {args.examples}")
    return args


def run(argv: Sequence[str] | None = None):
    args = parse_args(argv)
    check_output(args.out, args.overwrite)  # Refuse before any (long) listing of the inputs.
    source = open_source(args.root, args.split)
    parse_tasks(args.tasks)  # Fail on a bad spec before the output folder is touched.
    options = {"root": os.path.abspath(args.root), "split": args.split, "mode": args.mode, "tasks": args.tasks,
               "examples": args.examples if args.mode == "incontext" else None, "min_quality": args.min_quality,
               "shuffle_columns": args.shuffle_columns, "seed": args.seed, "max_side": args.max_side,
               "rows": len(source)}
    with Conversion(args, source=SOURCE, options=options) as conv:
        conv.run(build, iter_jobs(args, source, conv))
    return conv


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, argv, prog="data_prep.visualcloze")


if __name__ == "__main__":
    raise SystemExit(main())
