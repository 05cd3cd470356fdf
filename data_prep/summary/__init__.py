"""A look at a shard set before training: ``python -m data_prep.summary SHARDS...``.

One streaming pass (a progress bar; memory grows only with the number of distinct images)
over shard folders, brace patterns or tars, written to ``--out`` as ``summary.md``,
``summary.html``, ``summary.json`` and ``contact_sheet.png``:

* samples by task, source and split; the converters' skips by reason, from the manifests;
* output sizes, and the sizes they train at (``--max-image-side`` / ``--bucket-sizes``, as
  the processor's ``fit_image`` resizes and crops them);
* instruction lengths in tokens (``--tokenizer``: a tokenizer folder, or a model folder
  holding ``tokenizer/``; without it, whitespace words) and input images per sample;
* images stored more than once (identical bytes) and samples whose ``<|image_k|>`` tags do
  not match their input images (the loader would skip them);
* a contact sheet of random samples: inputs, an arrow, the output and the instruction.

    python -m data_prep.summary data/omnigen/train --out summary --max-image-side 512
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

from deft_omni.core.atomic import atomic_dir, write_json, write_text
from deft_omni.data.schema import ManifestError

from ..cli import cli_main, make_parser, positive_int
from ..errors import ConversionError
from .report import FORMAT, sections, to_html, to_json, to_markdown
from .scan import Scanner, resolve_sets
from .sheet import contact_sheet

SHEET = "contact_sheet.png"


def _bucket_sizes(text: str | None) -> list[tuple[int, int]] | None:
    if not text:
        return None
    try:
        sizes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(len(s) != 2 or min(s) < 16 for s in sizes):
        raise ConversionError(f"--bucket-sizes {text!r}: expected HxW,HxW,... with sides of at least 16 px "
                              "(data.bucket_sizes' (height, width) pairs)")
    return sizes  # type: ignore[return-value]


def token_counter(path: str) -> Callable[[str], int]:
    """Tokens per instruction with the tokenizer in ``path`` (or ``path/tokenizer``), offline."""
    folder = os.path.join(path, "tokenizer") if os.path.isdir(os.path.join(path, "tokenizer")) else path
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exn:  # noqa: BLE001 - surface the reason with the path
        raise ConversionError(f"--tokenizer {path!r}: cannot load a tokenizer from {folder!r} "
                              f"({type(exn).__name__}: {exn}); give a tokenizer folder or a model folder "
                              "holding tokenizer/") from exn
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def _is_summary(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as fh:
            return json.load(fh).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_out(out: str) -> None:
    """--out may be new, empty or an earlier summary (replaced); anything else is refused."""
    if not os.path.lexists(out) or os.path.isdir(out) and (not os.listdir(out) or _is_summary(out)):
        return
    raise ConversionError(f"--out {out!r} exists and is not an earlier data summary; choose another --out")


def parse_args(argv: Sequence[str] | None = None):
    p = make_parser("A summary of deft_omni shard sets before training: counts, sizes, lengths, duplicates, "
                    "tag mismatches and a contact sheet", prog="python -m data_prep.summary")
    p.add_argument("shards", nargs="+", help="shard folders (with manifest.json), brace patterns or tar files")
    p.add_argument("--out", default="data_summary",
                   help="folder for summary.md/.html/.json and contact_sheet.png (an earlier summary is replaced)")
    p.add_argument("--max-image-side", type=positive_int, default=1024,
                   help="data.max_image_side of the run, for the sizes images train at")
    p.add_argument("--bucket-sizes", default=None, help="data.bucket_sizes of the run, as HxW,HxW,...")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder, or a model folder holding tokenizer/ (default: count words)")
    p.add_argument("--sheet", type=int, default=24, help="random samples on the contact sheet (0: no sheet)")
    p.add_argument("--top", type=positive_int, default=20, help="rows per table")
    p.add_argument("--seed", type=int, default=0, help="seed of the contact sheet's sample")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def run(argv: Sequence[str] | None = None):
    args = parse_args(argv)
    _check_out(args.out)
    buckets = _bucket_sizes(args.bucket_sizes)
    count = token_counter(args.tokenizer) if args.tokenizer else None
    try:
        sets = resolve_sets(args.shards)
    except (FileNotFoundError, ManifestError) as exn:
        raise ConversionError(str(exn)) from exn
    scanner = Scanner(max_side=args.max_image_side, bucket_sizes=buckets, count_tokens=count,
                      keep=max(0, args.sheet), seed=args.seed)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        known = [i.samples for i, _ in sets]
        bar = tqdm(total=None if None in known else sum(known), unit="sample", desc="summary",
                   mininterval=0.5, dynamic_ncols=True)
    try:
        summary = scanner.scan(sets, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    title = "Data summary: " + ", ".join(i.path for i in summary.sets)
    with atomic_dir(args.out, replace=True) as staging:
        sheet = contact_sheet(summary.kept, os.path.join(staging, SHEET)) and SHEET
        secs = sections(summary, max_side=args.max_image_side, bucket_sizes=buckets, top=args.top, sheet=sheet)
        write_text(os.path.join(staging, "summary.md"), to_markdown(title, secs))
        write_text(os.path.join(staging, "summary.html"), to_html(title, secs, sheet))
        write_json(os.path.join(staging, "summary.json"),
                   to_json(summary, max_side=args.max_image_side, bucket_sizes=buckets))
    print(f"summary: {summary.samples} samples in {summary.seconds:.1f} s; {len(summary.duplicates)} duplicated "
          f"images; {len(summary.mismatches)} tag mismatches; {len(summary.unreadable)} unreadable; wrote "
          f"{os.path.join(args.out, 'summary.md')} (.html, .json, {SHEET})")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, argv, prog="data_prep.summary")
