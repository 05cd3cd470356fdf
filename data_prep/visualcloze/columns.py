"""Graph200K's image columns, the task specs over them, and the instructions that name them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConversionError


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


def content_of(info: dict[str, Any], field: str) -> str | None:
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
