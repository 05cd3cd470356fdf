"""The judge's scores: adherence (per attribute, micro-averaged, binding, edits) and fidelity.

**Adherence** of an image to a prompt's target scene: the prompt's attributes are its
background, its object count and, per object, shape, colour, size and position.  Prompt
objects are taken in reading order of their cells; the image's objects likewise, after
keeping its ``n`` largest when it shows more than the ``n`` asked for.  Object ``i`` of the
prompt is compared with object ``i`` of the image (a missing object fails its four
attributes).  ``micro`` = share of all attribute instances shown; ``all_correct`` = share of
images showing every attribute.  **binding** (two-object prompts): the image's
(shape, colour) pairs are the prompt's, as a multiset; ``binding_given_parts`` is the same
share among images whose shapes and colours are right as multisets (binding alone).  Edits:
``edit`` = share of images whose *changed* attributes (target vs input image) are all right.

**Fidelity** to the reference render of the target: ``mask_iou`` = soft IoU of each read
object's alpha with its reference coverage as drawn (jitter included; a missing object
scores 0); ``shape_iou`` = the same with the reference re-centred on the read centroid
(shape and size only); ``colour_distance`` = RGB distance of the read object colour to the
palette colour (found objects only).

Chance is in :mod:`deft_omni.world.chance`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .judge import JudgeConfig, ReadObject, Reading, read_image, reference_iou
from .render import object_coverage
from .spec import COLOURS, Geometry, SceneSpec, TaskSpec

ATTRIBUTES: tuple[str, ...] = ("background", "count", "shape", "colour", "size", "position")
OBJECT_ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "position")
_SPEC_FIELD = {"shape": "shape", "colour": "colour", "size": "size", "position": "cell"}


def matched_objects(scene: SceneSpec, reading: Reading) -> list[ReadObject | None]:
    """The read object compared with each prompt object (reading order), None where missing."""
    n = len(scene.objects)
    chosen = sorted(reading.objects[:n], key=lambda o: (o.cell, -o.area))
    return chosen + [None] * (n - len(chosen))


def changed_attributes(spec: TaskSpec) -> list[str]:
    """Attributes an edit changes: target vs its first input scene (empty for text tasks)."""
    if not spec.inputs:
        return []
    src, dst = spec.inputs[0], spec.target
    out = ["background"] if src.background != dst.background else []
    for attr in OBJECT_ATTRIBUTES:
        f = _SPEC_FIELD[attr]
        if getattr(src.objects[0], f) != getattr(dst.objects[0], f):
            out.append(attr)
    return out


@dataclass
class ImageScore:
    """One image against one prompt."""

    hits: dict[str, list[bool]]  # attribute -> one bool per instance
    binding: bool | None = None
    binding_parts: bool | None = None
    edit: bool | None = None
    mask_iou: list[float] = field(default_factory=list)
    shape_iou: list[float] = field(default_factory=list)
    colour_distance: list[float] = field(default_factory=list)


def score_reading(spec: SceneSpec | TaskSpec, reading: Reading, geometry: Geometry = Geometry()) -> ImageScore:
    """Compare a reading with a prompt's target scene (and its edit, for a :class:`TaskSpec`)."""
    scene = spec.target if isinstance(spec, TaskSpec) else spec
    objs = matched_objects(scene, reading)
    hits: dict[str, list[bool]] = {"background": [reading.background == scene.background],
                                   "count": [reading.count == len(scene.objects)]}
    score = ImageScore(hits=hits)
    for want, got in zip(scene.objects, objs):
        for attr in OBJECT_ATTRIBUTES:
            f = _SPEC_FIELD[attr]
            hits.setdefault(attr, []).append(got is not None and getattr(got, f) == getattr(want, f))
        if got is None:
            score.mask_iou.append(0.0)
            score.shape_iou.append(0.0)
            continue
        ref = object_coverage(want, geometry)
        den = float(np.maximum(ref, got.alpha).sum())
        score.mask_iou.append(float(np.minimum(ref, got.alpha).sum()) / den if den else 0.0)
        score.shape_iou.append(reference_iou(got.alpha, got.centroid, want.shape, geometry.radius(want.size)))
        score.colour_distance.append(float(np.linalg.norm(np.subtract(got.rgb, COLOURS[want.colour]))))
    if len(scene.objects) == 2:
        want_pairs = Counter((o.shape, o.colour) for o in scene.objects)
        got_objs = [o for o in objs if o is not None]
        got_pairs = Counter((o.shape, o.colour) for o in got_objs)
        parts = (Counter(o.shape for o in got_objs) == Counter(o.shape for o in scene.objects)
                 and Counter(o.colour for o in got_objs) == Counter(o.colour for o in scene.objects))
        score.binding = reading.count == 2 and got_pairs == want_pairs
        score.binding_parts = reading.count == 2 and parts
    if isinstance(spec, TaskSpec) and spec.inputs:
        changed = changed_attributes(spec)
        score.edit = all(all(hits[a]) for a in changed)
    return score


@dataclass
class WorldScores:
    """Scores of a set of images; fractions in [0, 1] (None where the set has no such case)."""

    n: int
    per_attribute: dict[str, float]
    micro: float
    all_correct: float
    binding: float | None
    binding_given_parts: float | None
    edit: float | None
    mask_iou: float
    shape_iou: float
    colour_distance: float | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def aggregate(scores: Iterable[ImageScore]) -> WorldScores:
    scores = list(scores)
    if not scores:
        raise ValueError("aggregate: no image scores")
    per: dict[str, list[bool]] = {}
    for s in scores:
        for attr, values in s.hits.items():
            per.setdefault(attr, []).extend(values)
    flat = [v for values in per.values() for v in values]
    binding = [s.binding for s in scores if s.binding is not None]
    given = [s.binding for s in scores if s.binding_parts]
    return WorldScores(
        n=len(scores), per_attribute={a: float(np.mean(per[a])) for a in ATTRIBUTES if a in per},
        micro=float(np.mean(flat)), all_correct=float(np.mean([all(all(v) for v in s.hits.values()) for s in scores])),
        binding=_mean(binding), binding_given_parts=_mean(given),
        edit=_mean([s.edit for s in scores if s.edit is not None]),
        mask_iou=float(np.mean([v for s in scores for v in s.mask_iou])),
        shape_iou=float(np.mean([v for s in scores for v in s.shape_iou])),
        colour_distance=_mean([v for s in scores for v in s.colour_distance]))


def evaluate_pairs(pairs: Iterable[tuple[SceneSpec | TaskSpec, object]], geometry: Geometry = Geometry(),
                   cfg: JudgeConfig = JudgeConfig()) -> WorldScores:
    """Score (prompt spec, image) pairs; images are PIL images or (S, S, 3) arrays in 0..255."""
    return aggregate(score_reading(spec, read_image(img, geometry, cfg), geometry) for spec, img in pairs)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_table(rows: Mapping[str, WorldScores]) -> str:
    """A Markdown table, one row per named score set (percentages; colour distance in RGB units)."""
    head = ["set", "n", *ATTRIBUTES, "micro", "all", "binding", "edit", "mask IoU", "shape IoU", "colour dist"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        cells = [name, str(s.n), *(_pct(s.per_attribute.get(a)) for a in ATTRIBUTES), _pct(s.micro),
                 _pct(s.all_correct), _pct(s.binding), _pct(s.edit), _pct(s.mask_iou), _pct(s.shape_iou),
                 "-" if s.colour_distance is None else f"{s.colour_distance:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
