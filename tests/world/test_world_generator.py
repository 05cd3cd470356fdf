"""The shapes world: scenes obey the rules, every sample is a pure function of its seed, the
compositional split holds, and the shards carry what the judge needs."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import webdataset as wds

from deft_omni.data import ShardSet, parse_sample, read_manifest
from deft_omni.world.render import render_scene
from deft_omni.world.shards import make_world_shards
from deft_omni.world.spec import (
    HELD_OUT_PAIRS,
    SHAPES,
    Geometry,
    ObjectSpec,
    SceneSpec,
    cells_apart,
    task_from_meta,
    task_to_meta,
)
from deft_omni.world.tasks import TASKS, held_out_prompts, mixed_task


def _samples(path):
    urls = ShardSet.resolve(path).urls
    return [parse_sample(r) for r in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


def test_vocabulary_is_as_large_as_the_issue_asks():
    from deft_omni.world.spec import BACKGROUNDS, COLOURS, SIZES

    assert len(SHAPES) >= 5 and len(COLOURS) >= 6 and len(BACKGROUNDS) >= 4 and len(SIZES) == 2


def test_two_objects_never_touch_and_equal_areas():
    with pytest.raises(ValueError, match="touch"):
        SceneSpec((ObjectSpec("circle", "red", "large", 0), ObjectSpec("square", "blue", "large", 4)), "white")
    specs = held_out_prompts(300, "text_two", "seen", seed=3)
    assert all(cells_apart(*(o.cell for o in s.target.objects)) for s in specs)
    areas = []
    for shape in SHAPES:  # "large"/"small" are areas: equal whatever the shape
        img = np.asarray(render_scene(SceneSpec((ObjectSpec(shape, "red", "large", 4),), "black")), dtype=float)
        areas.append(((img[..., 0] - 20) / (220 - 20)).sum())  # red channel: coverage of red on black
    assert max(areas) / min(areas) < 1.03 and abs(areas[0] - np.pi * Geometry().large_radius ** 2) < 5


def test_samples_are_pure_functions_of_the_seed():
    a = [mixed_task(5, "train", i) for i in range(40)]
    b = [mixed_task(5, "train", i) for i in range(40)]
    c = [mixed_task(6, "train", i) for i in range(40)]
    assert a == b and a != c
    assert {s.task for s in a} == set(TASKS)
    assert [render_scene(s.target).tobytes() for s in a[:5]] == [render_scene(s.target).tobytes() for s in b[:5]]


def test_compositional_split():
    train = [mixed_task(0, "train", i) for i in range(600)]
    assert not any((o.shape, o.colour) in HELD_OUT_PAIRS for s in train for sc in (s.target, *s.inputs)
                   for o in sc.objects)
    for task in TASKS:
        unseen = held_out_prompts(30, task, "unseen", seed=1)
        assert all(s.combo == "unseen" and s.target.combo == "unseen" for s in unseen), task
        assert all(s.combo == "seen" for s in held_out_prompts(30, task, "seen", seed=1)), task


def test_edits_change_only_what_they_say():
    for spec in held_out_prompts(60, "recolour", seed=2):
        (src,), dst = spec.inputs, spec.target
        assert src.objects[0].colour != dst.objects[0].colour and dst.objects[0].colour in spec.instruction
        assert src.objects[0].replace(colour=dst.objects[0].colour) == dst.objects[0]
    for spec in held_out_prompts(60, "move", seed=2):
        assert spec.inputs[0].objects[0].replace(cell=spec.target.objects[0].cell) == spec.target.objects[0]
    for spec in held_out_prompts(60, "background", seed=2):
        assert spec.inputs[0].replace(background=spec.target.background) == spec.target
    counts = Counter(spec.instruction.count(" and ") for spec in held_out_prompts(60, "same_but", seed=2))
    assert set(counts) == {0, 1}


def test_metadata_round_trip():
    for spec in held_out_prompts(10, "same_but", seed=4) + held_out_prompts(10, "text_two", seed=4):
        back = task_from_meta(task_to_meta(spec), spec.instruction)
        assert back == spec


def test_shards_written_once_and_reused(tmp_path):
    out = str(tmp_path / "world")
    paths = make_world_shards(out, n_train=24, n_val=6, maxcount=10, geometry=Geometry())
    assert read_manifest(paths["train"])["total"] == 24 and read_manifest(paths["val"])["total"] == 6
    tar = ShardSet.resolve(paths["train"]).urls[0]
    mtime = os.stat(tar).st_mtime_ns
    assert make_world_shards(out, n_train=24, n_val=6, maxcount=10) == paths
    assert os.stat(tar).st_mtime_ns == mtime
    for s in _samples(paths["train"]):
        spec = task_from_meta(s.meta, s.instruction)
        assert s.meta["split"] == "seen" and s.task == spec.task
        assert s.output.tobytes() == render_scene(spec.target).tobytes()
        assert len(s.inputs) == len(spec.inputs) == s.instruction.count("<|image_1|>")
