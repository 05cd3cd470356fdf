"""World instructions parse back into their scenes, and ``evaluate --world`` judges a generate-style
folder (PNG + sidecar) from the instructions alone."""

from __future__ import annotations

import json

import pytest

from deft_omni.evaluate import main as evaluate_main
from deft_omni.world.concept import concept_prompts
from deft_omni.world.parse import WorldPromptError, parse_instruction
from deft_omni.world.render import render_scene
from deft_omni.world.tasks import held_out_prompts


def _same(a, b) -> bool:
    key = lambda s: ([(o.shape, o.colour, o.size, o.cell) for o in s.objects], s.background)  # noqa: E731
    return key(a) == key(b)


def test_every_text_prompt_parses_back():
    specs = held_out_prompts(50, "text_one") + held_out_prompts(50, "text_two", "unseen") + concept_prompts(20, "concept_pair")
    assert all(_same(parse_instruction(s.instruction), s.target) for s in specs)


@pytest.mark.parametrize("text", ["a red circle", "a large red blob at the top on a white background",
                                  "a large red circle at the top left and a large blue square at the top on a "
                                  "white background"])
def test_other_text_is_refused_with_the_grammar(text):
    with pytest.raises(WorldPromptError, match="world|cannot read|touch"):
        parse_instruction(text)


def test_evaluate_world_scores_a_generated_folder(tmp_path, capsys):
    gen = tmp_path / "gen"
    gen.mkdir()
    specs = held_out_prompts(6, "text_one")
    for i, spec in enumerate(specs):
        target = spec.target if i % 2 == 0 else held_out_prompts(6, "text_one", seed=9)[i].target  # half wrong
        render_scene(target).save(gen / f"{i:03d}.png")
        (gen / f"{i:03d}.json").write_text(json.dumps({"instruction": spec.instruction}))
    assert evaluate_main(["--world", "--generated", str(gen), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 6 and 0.5 <= metrics["micro"] < 1.0
    assert "| gen | 6 |" in capsys.readouterr().out
    (gen / "000.json").write_text(json.dumps({"instruction": "a photo of a dog"}))
    assert evaluate_main(["--world", "--generated", str(gen), "--out", str(tmp_path / "eval2")]) == 2
    assert "000.json: instruction" in capsys.readouterr().err
