"""DreamBooth's ``prompts_and_classes.txt``: the subject -> class table and the prompt lists."""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

from ..errors import ConversionError
from ..text import open_text


PROMPTS_FILE = "prompts_and_classes.txt"


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
        with open_text(path) as fh:
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
