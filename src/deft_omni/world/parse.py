"""World instructions back into scene specs: the closed grammar of
:func:`deft_omni.world.tasks.describe_scene`, so the judge can score any image generated for a
world text-to-image prompt (e.g. by ``python -m deft_omni.generate``) from its sidecar alone.

    "a large red circle at the top left and a small blue sks at the right on a black background"
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .concept import CONCEPT_WORD
from .spec import BACKGROUNDS, CELL_WORDS, COLOURS, CONCEPT_SHAPE, SHAPES, SIZES, ObjectSpec, SceneSpec

_OBJECT = re.compile(r"a (?P<size>{s}) (?P<colour>{c}) (?P<shape>\w+) at the (?P<cell>{p})".format(
    s="|".join(SIZES), c="|".join(COLOURS), p="|".join(sorted(CELL_WORDS, key=len, reverse=True))))
_SCENE = re.compile(r"^(?P<objects>.+) on a (?P<bg>{b}) background$".format(b="|".join(BACKGROUNDS)))


class WorldPromptError(ValueError):
    """Text outside the world's text-to-image grammar."""


def parse_instruction(text: str, shape_words: Mapping[str, str] | None = None) -> SceneSpec:
    """The scene a text-to-image world instruction asks for (no jitter).  ``shape_words`` maps
    prompt words to shapes; the concept word (sks) is the concept's shape by default."""
    words = {CONCEPT_WORD: CONCEPT_SHAPE, **{s: s for s in SHAPES}, **(shape_words or {})}
    scene = _SCENE.match(" ".join(text.strip().lower().split()))
    if scene is None:
        raise WorldPromptError(f"{text!r} is not a world text-to-image instruction "
                               "('a <size> <colour> <shape> at the <cell> [and ...] on a <background> background')")
    parts = scene["objects"].split(" and ")
    objects = []
    for part in parts:
        m = _OBJECT.fullmatch(part)
        if m is None or m["shape"] not in words:
            raise WorldPromptError(f"{text!r}: cannot read the object {part!r} (shapes: {', '.join(words)})")
        objects.append(ObjectSpec(words[m["shape"]], m["colour"], m["size"], CELL_WORDS.index(m["cell"])))
    try:
        return SceneSpec(tuple(objects), scene["bg"])
    except ValueError as err:
        raise WorldPromptError(f"{text!r}: {err}") from None
