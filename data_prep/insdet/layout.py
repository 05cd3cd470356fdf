"""Where InsDet keeps what: the root folder's layout, its object folders and their words."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import ConversionError
from ..text import words_from_name


LEVELS = ("easy", "hard")
OBJECT_DIR = re.compile(r"^(\d+)_(.+)$")
EXPECTED_LAYOUT = ("Expected the InsDet root folder, which holds Objects/NNN_name/images/*.jpg (+ masks/*.png), "
                   "Scenes/{easy,hard}/<scene>/rgb_*.jpg (+ rgb_*.xml) and Background/")


def _looks_like_object_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "images"))


def describe_wrong_root(root: str, want: str) -> str:
    if not os.path.isdir(root):
        return f"--root {root!r} does not exist; {EXPECTED_LAYOUT}"
    entries = sorted(os.listdir(root))
    name = os.path.basename(os.path.normpath(root))
    if _looks_like_object_dir(root):
        hint = "it looks like ONE object folder (it has images/); pass the folder two levels up. "
    elif any(OBJECT_DIR.match(e) and _looks_like_object_dir(os.path.join(root, e)) for e in entries):
        hint = "it looks like the Objects/ folder itself; pass its parent. "
    elif any(e in LEVELS for e in entries):
        hint = "it looks like the Scenes/ folder itself; pass its parent. "
    elif name in LEVELS:
        hint = "it looks like a Scenes/<level> folder; pass the folder two levels up. "
    else:
        hint = ""
    missing = "Objects/" if want == "objects" else "Scenes/easy/ or Scenes/hard/"
    shown = ", ".join(entries[:8]) + (" ..." if len(entries) > 8 else "") if entries else "nothing"
    return f"--root {root!r} has no {missing} (it holds: {shown}); {hint}{EXPECTED_LAYOUT}"


@dataclass(frozen=True)
class ObjectInfo:
    id: int
    name: str  # folder name, e.g. 000_aveda_shampoo
    words: str
    path: str


def list_objects(root: str) -> list[ObjectInfo]:
    objects_dir = os.path.join(root, "Objects")
    if not os.path.isdir(objects_dir):
        raise ConversionError(describe_wrong_root(root, "objects"))
    out = []
    for entry in sorted(os.listdir(objects_dir)):
        m = OBJECT_DIR.match(entry)
        path = os.path.join(objects_dir, entry)
        if m and os.path.isdir(path):
            out.append(ObjectInfo(int(m.group(1)), entry, words_from_name(entry), path))
    if not out:
        raise ConversionError(f"{objects_dir!r} holds no NNN_name object folders; {EXPECTED_LAYOUT}")
    return out


def select_objects(objects: list[ObjectInfo], selectors: str | None) -> list[ObjectInfo]:
    """'--objects 0,12,aveda_shampoo,binder clips': by id, folder name or words."""
    if not selectors:
        return objects
    chosen: list[ObjectInfo] = []
    for sel in (s.strip() for s in selectors.split(",")):
        if not sel:
            continue
        norm = sel.lower().replace("_", " ")
        hits = [o for o in objects if (sel.isdigit() and o.id == int(sel)) or o.name.lower() == sel.lower()
                or o.words.lower() == norm]
        if not hits:
            sample = ", ".join(f"{o.id}:{o.words}" for o in objects[:6])
            raise ConversionError(f"--objects: no object matches {sel!r} (give ids, folder names or words; "
                                  f"e.g. {sample}{' ...' if len(objects) > 6 else ''})")
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen, key=lambda o: o.id)


def object_id(name: str) -> int | str:
    m = OBJECT_DIR.match(name)
    return int(m.group(1)) if m else ""
