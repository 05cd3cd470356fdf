"""DreamBooth and DreamBench++ -> deft_omni shards, class priors, and evaluation prompt lists.

Layouts read:

* DreamBooth (google/dreambooth): ``dataset/<subject>/00.jpg ...`` and
  ``dataset/prompts_and_classes.txt`` - a ``Classes`` table (``subject_name,class``), then
  ``Object Prompts`` and ``Live Subject Prompts`` lists written as Python
  ``'a {0} {1} in the jungle'.format(unique_token, class_token)`` lines.
* DreamBench++: ``data/images/{animal,human,object,style}/NN.jpg`` and
  ``data/captions/<same>/NN.txt`` (line 1 the subject name, then nine prompts).

Training samples: one per subject image, "a photo of sks <class>" (DreamBooth) or
"a photo of sks <subject name>" (DreamBench++; style images "an image in the style of sks
<name>"), templates configurable.  Class-prior samples (``prior: true`` in the shard json;
the loader gives them the prior loss weight) come from a folder of class images:
``--class-images DIR`` with one sub-folder per class (``dog/``, ``stuffed_animal/``) or a
flat folder plus ``--class-name``.  The ``priors`` command writes a prior-only set for
``data.prior``.  DreamBooth ships no masks: ``--masks DIR`` (laid out as the images,
``DIR/<subject or category>/<stem>.png``, 255 = subject) stores one per subject image as
the sample's ``output_mask``, for a masked loss.

Evaluation prompts go to ``<out>/eval_prompts.json`` (and ``--prompts-json PATH``): per
subject its class / name, live flag, images, the instance prompt and the prompts filled
with the unique token (DreamBooth: 25 object or live-subject prompts; DreamBench++: the
nine prompts as written and with "<token> <name>" put in for the subject's name).

    python -m data_prep.dreambooth dreambooth --root dreambooth --out data/dreambooth/train
    python -m data_prep.dreambooth dreambench --root dreambench_plus --out data/dreambench_plus/train
    python -m data_prep.dreambooth priors --class-images class_imgs/dog --class-name dog --out data/dreambooth/prior
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from deft_omni.core.atomic import write_json

from ..cli import add_common_args, cli_main, make_parser
from ..conversion import Conversion
from ..errors import ConversionError
from ..output import check_output
from .jobs import Job, build, prior_jobs
from .subjects import dreambench_jobs, dreambooth_jobs


EVAL_FILE = "eval_prompts.json"


def parse_args(argv: Sequence[str] | None = None):
    p = make_parser("DreamBooth / DreamBench++ -> deft_omni webdataset shards + evaluation prompt lists",
                    prog="python -m data_prep.dreambooth")
    sub = p.add_subparsers(dest="mode", required=True)
    fmt = {"formatter_class": p.formatter_class}
    db = sub.add_parser("dreambooth", help="google/dreambooth: dataset/<subject>/*.jpg + prompts_and_classes.txt",
                        **fmt)
    bp = sub.add_parser("dreambench", help="DreamBench++: data/images/<category>/NN.jpg + data/captions/", **fmt)
    pr = sub.add_parser("priors", help="class-prior samples only (for data.prior)", **fmt)
    db.add_argument("--root", required=True, help="the dreambooth checkout or its dataset/ folder")
    db.add_argument("--subjects", default=None, help="comma-separated subject folder names (default: all)")
    db.add_argument("--template", default="a photo of {token} {cls}",
                    help="instance prompt; fields {token} {cls} {subject}")
    db.add_argument("--live-classes", default="dog,cat",
                    help="classes evaluated with the live-subject prompts (DreamBooth: dogs and cats)")
    bp.add_argument("--root", required=True, help="the DreamBench++ folder holding data/ (or data/ itself)")
    bp.add_argument("--categories", default=None, help="animal,human,object,style (default: all)")
    bp.add_argument("--subjects", default=None, help="comma-separated ids <category>_<NN> (default: all)")
    bp.add_argument("--template", default="a photo of {token} {name}",
                    help="instance prompt; fields {token} {name} {category}")
    bp.add_argument("--style-template", default="an image in the style of {token} {name}",
                    help="instance prompt of the style category")
    for q in (db, bp, pr):
        q.add_argument("--class-images", default=None, required=q is pr,
                       help="class-prior images: one sub-folder per class, or a flat folder + --class-name")
        q.add_argument("--class-name", default=None, help="class of a flat --class-images folder")
        q.add_argument("--num-class-images", type=int, default=None, help="at most this many per class")
        q.add_argument("--prior-template", default="a photo of {cls}", help="prior prompt; field {cls}")
        add_common_args(q)
    for q in (db, bp):
        q.add_argument("--prompts-json", default=None,
                       help=f"also write the prompt lists here (always in <out>/{EVAL_FILE})")
        q.add_argument("--masks", default=None,
                       help="folder of subject masks laid out as the images (<subject or category>/<stem>.png, "
                            "255 = subject), stored as each sample's output_mask for a masked loss")
    return p.parse_args(argv)


def run(argv: Sequence[str] | None = None):
    args = parse_args(argv)
    check_output(args.out, args.overwrite)  # Refuse before any (long) listing of the inputs.
    if getattr(args, "masks", None) and not os.path.isdir(args.masks):
        raise ConversionError(f"--masks {args.masks!r} is not a folder (expected one mask per subject image, "
                              "laid out as the images: <subject or category>/<stem>.png)")
    if args.mode == "dreambooth":
        jobs, prompts = dreambooth_jobs(args)
        source = "dreambooth"
    elif args.mode == "dreambench":
        jobs, prompts = dreambench_jobs(args)
        source = "dreambench_plus"
    else:
        jobs, prompts = prior_jobs(args, None), None
        source = "dreambooth_prior"
    options = {k: v for k, v in vars(args).items() if k not in ("out", "overwrite", "quiet", "workers")}
    with Conversion(args, source=source, options=options) as conv:
        if getattr(args, "masks", None):
            unmasked = sum(1 for j in jobs if isinstance(j, Job) and not j.prior and j.mask is None)
            if unmasked:
                conv.note("subject images without a mask in --masks", unmasked)
        conv.run(build, jobs)
        if prompts is not None:
            write_json(os.path.join(conv.tmp_dir, EVAL_FILE), prompts, indent=1, ensure_ascii=False)
    if prompts is not None and getattr(args, "prompts_json", None):
        write_json(args.prompts_json, prompts, indent=1, ensure_ascii=False)
    return conv


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, argv, prog="data_prep.dreambooth")
