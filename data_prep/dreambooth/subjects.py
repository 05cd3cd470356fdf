"""The two subject layouts: google/dreambooth and DreamBench++, with their evaluation prompts."""

from __future__ import annotations

import os
import re
from typing import Any

from ..conversion import Skip
from ..errors import ConversionError
from ..images import list_images
from ..text import make_key, open_text
from .jobs import Job, common_options, fill, mask_of, prior_jobs, select
from .prompts import PROMPTS_FILE, dreambooth_dir, parse_prompts_file


DREAMBENCH_CATEGORIES = ("animal", "human", "object", "style")


def dreambooth_jobs(args) -> tuple[list[Job | Skip], dict[str, Any]]:
    base = dreambooth_dir(args.root)
    table = parse_prompts_file(os.path.join(base, PROMPTS_FILE))
    folders = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)) and not d.startswith("."))
    subjects = select(sorted(set(folders) | set(table.classes)), args.subjects, "subjects")
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
        instruction = fill(args.template, "--template", token=token, cls=cls, subject=subject)
        for name in images:
            jobs.append(Job(key=make_key("db", subject, os.path.splitext(name)[0]),
                            path=os.path.join(base, subject, name), instruction=instruction, task="dreambooth",
                            meta=(("subject", subject), ("class", cls), ("image", name), ("token", token)),
                            prior=False, mask=mask_of(args, subject, name), **common_options(args)))
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
    cats = select([c for c in DREAMBENCH_CATEGORIES if os.path.isdir(os.path.join(base, "images", c))],
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
                with open_text(cap) as fh:
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
            instruction = fill(template, "--template", token=token, name=subject, category=cat)
            jobs.append(Job(key=key, path=os.path.join(base, "images", cat, name), instruction=instruction,
                            task="dreambench_plus",
                            meta=(("subject", sid), ("category", cat), ("name", subject), ("image", name),
                                  ("token", token)), prior=False, mask=mask_of(args, cat, name),
                            **common_options(args)))
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
