"""Chance: the expected adherence of an image drawn independently of its prompt from the same
prompt distribution (a valid world render of another prompt of the same set).

The judge compares attribute slots one by one (background, count, and per object in reading
order shape, colour, size, position), so the chance of slot ``a`` is the collision
probability of its marginal, ``sum_v P(a = v)^2``, and micro chance is the mean over a
prompt's attribute instances.  The marginals follow :mod:`deft_omni.world.tasks`:

* background uniform over 4: 1/4; size uniform over 2: 1/2; count fixed per set: 1;
* seen object: shape uniform over 5, colour uniform over the shape's 5 seen colours, so
  cyan (never held out) has P = 1/5 and each other colour 4/25: shape 1/5, colour
  1/25 + 5 (4/25)^2 = 0.168; held-out object: one of the 5 held-out pairs uniformly: shape
  1/5, colour 1/5;
* one object: cell uniform over 9: 1/9; two objects: the cell pair uniform over the 16
  pairs of cells that do not touch, slot 1 = the earlier cell in reading order;
* ``unseen`` two-object prompts: the first object drawn holds a held-out pair, the second
  one with probability 1/2, and each lands in either reading slot with probability 1/2, so
  each slot's pair is held-out with probability 3/4;
* edits (recolour, move, background, same_but): the target is a one-object scene drawn as
  for ``text_one``, so their chance is ``text_one``'s.

Binding chance: the probability that two independent draws give the same multiset of
(shape, colour) pairs, ``sum_M P(M)^2``, by exact enumeration.
"""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

from .spec import APART_PAIRS, BACKGROUNDS, COLOURS, COMBOS, GRID, HELD_OUT_PAIRS, SHAPES, SIZES
from .tasks import TASKS

Dist = dict[object, Fraction]


def _pair_dist(combo: str) -> Dist:
    """(shape, colour) distribution of one object drawn with ``combo``."""
    if combo == "unseen":
        return {p: Fraction(1, len(HELD_OUT_PAIRS)) for p in sorted(HELD_OUT_PAIRS)}
    out: Dist = {}
    for shape in SHAPES:
        colours = [c for c in COLOURS if (shape, c) not in HELD_OUT_PAIRS]
        for c in colours:
            out[(shape, c)] = Fraction(1, len(SHAPES) * len(colours))
    return out


def _mix(a: Dist, b: Dist, wa: Fraction) -> Dist:
    out: Dist = defaultdict(Fraction)
    for k, p in a.items():
        out[k] += wa * p
    for k, p in b.items():
        out[k] += (1 - wa) * p
    return dict(out)


def _marginal(dist: Dist, index: int) -> Dist:
    out: Dist = defaultdict(Fraction)
    for k, p in dist.items():
        out[k[index]] += p
    return dict(out)


def _collision(dist: Dist) -> Fraction:
    return sum((p * p for p in dist.values()), Fraction(0))


def _uniform(values) -> Dist:
    values = list(values)
    return {v: Fraction(1, len(values)) for v in values}


def _slot_pairs(task: str, combo: str) -> list[Dist]:
    if task != "text_two":
        return [_pair_dist(combo)]
    if combo == "seen":
        return [_pair_dist("seen")] * 2
    slot = _mix(_pair_dist("unseen"), _pair_dist("seen"), Fraction(3, 4))
    return [slot, slot]


def _slot_cells(task: str) -> list[Dist]:
    if task != "text_two":
        return [_uniform(range(GRID * GRID))]
    first: Dist = defaultdict(Fraction)
    second: Dist = defaultdict(Fraction)
    for a, b in APART_PAIRS:
        first[min(a, b)] += Fraction(1, len(APART_PAIRS))
        second[max(a, b)] += Fraction(1, len(APART_PAIRS))
    return [dict(first), dict(second)]


def _binding_chance(combo: str) -> Fraction:
    multisets: Dist = defaultdict(Fraction)
    if combo == "seen":
        firsts, seconds = _pair_dist("seen"), _pair_dist("seen")
    else:  # First drawn held out; second held out or seen with probability 1/2 each.
        firsts, seconds = _pair_dist("unseen"), _mix(_pair_dist("unseen"), _pair_dist("seen"), Fraction(1, 2))
    for a, pa in firsts.items():
        for b, pb in seconds.items():
            multisets[tuple(sorted((a, b)))] += pa * pb
    return _collision(multisets)


def chance(task: str, combo: str = "seen") -> dict[str, float]:
    """Per-attribute, ``micro`` and (two objects) ``binding`` chance of a task's prompt set."""
    if task not in TASKS or combo not in COMBOS:
        raise ValueError(f"chance: unknown task/combo {task!r}/{combo!r}; tasks {TASKS}, combos {COMBOS}")
    pairs, cells = _slot_pairs(task, combo), _slot_cells(task)
    slots = {"shape": [_collision(_marginal(p, 0)) for p in pairs],
             "colour": [_collision(_marginal(p, 1)) for p in pairs],
             "size": [_collision(_uniform(SIZES))] * len(pairs),
             "position": [_collision(c) for c in cells]}
    per = {"background": [_collision(_uniform(BACKGROUNDS))], "count": [Fraction(1)], **slots}
    flat = [v for values in per.values() for v in values]
    out = {a: float(sum(v) / len(v)) for a, v in per.items()}
    out["micro"] = float(sum(flat) / len(flat))
    if task == "text_two":
        out["binding"] = float(_binding_chance(combo))
    return out
