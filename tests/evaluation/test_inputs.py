"""The input contract: eval_prompts.json formats, prompt -> subject, key matching, clear errors."""

from __future__ import annotations

import json

import pytest

from deft_omni.evaluation import (
    EvalConfig,
    EvaluationInputError,
    MetricModelError,
    clip_text,
    collect_items,
    load_clip,
    read_eval_prompts,
)
from deft_omni.evaluation.demo import shapes_image

from ._eval_helpers import write_generated


def test_clip_text_removes_tags_and_token():
    assert clip_text("the sks dog in <img><|image_1|></img>  at night", "sks") == "the dog in at night"
    assert clip_text("sksx stays", "sks") == "sksx stays"


def test_dreambench_eval_prompts(tmp_path):
    """DreamBench++ entries hold one 'image' relative to <root>/images and prompts with/without the token."""
    write_generated(tmp_path / "data" / "images" / "animal", "00.jpg", shapes_image(1))
    entry = {"category": "animal", "name": "cat", "image": "animal/00.jpg", "prompts": ["a cat on a roof"],
             "prompts_with_token": ["a sks cat on a roof"], "instance_prompt": "a photo of sks cat"}
    path = tmp_path / "eval_prompts.json"
    path.write_text(json.dumps({"dataset": "dreambench_plus", "root": str(tmp_path / "data"),
                                "subjects": {"animal_00": entry}}))
    prompts = read_eval_prompts(str(path))
    assert prompts.references == {"animal_00": [str(tmp_path / "data" / "images" / "animal" / "00.jpg")]}
    write_generated(tmp_path / "gen", "0_roof.png", shapes_image(2), instruction="A  sks cat on a roof")
    cfg = EvalConfig(generated=str(tmp_path / "gen"), out=str(tmp_path / "o"), references=str(path), clip="x")
    (item,) = collect_items(cfg, need_text=True, need_refs=True, need_target=False, need_condition=False)
    assert item.subject == "animal_00" and item.references == prompts.references["animal_00"]
    bad = EvalConfig(generated=str(tmp_path / "gen"), out=str(tmp_path / "o"), references=str(path),
                     reference_root=str(tmp_path / "moved"))
    with pytest.raises(EvaluationInputError, match="reference images not found.*--reference-root"):
        collect_items(bad, need_text=False, need_refs=True, need_target=False, need_condition=False)


def test_key_matching_errors(tmp_path):
    write_generated(tmp_path / "targets", "1_target.png", shapes_image(1))
    write_generated(tmp_path / "targets", "1_other.png", shapes_image(2))
    write_generated(tmp_path / "gen", "1_x.png", shapes_image(3))
    cfg = EvalConfig(generated=str(tmp_path / "gen"), out=str(tmp_path / "o"), targets=str(tmp_path / "targets"),
                     key_pattern=r"^(\d+)_")
    with pytest.raises(EvaluationInputError, match="share the key '1'"):
        collect_items(cfg, need_text=False, need_refs=False, need_target=True, need_condition=False)
    with pytest.raises(EvaluationInputError, match="no instruction for: 1_x.png"):
        collect_items(EvalConfig(generated=str(tmp_path / "gen"), out="o"), True, False, False, False)
    with pytest.raises(EvaluationInputError, match="--conditions needs --condition-type"):
        EvalConfig(generated="g", out="o", conditions="c")
    with pytest.raises(EvaluationInputError, match="unknown"):
        EvalConfig(generated="g", out="o", metrics=("fid",))


def test_model_loading_errors(tmp_path):
    with pytest.raises(MetricModelError, match="no such folder"):
        load_clip(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricModelError, match="no config.json"):
        load_clip(str(tmp_path / "empty"))
