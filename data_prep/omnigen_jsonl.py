"""OmniGen's fine-tuning JSONL -> deft_omni shards.

One JSON object per line (OmniGen's ``docs/fine-tuning.md`` format)::

    {"task_type": "text_to_image", "instruction": "a photo of sks dog",
     "input_images": [], "output_image": "dog/00.jpg"}
    {"task_type": "image_edit", "instruction": "<img><|image_1|></img> in the snow",
     "input_images": ["dog/00.jpg"], "output_image": "dog/01.jpg"}

An optional ``"output_mask": "dog/00_mask.png"`` names the output image's mask (its size
or that size scaled, 255 = subject), stored as the sample's ``output_mask`` for a masked
loss.  Paths are relative to ``--images`` (default: the JSONL file's folder); absolute paths are
used as they are.  Every line is checked: valid JSON, the fields' types, the
``<|image_k|>`` tags against ``input_images`` (1..n, in order, each once) and the images
themselves.  A bad line is skipped with ``FILE:LINE`` in its reason (listed in the
manifest), or stops the run with ``--strict``.

    python -m data_prep.omnigen_jsonl --jsonl train.jsonl --images imgs/ --out data/omnigen/train
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from deft_omni.data.images import LFS_FIX, is_lfs_pointer, lfs_pointer_reason
from deft_omni.data.schema import SampleError, check_image_tags, make_sample

from .cli import add_common_args, cli_main, make_parser
from .conversion import Conversion, Skip, skip_from
from .errors import ConversionError
from .images import ImageError, prepare_image, prepare_mask
from .output import check_output
from .text import key_part, make_key, open_text

SOURCE = "omnigen_jsonl"


@dataclass(frozen=True)
class Job:
    key: str
    where: str  # "FILE:LINE" for messages
    instruction: str = ""
    task: str = ""
    output: str = ""
    inputs: tuple[str, ...] = ()
    mask: str | None = None  # the output image's mask, stored as output_mask
    meta: tuple[tuple[str, Any], ...] = ()
    error: str | None = None  # set: the line is already known bad
    max_side: int | None = None
    image_format: str = "jpg"
    reencode: bool = False


def _resolve(path: str, image_dir: str) -> str:
    return path if os.path.isabs(path) else os.path.join(image_dir, path)


def read_jobs(jsonl_files: Sequence[str], image_dir: str | None, *, default_task: str, max_side: int | None,
              image_format: str, reencode: bool) -> Iterator[Job]:
    """One Job per non-empty line, in file order; malformed lines become error Jobs."""
    stems = [key_part(os.path.splitext(os.path.basename(f))[0]) for f in jsonl_files]
    if len(set(stems)) != len(stems):  # Same file names in different folders: number them.
        stems = [f"{i}_{s}" for i, s in enumerate(stems)]
    common = dict(max_side=max_side, image_format=image_format, reencode=reencode)
    for path, stem in zip(jsonl_files, stems, strict=True):
        name = os.path.basename(path)
        folder = image_dir if image_dir is not None else os.path.dirname(os.path.abspath(path))
        try:
            fh = open_text(path)
        except OSError as exn:
            raise ConversionError(f"cannot read --jsonl {path!r} ({exn.strerror or exn})") from exn
        with fh:
            try:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    key = make_key(stem, f"{lineno:07d}")
                    where = f"{name}:{lineno}"
                    yield _job_from_line(line, key, where, folder, default_task, common)
            except UnicodeDecodeError as exn:
                raise ConversionError(f"--jsonl {path!r} is not UTF-8 text ({exn}); is it a JSONL file?") from exn


def _job_from_line(line: str, key: str, where: str, folder: str, default_task: str,
                   common: dict[str, Any]) -> Job:
    def bad(reason: str) -> Job:
        return Job(key=key, where=where, error=reason, **common)

    try:
        rec = json.loads(line)
    except ValueError as exn:
        return bad(f"invalid JSON: {where}: {exn}")
    if not isinstance(rec, dict):
        return bad(f"invalid record: {where}: expected a JSON object, got {type(rec).__name__}")
    instruction = rec.get("instruction")
    if not isinstance(instruction, str):
        return bad(f"invalid record: {where}: 'instruction' must be a string")
    output = rec.get("output_image")
    if not isinstance(output, str) or not output:
        return bad(f"invalid record: {where}: 'output_image' must be a non-empty path")
    inputs = rec.get("input_images") or []
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(p, str) and p for p in inputs):
        return bad(f"invalid record: {where}: 'input_images' must be a list of paths")
    mask = rec.get("output_mask")
    if mask is not None and (not isinstance(mask, str) or not mask):
        return bad(f"invalid record: {where}: 'output_mask' must be a non-empty path (or left out)")
    task = rec.get("task_type", default_task)
    if not isinstance(task, str) or not task:
        return bad(f"invalid record: {where}: 'task_type' must be a string")
    try:
        check_image_tags(instruction, len(inputs), key=key)
    except SampleError as exn:
        return bad(f"tag/image mismatch: {where}: {exn.reason} (fix: {exn.fix})")
    meta = {"source_file": where.rsplit(":", 1)[0], "line": int(where.rsplit(":", 1)[1]),
            "output_image": output, "input_images": list(inputs)}
    if mask is not None:
        meta["output_mask"] = mask
    extra = {k: v for k, v in rec.items()
             if k not in ("instruction", "output_image", "input_images", "task_type", "output_mask")}
    if extra:
        meta["extra"] = extra
    return Job(key=key, where=where, instruction=instruction, task=task,
               output=_resolve(output, folder), inputs=tuple(_resolve(p, folder) for p in inputs),
               mask=_resolve(mask, folder) if mask is not None else None,
               meta=tuple(meta.items()), **common)


def build(job: Job) -> Any:
    if job.error is not None:
        return Skip(job.key, job.error)
    try:
        out, size = prepare_image(job.output, max_side=job.max_side, image_format=job.image_format,
                                  reencode=job.reencode)
        mask = prepare_mask(job.mask, size) if job.mask is not None else None
        ins = []
        for path in job.inputs:
            img, _ = prepare_image(path, max_side=job.max_side, image_format=job.image_format,
                                   reencode=job.reencode)
            ins.append(img)
        return make_sample(job.key, job.instruction, out, ins, task=job.task, meta=dict(job.meta),
                           image_format=job.image_format, output_mask=mask)
    except ImageError as exn:
        return Skip(job.key, _located(str(exn), job.where))
    except SampleError as exn:
        return skip_from(job.key, exn, f"invalid sample: {job.where}: ")


def _located(reason: str, where: str) -> str:
    """'corrupt image: x.jpg (...)' -> 'corrupt image: FILE:LINE: x.jpg (...)'."""
    head, sep, rest = reason.partition(":")
    return f"{head}: {where}:{rest}" if sep else f"{reason} ({where})"


def parse_args(argv: Sequence[str] | None = None):
    p = make_parser("OmniGen fine-tuning JSONL -> deft_omni webdataset shards",
                    prog="python -m data_prep.omnigen_jsonl")
    p.add_argument("--jsonl", action="append", required=True,
                   help="a JSONL file (repeat for several; keys are <file stem>_<line>)")
    p.add_argument("--images", default=None,
                   help="folder the image paths are relative to (default: each JSONL file's folder)")
    p.add_argument("--default-task", default="text_to_image", help="task for lines without task_type")
    add_common_args(p, token=False)
    return p.parse_args(argv)


def run(argv: Sequence[str] | None = None):
    args = parse_args(argv)
    check_output(args.out, args.overwrite)  # Refuse before any (long) listing of the inputs.
    for path in args.jsonl:
        if not os.path.isfile(path):
            raise ConversionError(f"--jsonl {path!r} does not exist (expected an OmniGen JSONL file: one "
                                  '{"task_type", "instruction", "input_images", "output_image"} object per line)')
        with open(path, "rb") as fh:
            head = fh.read(1024)
        if is_lfs_pointer(head):
            raise ConversionError(f"--jsonl {path!r} is {lfs_pointer_reason(head)}; {LFS_FIX}")
    if args.images is not None and not os.path.isdir(args.images):
        raise ConversionError(f"--images {args.images!r} is not a folder (the folder the JSONL image paths "
                              "are relative to)")
    jobs = read_jobs(args.jsonl, args.images, default_task=args.default_task, max_side=args.max_side,
                     image_format=args.image_format, reencode=args.reencode)
    options = {"jsonl": [os.path.abspath(p) for p in args.jsonl],
               "images": os.path.abspath(args.images) if args.images else None,
               "max_side": args.max_side, "image_format": args.image_format}
    with Conversion(args, source=SOURCE, options=options) as conv:
        conv.run(build, jobs)
    return conv


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, argv, prog="data_prep.omnigen_jsonl")


if __name__ == "__main__":
    raise SystemExit(main())
