"""The judge: exact on clean renders, chance on shuffled pairs, at most chance on noise, and an
analytic chance that matches the prompt distribution."""

from __future__ import annotations

import random

import numpy as np
import pytest

from deft_omni.world.chance import chance
from deft_omni.world.judge import JudgeConfig, read_image
from deft_omni.world.metrics import ATTRIBUTES, evaluate_pairs, format_table, score_reading
from deft_omni.world.render import render_array
from deft_omni.world.spec import CONCEPT_SHAPE, Geometry, ObjectSpec, SceneSpec
from deft_omni.world.tasks import TASKS, held_out_prompts

GEOMETRY = Geometry()


@pytest.fixture(scope="module")
def one_object():
    specs = held_out_prompts(240, "text_one", "seen", seed=21)
    return specs, [render_array(s.target, GEOMETRY) for s in specs]


@pytest.fixture(scope="module")
def two_objects():
    specs = held_out_prompts(120, "text_two", "seen", seed=21)
    return specs, [render_array(s.target, GEOMETRY) for s in specs]


def test_clean_renders_read_exactly(one_object, two_objects):
    for specs, images in (one_object, two_objects):
        scores = evaluate_pairs(zip(specs, images), GEOMETRY)
        assert all(scores.per_attribute[a] >= 0.98 for a in ATTRIBUTES), scores.per_attribute
        assert scores.mask_iou > 0.98
    assert evaluate_pairs(zip(*two_objects), GEOMETRY).binding >= 0.98
    edits = [s for task in TASKS[2:] for s in held_out_prompts(25, task, "unseen", seed=5)]
    scores = evaluate_pairs([(s, render_array(s.target)) for s in edits], GEOMETRY)
    assert scores.edit == 1.0 and scores.micro >= 0.98


def test_concept_shape_is_readable_when_asked():
    cfg = JudgeConfig(shapes=("circle", "square", "triangle", "diamond", "cross", CONCEPT_SHAPE))
    for size in ("small", "large"):
        for cell in (0, 4, 8):
            scene = SceneSpec((ObjectSpec(CONCEPT_SHAPE, "blue", size, cell, 1.3, -0.7),), "white")
            assert read_image(render_array(scene), GEOMETRY, cfg).objects[0].shape == CONCEPT_SHAPE


def test_shuffled_pairs_score_chance(one_object, two_objects):
    for task, (specs, images) in (("text_one", one_object), ("text_two", two_objects)):
        perm = list(range(len(specs)))
        random.Random(0).shuffle(perm)
        shuffled = evaluate_pairs([(specs[i], images[j]) for i, j in enumerate(perm)], GEOMETRY)
        assert abs(shuffled.micro - chance(task)["micro"]) <= 0.03, (task, shuffled.micro)


def test_noise_scores_at_most_chance(one_object):
    specs = one_object[0][:80]
    rng = np.random.default_rng(0)
    expected = chance("text_one")
    for noise in ("uniform", "smooth"):
        images = [rng.uniform(0, 255, (96, 96, 3)) for _ in specs]
        if noise == "smooth":  # blobs of colour, the kind an untrained decoder makes
            images = [np.kron(im[::16, ::16], np.ones((16, 16, 1))) for im in images]
        scores = evaluate_pairs(zip(specs, images), GEOMETRY)
        assert scores.micro <= expected["micro"], (noise, scores.micro)
        assert all(scores.per_attribute[a] <= expected[a] + 0.03 for a in ATTRIBUTES), scores.per_attribute


def test_never_abstains():
    blank = np.full((96, 96, 3), 128.0)
    reading = read_image(blank, GEOMETRY)
    assert reading.background == "gray" and reading.count == 0
    spec = held_out_prompts(1, "text_two", seed=0)[0]
    score = score_reading(spec, reading, GEOMETRY)
    assert sum(map(sum, score.hits.values())) <= 1 and score.binding is False
    assert read_image(np.zeros((64, 64, 3)), GEOMETRY).background == "black"  # other sizes are resized


def test_analytic_chance_matches_the_prompt_distribution():
    """Spec-vs-spec agreement of independent prompts (a perfect judge) estimates chance."""
    for task, combo in (("text_one", "seen"), ("text_two", "unseen"), ("same_but", "unseen")):
        specs = held_out_prompts(3000, task, combo, seed=8)
        rng = random.Random(1)
        agree = {a: [] for a in ATTRIBUTES}
        for spec in specs:
            other = specs[rng.randrange(len(specs))].target
            agree["background"].append(spec.target.background == other.background)
            agree["count"].append(True)
            for mine, theirs in zip(spec.target.objects, other.objects):
                for a, f in (("shape", "shape"), ("colour", "colour"), ("size", "size"), ("position", "cell")):
                    agree[a].append(getattr(mine, f) == getattr(theirs, f))
        expected = chance(task, combo)
        for a in ATTRIBUTES:
            assert abs(np.mean(agree[a]) - expected[a]) < 0.025, (task, combo, a)


def test_table(one_object):
    specs, images = one_object
    table = format_table({"clean": evaluate_pairs(zip(specs[:10], images[:10]), GEOMETRY)})
    assert table.splitlines()[2].startswith("| clean | 10 | 100.0 |")
