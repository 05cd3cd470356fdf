"""The personalisation concept: a shape the world base never saw (the star), named ``sks``.

DreamBooth-style: a handful of reference renders with their instructions ("a large red sks at the
center on a white background"), optional class priors drawn from the world itself, and judged
prompt sets that put the concept in compositions the references never showed:

* ``concept``: one ``sks`` with a new colour / cell / size / background: acquisition (shape read
  as a star, shape IoU against the star's reference) and editability (every other attribute);
* ``concept_pair``: an ``sks`` beside a world shape (binding and count with the concept);
* ``base``: world prompts without the concept: retention, compared with the base model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from ..core.seeding import derive_seed
from ..data.synthetic import write_generated_set
from .judge import JudgeConfig
from .shards import task_sample
from .spec import APART_PAIRS, BACKGROUNDS, COLOURS, CONCEPT_SHAPE, GRID, SHAPES, SIZES, Geometry, ObjectSpec, \
    SceneSpec, TaskSpec
from .tasks import describe_scene, held_out_prompts, mixed_task

CONCEPT_WORD = "sks"
SOURCE = "deft_omni.world.concept"
#: the judge for concept images: the star is one more candidate shape
CONCEPT_JUDGE = JudgeConfig(shapes=SHAPES + (CONCEPT_SHAPE,))
#: the references: colours, cells and backgrounds the judged prompts then vary
REFERENCE_COLOURS = ("red", "blue", "yellow", "green", "purple")  # cyan only in judged prompts
REFERENCE_BACKGROUNDS = ("white", "gray", "black")  # brown only in judged prompts
REFERENCE_CELLS = (4, 0, 8, 1, 6, 5, 2, 7, 3)


def _obj(rng: np.random.Generator, cell: int, colours, shape: str = CONCEPT_SHAPE) -> ObjectSpec:
    dx, dy = (round(float(v), 3) for v in rng.uniform(-2.0, 2.0, size=2))
    return ObjectSpec(shape=shape, colour=str(colours[int(rng.integers(len(colours)))]),
                      size=SIZES[int(rng.integers(len(SIZES)))], cell=cell, dx=dx, dy=dy)


def concept_task(scene: SceneSpec, task: str = "concept") -> TaskSpec:
    return TaskSpec(task, describe_scene(scene, {CONCEPT_SHAPE: CONCEPT_WORD}), scene)


def reference_task(index: int, seed: int = 0) -> TaskSpec:
    """Reference ``index``: one star; colours, sizes, cells and backgrounds cycle through the
    reference sets, so even five references vary every attribute (jitter from the seed)."""
    rng = np.random.default_rng(derive_seed("world-concept-ref", seed, index))
    dx, dy = (round(float(v), 3) for v in rng.uniform(-2.0, 2.0, size=2))
    obj = ObjectSpec(shape=CONCEPT_SHAPE, colour=REFERENCE_COLOURS[index % len(REFERENCE_COLOURS)],
                     size=SIZES[(index + 1) % len(SIZES)], cell=REFERENCE_CELLS[index % len(REFERENCE_CELLS)],
                     dx=dx, dy=dy)
    return concept_task(SceneSpec((obj,), REFERENCE_BACKGROUNDS[index % len(REFERENCE_BACKGROUNDS)]), "concept_ref")


def concept_prompts(n: int, kind: str = "concept", seed: int = 0) -> list[TaskSpec]:
    """Judged concept prompts: ``concept`` (one sks in any colour and background, most of them new)
    or ``concept_pair`` (an sks and a world shape in cells that do not touch)."""
    out = []
    for i in range(int(n)):
        rng = np.random.default_rng(derive_seed("world-concept-eval", seed, kind, i))
        bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        if kind == "concept":
            objects = (_obj(rng, int(rng.integers(GRID * GRID)), list(COLOURS)),)
        elif kind == "concept_pair":
            a, b = APART_PAIRS[int(rng.integers(len(APART_PAIRS)))]
            other = SHAPES[int(rng.integers(len(SHAPES)))]
            objects = (_obj(rng, a, list(COLOURS)), _obj(rng, b, list(COLOURS), other))
        else:
            raise ValueError(f"concept prompt kind {kind!r}; choose concept or concept_pair")
        out.append(concept_task(SceneSpec(objects, bg), kind))
    return out


def judged_sets(n: int, seed: int = 123) -> dict[str, list[TaskSpec]]:
    """The prompt sets a concept run is judged on (see the module docstring)."""
    return {"concept": concept_prompts(n, "concept", seed), "concept_pair": concept_prompts(n, "concept_pair", seed),
            "base": held_out_prompts(n, "text_one", "seen", seed=seed)}


def make_concept_shards(out_dir: str, n_refs: int = 5, n_prior: int = 200, seed: int = 0,
                        geometry: Geometry = Geometry()) -> dict[str, str]:
    """``out_dir/train``: the ``n_refs`` references; ``out_dir/val``: world samples (the class
    priors, and the validation loss on the base's own world)."""
    options = {"n_refs": int(n_refs), "n_prior": int(n_prior), "seed": int(seed), "geometry": asdict(geometry),
               "concept": CONCEPT_SHAPE, "word": CONCEPT_WORD, "version": 2}

    def make(index: int, split: str) -> dict[str, Any]:
        if split == "train":
            return task_sample(f"concept_{index:04d}", reference_task(index, seed), geometry)
        spec = mixed_task(seed, "concept-prior", index, {"text_one": 1.0}, geometry)
        return task_sample(f"prior_{index:05d}", spec, geometry)

    return write_generated_set(out_dir, SOURCE, options, {"train": n_refs, "val": n_prior}, make, maxcount=1000)


def concept_options(syn: Mapping[str, Any]) -> dict[str, int]:
    return {"n_refs": int(syn.get("n_refs", 5)), "n_prior": int(syn.get("n_prior", 200)),
            "seed": int(syn.get("seed", 0))}


def concept_roundtrip_scores(vae, n: int = 200, seed: int = 123, geometry: Geometry = Geometry()) -> dict:
    """The judge's scores (star among the candidate shapes) of VAE round trips of ``n`` concept
    renders: the ceiling of the demo's acquisition.  Returns {"concept/roundtrip": WorldScores}."""
    from .metrics import evaluate_pairs
    from .vae import roundtrip, scenes_to_tensor, to_uint8_images

    specs = concept_prompts(n, "concept", seed)
    images = to_uint8_images(roundtrip(vae, scenes_to_tensor([s.target for s in specs], geometry)))
    return {"concept/roundtrip": evaluate_pairs(zip(specs, images), geometry, CONCEPT_JUDGE)}
