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
``data.prior``.

Evaluation prompts go to ``<out>/eval_prompts.json`` (and ``--prompts-json PATH``): per
subject its class / name, live flag, images, the instance prompt and the prompts filled
with the unique token (DreamBooth: 25 object or live-subject prompts; DreamBench++: the
nine prompts as written and with "<token> <name>" put in for the subject's name).

    python -m data_prep.dreambooth dreambooth --root dreambooth --out data/dreambooth/train
    python -m data_prep.dreambooth dreambench --root dreambench_plus --out data/dreambench_plus/train
    python -m data_prep.dreambooth priors --class-images class_imgs/dog --class-name dog --out data/dreambooth/prior
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deft_omni.data.schema import SampleError, make_sample

from .common import (
    Conversion,
    ConversionError,
    ImageError,
    Skip,
    add_common_args,
    check_output,
    cli_main,
    list_images,
    make_key,
    make_parser,
    prepare_image,
    write_json_atomic,
)

PROMPTS_FILE = "prompts_and_classes.txt"
EVAL_FILE = "eval_prompts.json"
DREAMBENCH_CATEGORIES = ("animal", "human", "object", "style")


# ------------------------------------------------------------------------- DreamBooth


@dataclass
class PromptsTable:
    classes: dict[str, str]  # subject -> class
    object_prompts: list[str]  # format strings: {0} unique token, {1} class
    live_prompts: list[str]


def _prompt_strings(block: str, path: str, section: str) -> list[str]:
    """The string constants of ``'...'.format(unique_token, class_token)`` calls in a block."""
    start = block.find("[")
    end = block.rfind("]")
    if start < 0 or end < start:
        raise ConversionError(f"{path}: the {section!r} section has no 'prompt_list = [ ... ]' list")
    try:
        tree = ast.parse(block[start:end + 1], mode="eval")
    except SyntaxError as exn:
        raise ConversionError(f"{path}: cannot parse the {section!r} prompt list ({exn.msg}, line "
                              f"{exn.lineno} of the list)") from exn
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    deduped = [n.value for n in sorted(nodes, key=lambda n: (n.lineno, n.col_offset))]
    if not deduped:
        raise ConversionError(f"{path}: the {section!r} prompt list holds no prompts")
    return deduped


def parse_prompts_file(path: str) -> PromptsTable:
    """DreamBooth's ``prompts_and_classes.txt``."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exn:
        raise ConversionError(f"cannot read {path} ({exn.strerror or exn})") from exn
    except UnicodeDecodeError as exn:
        raise ConversionError(f"{path} is not UTF-8 text ({exn})") from exn
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = line.strip().lower()
        if head in ("classes", "object prompts", "live subject prompts", "prompts"):
            current = head
            sections.setdefault(current, [])
            continue
        if current:
            sections[current].append(line)
    if "classes" not in sections:
        raise ConversionError(f"{path}: no 'Classes' section (DreamBooth's table of subject_name,class)")
    classes = {}
    for line in sections["classes"]:
        s = line.strip()
        if not s or s.lower().replace(" ", "") == "subject_name,class":
            continue
        parts = [p.strip() for p in s.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ConversionError(f"{path}: malformed class line {s!r} (expected 'subject_name,class')")
        classes[parts[0]] = parts[1]
    if not classes:
        raise ConversionError(f"{path}: the 'Classes' section lists no subjects")
    for name in ("object prompts", "live subject prompts"):
        if name not in sections:
            raise ConversionError(f"{path}: no {name.title()!r} section")
    return PromptsTable(classes, _prompt_strings("\n".join(sections["object prompts"]), path, "Object Prompts"),
                        _prompt_strings("\n".join(sections["live subject prompts"]), path,
                                        "Live Subject Prompts"))


def dreambooth_dir(root: str) -> str:
    for cand in (os.path.join(root, "dataset"), root):
        if os.path.isfile(os.path.join(cand, PROMPTS_FILE)):
            return cand
    if not os.path.isdir(root):
        raise ConversionError(f"--root {root!r} does not exist; expected the google/dreambooth checkout "
                              f"(dataset/<subject>/NN.jpg + dataset/{PROMPTS_FILE}) or its dataset/ folder")
    if os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(root)), PROMPTS_FILE)):
        hint = " it looks like ONE subject folder; pass its parent (dataset/)."
    else:
        hint = ""
    raise ConversionError(f"--root {root!r} has no {PROMPTS_FILE} (looked in {root!r} and dataset/);{hint} expected "
                          f"the google/dreambooth checkout (dataset/<subject>/NN.jpg + dataset/{PROMPTS_FILE}) "
                          "or its dataset/ folder")


# -------------------------------------------------------------------------- samples


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


def build(job: Job | Skip) -> Any:
    if isinstance(job, Skip):
        return job
    try:
        img, size = prepare_image(job.path, max_side=job.max_side, image_format=job.image_format,
                                  reencode=job.reencode)
        return make_sample(job.key, job.instruction, img, task=job.task,
                           meta={**dict(job.meta), "stored_size": list(size)}, image_format=job.image_format,
                           prior=job.prior)
    except ImageError as exn:
        return Skip(job.key, str(exn))
    except SampleError as exn:
        return Skip(job.key, f"invalid sample: {exn.reason}")


def _fill(template: str, option: str, **fields: Any) -> str:
    try:
        return " ".join(template.format(**fields).split())
    except (KeyError, IndexError, ValueError) as exn:
        raise ConversionError(f"{option} {template!r}: unknown or malformed field {exn}; "
                              f"use {', '.join('{' + k + '}' for k in fields)}") from exn


def _common(args) -> dict[str, Any]:
    return dict(max_side=args.max_side, image_format=args.image_format, reencode=args.reencode)


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
        instruction = _fill(args.prior_template, "--prior-template", cls=cls)
        for name in names:
            jobs.append(Job(key=make_key("prior", cls, os.path.splitext(name)[0]), path=os.path.join(d, name),
                            instruction=instruction, task="dreambooth_prior",
                            meta=(("class", cls), ("image", name)), prior=True, **_common(args)))
    return jobs


def _select(names: Sequence[str], spec: str | None, what: str) -> list[str]:
    if not spec:
        return list(names)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ConversionError(f"--{what}: unknown {unknown} (have: {', '.join(list(names)[:12])}"
                              f"{' ...' if len(names) > 12 else ''})")
    return [n for n in names if n in wanted]


def dreambooth_jobs(args) -> tuple[list[Job | Skip], dict[str, Any]]:
    base = dreambooth_dir(args.root)
    table = parse_prompts_file(os.path.join(base, PROMPTS_FILE))
    folders = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)) and not d.startswith("."))
    subjects = _select(sorted(set(folders) | set(table.classes)), args.subjects, "subjects")
    live = {c.strip() for c in args.live_classes.split(",") if c.strip()}
    token = args.unique_token
    jobs: list[Job | Skip] = []
    evals: dict[str, Any] = {}
    for subject in subjects:
        cls = table.classes.get(subject)
        if subject not in folders:
            jobs.append(Skip(make_key("db", subject), f"subject folder not found: {subject!r} is in "
                                                      f"{PROMPTS_FILE} but {base!r} has no such folder"))
            continue
        if cls is None:
            jobs.append(Skip(make_key("db", subject), f"no class: subject folder {subject!r} is not in the "
                                                      f"Classes table of {PROMPTS_FILE}"))
            continue
        images = list_images(os.path.join(base, subject))
        if not images:
            jobs.append(Skip(make_key("db", subject), f"no images: {os.path.join(base, subject)} holds none"))
            continue
        instruction = _fill(args.template, "--template", token=token, cls=cls, subject=subject)
        for name in images:
            jobs.append(Job(key=make_key("db", subject, os.path.splitext(name)[0]),
                            path=os.path.join(base, subject, name), instruction=instruction, task="dreambooth",
                            meta=(("subject", subject), ("class", cls), ("image", name), ("token", token)),
                            prior=False, **_common(args)))
        is_live = cls in live
        templates = table.live_prompts if is_live else table.object_prompts
        evals[subject] = {"class": cls, "live": is_live, "instance_prompt": instruction,
                          "images": [f"{subject}/{n}" for n in images],
                          "prompts": [t.format(token, cls) for t in templates], "prompt_templates": templates}
    classes = sorted({table.classes[s] for s in subjects if s in table.classes})
    jobs += prior_jobs(args, classes)
    prompts = {"dataset": "dreambooth", "unique_token": token, "root": os.path.abspath(base),
               "subjects": evals}
    return jobs, prompts


# ----------------------------------------------------------------------- DreamBench++


def dreambench_dir(root: str) -> str:
    for cand in (os.path.join(root, "data"), root):
        if os.path.isdir(os.path.join(cand, "images")) and os.path.isdir(os.path.join(cand, "captions")):
            return cand
    if not os.path.isdir(root):
        raise ConversionError(f"--root {root!r} does not exist; expected the DreamBench++ folder holding "
                              "data/images/<category>/NN.jpg and data/captions/<category>/NN.txt")
    held = ", ".join(sorted(os.listdir(root))[:8]) or "nothing"
    hint = ""
    if os.path.basename(os.path.normpath(root)) in ("images", "captions") or \
            any(d in DREAMBENCH_CATEGORIES for d in os.listdir(root)):
        hint = " it looks like data/images or data/captions itself; pass the folder holding data/."
    raise ConversionError(f"--root {root!r} has no images/ + captions/ (checked {root!r} and data/; it holds: "
                          f"{held});{hint} expected the DreamBench++ folder holding data/images/<category>/NN.jpg "
                          "and data/captions/<category>/NN.txt")


def _with_token(prompt: str, name: str, token: str) -> tuple[str, bool]:
    """Put '<token> <name>' where the prompt names the subject (first occurrence)."""
    m = re.search(re.escape(name), prompt, flags=re.IGNORECASE)
    if not m:
        return prompt, False
    return prompt[:m.start()] + f"{token} {m.group(0)}" + prompt[m.end():], True


def dreambench_jobs(args) -> tuple[list[Job | Skip], dict[str, Any]]:
    base = dreambench_dir(args.root)
    cats = _select([c for c in DREAMBENCH_CATEGORIES if os.path.isdir(os.path.join(base, "images", c))],
                   args.categories, "categories")
    if not cats:
        raise ConversionError(f"{base!r}/images has none of the categories {DREAMBENCH_CATEGORIES}")
    token = args.unique_token
    wanted = {s.strip() for s in (args.subjects or "").split(",") if s.strip()}
    jobs: list[Job | Skip] = []
    evals: dict[str, Any] = {}
    seen: set[str] = set()
    for cat in cats:
        for name in list_images(os.path.join(base, "images", cat)):
            stem = os.path.splitext(name)[0]
            sid = make_key(cat, stem)
            if wanted and sid not in wanted:
                continue
            seen.add(sid)
            key = make_key("dbp", cat, stem)
            cap = os.path.join(base, "captions", cat, stem + ".txt")
            try:
                with open(cap, encoding="utf-8") as fh:
                    lines = [ln.strip() for ln in fh.read().splitlines() if ln.strip()]
            except FileNotFoundError:
                jobs.append(Skip(key, f"caption not found: {cap} (needed for the subject name)"))
                continue
            except (OSError, UnicodeDecodeError) as exn:
                jobs.append(Skip(key, f"unreadable caption: {cap} ({exn})"))
                continue
            if not lines:
                jobs.append(Skip(key, f"empty caption: {cap} has no subject name"))
                continue
            subject, prompts = lines[0], lines[1:]
            template = args.style_template if cat == "style" else args.template
            instruction = _fill(template, "--template", token=token, name=subject, category=cat)
            jobs.append(Job(key=key, path=os.path.join(base, "images", cat, name), instruction=instruction,
                            task="dreambench_plus",
                            meta=(("subject", sid), ("category", cat), ("name", subject), ("image", name),
                                  ("token", token)), prior=False, **_common(args)))
            filled = [_with_token(p, subject, token) for p in prompts]
            live = cat in ("animal", "human")
            evals[sid] = {"category": cat, "name": subject, "live": live, "image": f"{cat}/{name}",
                          "sample_dir": f"{'live_subject_' if live else ''}{cat}_{stem}_{make_key(subject)}",
                          "instance_prompt": instruction, "prompts": prompts,
                          "prompts_with_token": [p for p, _ in filled],
                          "token_inserted": [ok for _, ok in filled]}
    if wanted - seen:
        raise ConversionError(f"--subjects: not found: {sorted(wanted - seen)} (ids are <category>_<NN>, "
                              "e.g. animal_00)")
    jobs += prior_jobs(args, None)
    prompts = {"dataset": "dreambench_plus", "unique_token": token, "root": os.path.abspath(base),
               "subjects": evals}
    return jobs, prompts


# -------------------------------------------------------------------------------- CLI


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
    return p.parse_args(argv)


def run(argv: Sequence[str] | None = None):
    args = parse_args(argv)
    check_output(args.out, args.overwrite)  # Refuse before any (long) listing of the inputs.
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
        conv.run(build, jobs)
        if prompts is not None:
            write_json_atomic(os.path.join(conv.tmp_dir, EVAL_FILE), prompts)
    if prompts is not None and getattr(args, "prompts_json", None):
        write_json_atomic(args.prompts_json, prompts)
    return conv


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, argv, prog="data_prep.dreambooth")


if __name__ == "__main__":
    raise SystemExit(main())
