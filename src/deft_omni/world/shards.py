"""World samples as the project's shards (train / val), generated once per option set and reused.

Each sample is ``make_sample(key, instruction, render(target), [render(input)...], task=<world
task>, meta=task_to_meta(spec))``: the metadata holds the full attribute spec of the target and
of every input scene (objects with shape, colour, size, cell and render jitter; background;
task; split = seen/unseen), so the judge can score any image generated for that instruction.
Both shard sets hold seen combinations only; unseen prompts come from
:func:`deft_omni.world.tasks.held_out_prompts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from ..data.schema import make_sample
from ..data.synthetic import write_generated_set
from .render import render_scene
from .spec import Geometry, TaskSpec, task_to_meta
from .tasks import DEFAULT_MIX, check_mix, mixed_task

SOURCE = "deft_omni.world"
GENERATOR_VERSION = 1


def task_sample(key: str, spec: TaskSpec, geometry: Geometry = Geometry()) -> dict[str, Any]:
    """The shard sample dict of one task spec (renders its target and inputs)."""
    return make_sample(key, spec.instruction, render_scene(spec.target, geometry),
                       [render_scene(s, geometry) for s in spec.inputs], task=spec.task,
                       meta=task_to_meta(spec))


def world_options(n_train: int, n_val: int, seed: int, mix: Mapping[str, float], geometry: Geometry,
                  maxcount: int) -> dict[str, Any]:
    return {"n_train": int(n_train), "n_val": int(n_val), "seed": int(seed), "mix": check_mix(mix),
            "geometry": asdict(geometry), "maxcount": int(maxcount), "generator_version": GENERATOR_VERSION}


def make_world_shards(out_dir: str, n_train: int = 20000, n_val: int = 256, seed: int = 0,
                      mix: Mapping[str, float] = DEFAULT_MIX, geometry: Geometry = Geometry(),
                      maxcount: int = 1000) -> dict[str, str]:
    """Write (or reuse, when the options match) ``out_dir/{train,val}``; returns the two paths.

    Sample ``i`` of split ``s`` is a pure function of (seed, s, i, mix, geometry), so any
    machine writes the same set.
    """
    if n_train < 1 or n_val < 0:
        raise ValueError(f"make_world_shards: need n_train >= 1 and n_val >= 0, got {n_train}, {n_val}")
    options = world_options(n_train, n_val, seed, mix, geometry, maxcount)

    def make(index: int, split: str) -> dict[str, Any]:
        spec = mixed_task(seed, split, index, options["mix"], geometry)
        return task_sample(f"world_{split}_{index:06d}", spec, geometry)

    return write_generated_set(out_dir, SOURCE, options, {"train": n_train, "val": n_val}, make, maxcount)
