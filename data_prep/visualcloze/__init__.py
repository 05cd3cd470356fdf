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

import os
from collections.abc import Sequence

from ..cli import add_common_args, cli_main, make_parser
from ..conversion import Conversion
from ..output import check_output
from .columns import DEFAULT_TASKS, QUALITY_KEYS, parse_tasks
from .jobs import build, iter_jobs
from .sources import LAYOUTS, open_source


SOURCE = "visualcloze"


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
