"""The shapes world's vocabulary and scene descriptions: what can be drawn, asked and judged.

A scene is a background and one or two objects; an object is a shape, a colour, a size and a
cell of a 3x3 grid (0..8 in reading order), plus a render jitter (a sub-cell offset of its
centre, in pixels) that the prompt does not mention.  Two objects always lie in cells that do
not touch, even diagonally, so they never merge.

Shapes are scaled to equal *area* within a size class ("large" and "small" are areas, not
extents), so size is read from area whatever the shape.  One extra shape, the ``star``, is
never drawn by the world: it is the new concept ("sks") a personalisation run teaches.

Compositional split: the shape x colour pairs of :data:`HELD_OUT_PAIRS` never appear in any
training image; scenes holding one of them are ``unseen`` and serve only to measure
generalisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
CONCEPT_SHAPE = "star"  # geometry of the demo's new concept; never in the world's training data
CONCEPT_WORDS: tuple[str, ...] = ("sks", "zwx", "qpv", "bnk")  # spare tokenizer words for new concepts
# Saturated object colours, pairwise >= 120 apart in RGB and >= 110 from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 230),
    "yellow": (240, 220, 30), "purple": (160, 40, 210), "cyan": (20, 200, 220),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240), "black": (20, 20, 20), "gray": (128, 128, 128), "brown": (105, 70, 40),
}
SIZES: tuple[str, ...] = ("small", "large")
GRID = 3
CELL_WORDS: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                               "bottom left", "bottom", "bottom right")
# One pair per shape, five different colours: every shape and five colours stay seen otherwise.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("circle", "green"), ("square", "yellow"), ("triangle", "purple"), ("diamond", "red"),
    ("cross", "blue"),
})
COMBOS = ("seen", "unseen")


def cell_row_col(cell: int) -> tuple[int, int]:
    return divmod(int(cell), GRID)


def cells_apart(a: int, b: int) -> bool:
    """True when cells a and b do not touch (not even at a corner)."""
    (ra, ca), (rb, cb) = cell_row_col(a), cell_row_col(b)
    return max(abs(ra - rb), abs(ca - cb)) >= 2


APART_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (a, b) for a in range(GRID * GRID) for b in range(a + 1, GRID * GRID) if cells_apart(a, b))


@dataclass(frozen=True)
class Geometry:
    """How scenes become pixels; the judge reads with the same numbers."""

    image_size: int = 96  # square images; a multiple of 16 (VAE 8x times 2x2 patches)
    large_radius: float = 13.0  # radius of the circle whose area a large object has, in px
    small_radius: float = 9.0  # same for a small object
    jitter: float = 2.0  # max offset of an object's centre from its cell centre, px per axis
    supersample: int = 4  # sub-pixel samples per axis for anti-aliased rendering

    def __post_init__(self) -> None:
        if self.image_size % 16 or self.image_size < 48:
            raise ValueError(f"Geometry.image_size={self.image_size}: use a multiple of 16, >= 48")
        if not 0 < self.small_radius < self.large_radius:
            raise ValueError("Geometry: need 0 < small_radius < large_radius "
                             f"(got {self.small_radius}, {self.large_radius})")
        if not 0 <= self.jitter < self.cell_size / 4:
            raise ValueError(f"Geometry.jitter={self.jitter} must lie in [0, cell_size/4)")
        if self.supersample < 1:
            raise ValueError(f"Geometry.supersample={self.supersample} must be >= 1")

    @property
    def cell_size(self) -> float:
        return self.image_size / GRID

    def radius(self, size: str) -> float:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {SIZES}")
        return self.large_radius if size == "large" else self.small_radius

    def cell_centre(self, cell: int) -> tuple[float, float]:
        """(x, y) of a cell's centre in pixel coordinates (pixel i covers [i, i+1))."""
        row, col = cell_row_col(cell)
        return ((col + 0.5) * self.cell_size, (row + 0.5) * self.cell_size)

    def cell_of(self, x: float, y: float) -> int:
        col = min(GRID - 1, max(0, int(x // self.cell_size)))
        row = min(GRID - 1, max(0, int(y // self.cell_size)))
        return row * GRID + col


@dataclass(frozen=True)
class ObjectSpec:
    """One object; ``dx``/``dy`` are the render jitter in px (not part of the prompt)."""

    shape: str
    colour: str
    size: str
    cell: int
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES and self.shape != CONCEPT_SHAPE:
            raise ValueError(f"ObjectSpec.shape={self.shape!r}; choose one of {SHAPES + (CONCEPT_SHAPE,)}")
        if self.colour not in COLOURS:
            raise ValueError(f"ObjectSpec.colour={self.colour!r}; choose one of {tuple(COLOURS)}")
        if self.size not in SIZES:
            raise ValueError(f"ObjectSpec.size={self.size!r}; choose one of {SIZES}")
        if not 0 <= int(self.cell) < GRID * GRID:
            raise ValueError(f"ObjectSpec.cell={self.cell!r} must lie in 0..{GRID * GRID - 1}")

    @property
    def held_out(self) -> bool:
        return (self.shape, self.colour) in HELD_OUT_PAIRS

    def replace(self, **changes: Any) -> ObjectSpec:
        return ObjectSpec(**{**asdict(self), **changes})


@dataclass(frozen=True)
class SceneSpec:
    """A background and one or two objects, kept in reading order of their cells."""

    objects: tuple[ObjectSpec, ...]
    background: str

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"SceneSpec.background={self.background!r}; choose one of {tuple(BACKGROUNDS)}")
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"SceneSpec holds 1 or 2 objects, got {len(self.objects)}")
        if len(self.objects) == 2 and not cells_apart(self.objects[0].cell, self.objects[1].cell):
            raise ValueError(f"SceneSpec: cells {self.objects[0].cell} and {self.objects[1].cell} touch; "
                             "two objects need cells that do not touch")
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: o.cell)))

    @property
    def combo(self) -> str:
        return "unseen" if any(o.held_out for o in self.objects) else "seen"

    def replace(self, **changes: Any) -> SceneSpec:
        return SceneSpec(**{"objects": self.objects, "background": self.background, **changes})


@dataclass(frozen=True)
class TaskSpec:
    """One world sample: its task, instruction, target scene and input scenes (one per image tag)."""

    task: str
    instruction: str
    target: SceneSpec
    inputs: tuple[SceneSpec, ...] = field(default_factory=tuple)

    @property
    def combo(self) -> str:
        scenes = (self.target, *self.inputs)
        return "unseen" if any(s.combo == "unseen" for s in scenes) else "seen"


# ----------------------------------------------------------------- metadata (JSON) round trip
def scene_to_meta(scene: SceneSpec) -> dict[str, Any]:
    return {"background": scene.background,
            "objects": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(o).items()}
                        for o in scene.objects]}


def scene_from_meta(meta: Mapping[str, Any]) -> SceneSpec:
    try:
        objects = tuple(ObjectSpec(shape=o["shape"], colour=o["colour"], size=o["size"], cell=int(o["cell"]),
                                   dx=float(o.get("dx", 0.0)), dy=float(o.get("dy", 0.0)))
                        for o in meta["objects"])
        return SceneSpec(objects=objects, background=meta["background"])
    except (KeyError, TypeError) as exn:
        raise ValueError(f"not a world scene record (needs background and objects with shape, colour, "
                         f"size, cell): {dict(meta)!r}") from exn


def task_to_meta(spec: TaskSpec) -> dict[str, Any]:
    """The sample metadata the shards carry: everything the judge needs to score an image."""
    return {"world": 1, "task": spec.task, "split": spec.combo, "target": scene_to_meta(spec.target),
            "inputs": [scene_to_meta(s) for s in spec.inputs]}


def task_from_meta(meta: Mapping[str, Any], instruction: str = "") -> TaskSpec:
    if "target" not in meta or "task" not in meta:
        raise ValueError("not a world sample's metadata (needs 'task' and 'target'); "
                         "write world samples with deft_omni.world.shards")
    return TaskSpec(task=str(meta["task"]), instruction=instruction, target=scene_from_meta(meta["target"]),
                    inputs=tuple(scene_from_meta(s) for s in meta.get("inputs", ())))


def check_names(names: Sequence[str], allowed: Sequence[str], what: str) -> None:
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {list(allowed)}")
