"""World tasks: draw a task spec from a seed, and word it as an instruction.

Tasks (``TASKS``), each with a fully specified target scene:

``text_one`` / ``text_two``
    text to image, one or two objects: "a large red circle at the top left and a small blue
    square at the bottom right on a white background" (objects in reading order).
``recolour`` / ``move`` / ``background``
    one image in, one attribute changed: "make the object in <img><|image_1|></img> blue",
    "move the object in <img><|image_1|></img> to the top left", "put the object in
    <img><|image_1|></img> on a black background".
``same_but``
    "the same object as <img><|image_1|></img> but small and green": one or two of colour,
    size, place and background change, the shape stays.

Edited objects keep their render jitter, so the target is an exact function of the input and
the instruction.  ``combo="seen"`` draws only shape x colour pairs outside
:data:`~deft_omni.world.spec.HELD_OUT_PAIRS`; ``"unseen"`` puts a held-out pair in the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..core.seeding import derive_seed
from .spec import (
    APART_PAIRS,
    BACKGROUNDS,
    CELL_WORDS,
    COLOURS,
    COMBOS,
    GRID,
    HELD_OUT_PAIRS,
    SHAPES,
    SIZES,
    Geometry,
    ObjectSpec,
    SceneSpec,
    TaskSpec,
)

TASKS: tuple[str, ...] = ("text_one", "text_two", "recolour", "move", "background", "same_but")
EDIT_TASKS: tuple[str, ...] = ("recolour", "move", "background", "same_but")
IMAGE_TAG = "<img><|image_1|></img>"
# Training mix (relative weights): text prompts dominate, every edit gets a fair share.
DEFAULT_MIX: dict[str, float] = {"text_one": 0.3, "text_two": 0.25, "recolour": 0.1, "move": 0.1,
                                 "background": 0.1, "same_but": 0.15}
_SAME_BUT_ATTRS = ("colour", "size", "cell", "background")


# --------------------------------------------------------------------------------- wording
def cell_phrase(cell: int) -> str:
    return f"at the {CELL_WORDS[cell]}"


def describe_object(obj: ObjectSpec, shape_word: str | None = None) -> str:
    return f"a {obj.size} {obj.colour} {shape_word or obj.shape} {cell_phrase(obj.cell)}"


def describe_scene(scene: SceneSpec, shape_words: Mapping[str, str] | None = None) -> str:
    """The text-to-image instruction of a scene; ``shape_words`` renames shapes (e.g. star -> sks)."""
    words = shape_words or {}
    objects = " and ".join(describe_object(o, words.get(o.shape)) for o in scene.objects)
    return f"{objects} on a {scene.background} background"


def _same_but_phrase(changed: Sequence[str], target: SceneSpec) -> str:
    obj = target.objects[0]
    parts = {"colour": obj.colour, "size": obj.size, "cell": cell_phrase(obj.cell),
             "background": f"on a {target.background} background"}
    return f"the same object as {IMAGE_TAG} but " + " and ".join(parts[a] for a in changed)


# -------------------------------------------------------------------------------- sampling
def _choice(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def allowed_colours(shape: str, combo: str) -> list[str]:
    """Colours a ``shape`` may take: seen pairs only, or held-out pairs only."""
    if combo == "seen":
        return [c for c in COLOURS if (shape, c) not in HELD_OUT_PAIRS]
    return [c for c in COLOURS if (shape, c) in HELD_OUT_PAIRS]


def _jitter(rng: np.random.Generator, geometry: Geometry) -> tuple[float, float]:
    dx, dy = rng.uniform(-geometry.jitter, geometry.jitter, size=2)
    return round(float(dx), 3), round(float(dy), 3)


def sample_object(rng: np.random.Generator, cell: int, geometry: Geometry, combo: str = "seen") -> ObjectSpec:
    """One object in ``cell``: a seen pair, or (``combo="unseen"``) a held-out one."""
    if combo == "seen":
        shape = _choice(rng, SHAPES)
        colour = _choice(rng, allowed_colours(shape, "seen"))
    else:
        shape, colour = _choice(rng, sorted(HELD_OUT_PAIRS))
    dx, dy = _jitter(rng, geometry)
    return ObjectSpec(shape=shape, colour=colour, size=_choice(rng, SIZES), cell=cell, dx=dx, dy=dy)


def sample_scene(rng: np.random.Generator, n_objects: int, geometry: Geometry, combo: str = "seen") -> SceneSpec:
    """A scene of 1 or 2 objects; for ``unseen`` one object (the first drawn) holds a held-out pair."""
    if n_objects == 1:
        cells: tuple[int, ...] = (int(rng.integers(GRID * GRID)),)
    elif n_objects == 2:
        cells = _choice(rng, APART_PAIRS)
        if rng.random() < 0.5:
            cells = cells[::-1]
    else:
        raise ValueError(f"a world scene holds 1 or 2 objects, not {n_objects}")
    objects = [sample_object(rng, cells[0], geometry, combo)]
    objects += [sample_object(rng, c, geometry, "seen" if combo == "seen" else _choice(rng, COMBOS))
                for c in cells[1:]]
    return SceneSpec(objects=tuple(objects), background=_choice(rng, list(BACKGROUNDS)))


def _other(rng: np.random.Generator, options: Sequence, current) -> object:
    return _choice(rng, [o for o in options if o != current])


def _change(rng: np.random.Generator, attr: str, scene: SceneSpec) -> SceneSpec:
    """The scene with one attribute of its (only) object, or its background, set to another value;
    a new colour is always a seen one, so a source image never shows a held-out pair it need not."""
    obj = scene.objects[0]
    if attr == "background":
        return scene.replace(background=_other(rng, list(BACKGROUNDS), scene.background))
    if attr == "colour":
        new = obj.replace(colour=_other(rng, allowed_colours(obj.shape, "seen"), obj.colour))
    elif attr == "size":
        new = obj.replace(size=_other(rng, SIZES, obj.size))
    elif attr == "cell":
        new = obj.replace(cell=_other(rng, range(GRID * GRID), obj.cell))
    else:
        raise ValueError(f"unknown attribute {attr!r}")
    return scene.replace(objects=(new,))


def _edit(rng: np.random.Generator, task: str, geometry: Geometry, combo: str) -> TaskSpec:
    # The target is drawn first (it carries the combo's pair); the source differs from it in the
    # edited attributes only.
    target = sample_scene(rng, 1, geometry, combo)
    obj = target.objects[0]
    if task == "recolour":
        changed = ["colour"]
        instruction = f"make the object in {IMAGE_TAG} {obj.colour}"
    elif task == "move":
        changed = ["cell"]
        instruction = f"move the object in {IMAGE_TAG} to the {CELL_WORDS[obj.cell]}"
    elif task == "background":
        changed = ["background"]
        instruction = f"put the object in {IMAGE_TAG} on a {target.background} background"
    elif task == "same_but":
        k = 1 + int(rng.random() < 0.5)
        changed = [_SAME_BUT_ATTRS[i] for i in sorted(rng.choice(len(_SAME_BUT_ATTRS), size=k, replace=False))]
        instruction = _same_but_phrase(changed, target)
    else:
        raise ValueError(f"unknown world task {task!r}; choose one of {TASKS}")
    source = target
    for attr in changed:
        source = _change(rng, attr, source)
    return TaskSpec(task, instruction, target, (source,))


def sample_task(rng: np.random.Generator, task: str, geometry: Geometry = Geometry(),
                combo: str = "seen") -> TaskSpec:
    """One task spec of kind ``task``; a pure function of the generator's state."""
    if combo not in COMBOS:
        raise ValueError(f"combo={combo!r}; choose one of {COMBOS}")
    if task in ("text_one", "text_two"):
        scene = sample_scene(rng, 1 if task == "text_one" else 2, geometry, combo)
        return TaskSpec(task, describe_scene(scene), scene)
    return _edit(rng, task, geometry, combo)


def check_mix(mix: Mapping[str, float]) -> dict[str, float]:
    bad = [t for t in mix if t not in TASKS]
    if bad or not mix or any(float(w) < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"task mix {dict(mix)!r}: use tasks from {TASKS} with non-negative weights "
                         "that sum to more than 0")
    total = float(sum(mix.values()))
    return {t: float(w) / total for t, w in mix.items() if w > 0}


def mixed_task(seed: int, stream: str, index: int, mix: Mapping[str, float] = DEFAULT_MIX,
               geometry: Geometry = Geometry()) -> TaskSpec:
    """Sample ``index`` of a training stream: its task drawn from ``mix``, seen pairs only."""
    weights = check_mix(mix)
    rng = np.random.default_rng(derive_seed("world", int(seed), str(stream), int(index)))
    names = list(weights)
    task = names[int(rng.choice(len(names), p=[weights[n] for n in names]))]
    return sample_task(rng, task, geometry, "seen")


def held_out_prompts(n: int, task: str, combo: str = "seen", seed: int = 0,
                     geometry: Geometry = Geometry()) -> list[TaskSpec]:
    """``n`` evaluation prompts of one task and combo, from a stream no training set uses."""
    if task not in TASKS:
        raise ValueError(f"unknown world task {task!r}; choose one of {TASKS}")
    return [sample_task(np.random.default_rng(derive_seed("world-eval", int(seed), task, combo, i)),
                        task, geometry, combo) for i in range(int(n))]
