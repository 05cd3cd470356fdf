"""The input contract: generated images + sidecars, subjects, references, targets, conditions.

* ``--generated DIR``: images (png/jpg/webp) directly in DIR or in sub-folders one level
  down, each optionally beside a same-name ``.json`` sidecar (written by
  ``deft_omni.generate``) whose ``prompt.instruction`` (or a top-level ``instruction``)
  is the CLIP-T text.
* Subject of an image, first found: the sidecar's ``subject`` (or ``prompt.subject``) field; the name of the
  sub-folder holding it; the one subject of ``--subjects``/``--references``
  eval_prompts.json listing its instruction among its prompts (``prompts``,
  ``prompts_with_token``, ``instance_prompt``; case and spacing ignored); else the
  condition type, or ``all``.
* References (CLIP-I, DINO): ``--references`` is a DreamBooth/DreamBench++
  ``eval_prompts.json`` (``subjects.<id>.images`` or ``.image``, relative to its
  ``root`` or ``root/images``; ``--reference-root`` overrides the root) or a folder with
  one sub-folder per subject (or images named ``<subject>.<ext>``). Without
  ``--references``, an image with a target compares against its target.
* ``--targets DIR`` / ``--conditions DIR``: matched to generated images by key, the
  file stem (or the first group of ``--key-pattern`` on it). ``--conditions sidecar``
  takes the sidecar's ``prompt.input_images[--condition-index]`` (a path or ``{"path": ...}``).

A generated image lacking what a requested metric needs is an error listing them all.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .config import EvalConfig
from .images import EvaluationInputError, is_image

_TAG = re.compile(r"<img>\s*<\|image_\d+\|>\s*</img>")


@dataclass
class EvalItem:
    path: str
    name: str  # path relative to --generated, the row id in the tables
    key: str
    subject: str | None
    text: str | None
    sidecar: dict[str, Any] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    target: str | None = None
    condition: str | None = None
    prompt_subjects: list[str] = field(default_factory=list)  # subjects whose prompt lists hold the instruction


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def clip_text(instruction: str, strip_token: str | None = None) -> str:
    """The prompt as CLIP-T reads it: image tags and the optional unique token removed."""
    text = _TAG.sub(" ", instruction)
    if strip_token:
        text = re.sub(rf"(?<!\w){re.escape(strip_token)}(?!\w)", " ", text)
    return " ".join(text.split())


def _key(stem: str, pattern: str | None, where: str) -> str:
    if pattern is None:
        return stem
    m = re.search(pattern, stem)
    if not m:
        raise EvaluationInputError(f"--key-pattern {pattern!r} does not match the file stem {stem!r} ({where})")
    return m.group(1) if m.groups() else m.group(0)


def _read_json(path: str, flag: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise EvaluationInputError(f"{flag} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise EvaluationInputError(f"{flag} {path}: not readable JSON ({exn})") from exn


def scan_generated(folder: str) -> list[tuple[str, str, str | None]]:
    """(path, name relative to folder, sub-folder or None) of the images, sorted by name."""
    if not os.path.isdir(folder):
        raise EvaluationInputError(f"--generated {folder!r} is not a folder (expected the --out of "
                                   "deft_omni.generate: <index>_<slug>.png + .json sidecars)")
    found = []
    for entry in sorted(os.listdir(folder)):
        full = os.path.join(folder, entry)
        if os.path.isdir(full) and not entry.startswith("."):
            found += [(os.path.join(full, n), f"{entry}/{n}", entry) for n in sorted(os.listdir(full)) if is_image(n)]
        elif is_image(entry) and os.path.splitext(entry)[0] != "grid":  # generate's contact sheet
            found.append((full, entry, None))
    if not found:
        raise EvaluationInputError(f"--generated {folder!r} holds no images (png/jpg/webp, also one sub-folder deep)")
    return found


def _sidecar(image_path: str) -> dict[str, Any]:
    path = os.path.splitext(image_path)[0] + ".json"
    if not os.path.isfile(path):
        return {}
    data = _read_json(path, "sidecar")
    if not isinstance(data, dict):
        raise EvaluationInputError(f"sidecar {path}: expected a JSON object with 'instruction'")
    return data


@dataclass
class EvalPrompts:
    """What evaluation reads from data_prep.dreambooth's eval_prompts.json."""

    path: str
    references: dict[str, list[str]]  # subject -> reference image paths
    by_prompt: dict[str, set[str]]  # normalised prompt -> subjects


def read_eval_prompts(path: str, root: str | None = None, flag: str = "--references") -> EvalPrompts:
    data = _read_json(path, flag)
    subjects = data.get("subjects") if isinstance(data, dict) else None
    if not isinstance(subjects, dict) or not subjects:
        raise EvaluationInputError(f"{flag} {path}: no 'subjects' object (expected eval_prompts.json written by "
                                   "python -m data_prep.dreambooth)")
    base = root or data.get("root") or os.path.dirname(os.path.abspath(path))
    refs: dict[str, list[str]] = {}
    by_prompt: dict[str, set[str]] = {}
    for sid, entry in subjects.items():
        rels = entry.get("images") or ([entry["image"]] if entry.get("image") else [])
        paths = []
        for rel in rels:
            tried = [os.path.join(base, rel), os.path.join(base, "images", rel)]
            hit = next((p for p in tried if os.path.isfile(p)), None)
            paths.append(hit or tried[0])
        refs[sid] = paths
        texts = list(entry.get("prompts", [])) + list(entry.get("prompts_with_token", []))
        texts += [entry["instance_prompt"]] if entry.get("instance_prompt") else []
        for text in texts:
            by_prompt.setdefault(_norm(text), set()).add(sid)
    return EvalPrompts(path, refs, by_prompt)


def _reference_folder(folder: str) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(folder)):
        full = os.path.join(folder, entry)
        if os.path.isdir(full):
            refs[entry] = [os.path.join(full, n) for n in sorted(os.listdir(full)) if is_image(n)]
        elif is_image(entry):
            refs.setdefault(os.path.splitext(entry)[0], []).append(full)
    if not refs:
        raise EvaluationInputError(f"--references {folder!r} holds no images (one sub-folder per subject, or "
                                   "files named <subject>.<ext>)")
    return refs


def _keyed_folder(folder: str, flag: str, pattern: str | None) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise EvaluationInputError(f"{flag} {folder!r} is not a folder")
    out: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        if not is_image(name):
            continue
        key = _key(os.path.splitext(name)[0], pattern, f"{flag} {folder}")
        if key in out:
            raise EvaluationInputError(f"{flag} {folder!r}: two files share the key {key!r}: "
                                       f"{os.path.basename(out[key])} and {name}; make --key-pattern more specific")
        out[key] = os.path.join(folder, name)
    return out


def _prompt_block(sidecar: dict[str, Any]) -> dict[str, Any]:
    # deft_omni.generate nests the prompt: {"prompt": {"instruction", "input_images": [{"path", "sha256"}]}};
    # a flat {"instruction", "input_images": [paths]} (hand-written sidecars) is read as well.
    block = sidecar.get("prompt")
    return block if isinstance(block, dict) else sidecar


def sidecar_instruction(sidecar: dict[str, Any]) -> str | None:
    for source in (_prompt_block(sidecar), sidecar):
        for key in ("instruction", "prompt"):
            if isinstance(source.get(key), str):
                return source[key]
    return None


def sidecar_subject(sidecar: dict[str, Any]) -> str | None:
    subject = sidecar.get("subject") or _prompt_block(sidecar).get("subject")
    return str(subject) if subject else None


def sidecar_input_images(sidecar: dict[str, Any]) -> list[str | None]:
    inputs = _prompt_block(sidecar).get("input_images") or sidecar.get("input_images") or []
    return [x if isinstance(x, str) else (x.get("path") if isinstance(x, dict) else None) for x in inputs]


def _sidecar_input(item: EvalItem, index: int) -> str | None:
    inputs = sidecar_input_images(item.sidecar)
    if index >= len(inputs):
        return None
    raw = inputs[index]
    if raw is None or os.path.isabs(raw) or os.path.isfile(raw):
        return raw
    beside = os.path.join(os.path.dirname(item.path), raw)
    return beside if os.path.isfile(beside) else raw


def _fail(what: str, names: list[str], fix: str) -> None:
    if names:
        shown = ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")
        raise EvaluationInputError(f"{what}: {shown}. {fix}")


def collect_items(cfg: EvalConfig, need_text: bool, need_refs: bool, need_target: bool,
                  need_condition: bool) -> list[EvalItem]:
    """Every generated image with what the requested metrics need, or an error listing the gaps."""
    prompts = None
    ref_map: dict[str, list[str]] = {}
    if cfg.references:
        if os.path.isdir(cfg.references):
            ref_map = _reference_folder(cfg.references)
        else:
            prompts = read_eval_prompts(cfg.references, cfg.reference_root)
            ref_map = prompts.references
    if cfg.subjects:
        prompts = read_eval_prompts(cfg.subjects, cfg.reference_root, flag="--subjects")
    targets = _keyed_folder(cfg.targets, "--targets", cfg.key_pattern) if cfg.targets else {}
    conds = (_keyed_folder(cfg.conditions, "--conditions", cfg.key_pattern)
             if cfg.conditions and cfg.conditions != "sidecar" else {})
    items = []
    for path, name, folder in scan_generated(cfg.generated):
        sidecar = _sidecar(path)
        instruction = sidecar_instruction(sidecar)
        text = clip_text(instruction, cfg.strip_token) if isinstance(instruction, str) else None
        stem = os.path.splitext(os.path.basename(path))[0]
        item = EvalItem(path, name, _key(stem, cfg.key_pattern, "--generated"), None, text, sidecar)
        item.subject = sidecar_subject(sidecar) or folder
        if item.subject is None and prompts is not None and isinstance(instruction, str):
            hits = prompts.by_prompt.get(_norm(instruction), set())
            item.subject = next(iter(hits)) if len(hits) == 1 else None
            item.prompt_subjects = sorted(hits)
        item.target = targets.get(item.key)
        item.condition = _sidecar_input(item, cfg.condition_index) if cfg.conditions == "sidecar" \
            else conds.get(item.key)
        if item.subject is not None and item.subject in ref_map:
            item.references = list(ref_map[item.subject])
        elif not cfg.references and item.target:
            item.references = [item.target]
        items.append(item)

    if need_text:
        _fail("no instruction for", [i.name for i in items if i.text is None],
              "Each generated image needs a same-name .json sidecar with an 'instruction' (deft_omni.generate "
              "writes one), or leave CLIP-T out of --metrics.")
    if need_refs:
        _fail("no subject for", [f"{i.name} (prompt matches {i.prompt_subjects or 'no subject'})"
                                 for i in items if i.subject is None and (cfg.references or not i.target)],
              "Give each a 'subject' field in its sidecar, put it in a sub-folder named after the subject, or pass "
              "--subjects eval_prompts.json whose prompt lists hold its instruction (once).")
        _fail("no reference images for", [f"{i.name} (subject {i.subject!r})" for i in items if not i.references],
              f"--references {cfg.references!r} must list each subject "
              f"(known: {', '.join(sorted(ref_map)[:12]) or 'none'}); without --references pass --targets.")
        missing = sorted({r for i in items for r in i.references if not os.path.isfile(r)})
        _fail("reference images not found", missing, "Fix the paths, or pass --reference-root (the folder "
              "eval_prompts.json's images are relative to).")
    if need_target:
        _fail(f"no target in --targets {cfg.targets!r} (key = file stem{' via --key-pattern' if cfg.key_pattern else ''})"
              " for", [f"{i.name} (key {i.key!r})" for i in items if not i.target],
              "Name targets after the generated images' keys, or set --key-pattern.")
    if need_condition:
        src = "the sidecars' input_images" if cfg.conditions == "sidecar" else f"--conditions {cfg.conditions!r}"
        _fail(f"no condition image in {src} for", [f"{i.name} (key {i.key!r})" for i in items if not i.condition],
              "Match condition file stems to the generated images' keys (or --key-pattern), or use "
              "--conditions sidecar --condition-index K.")
    for item in items:
        if item.subject is None:
            item.subject = cfg.condition_type or "all"
    return items
