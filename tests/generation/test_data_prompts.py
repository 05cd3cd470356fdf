"""Progress grids show the user's own data: held-out samples with their inputs and reference."""

from __future__ import annotations

from deft_omni.data import make_synthetic_shards
from deft_omni.generation.data_prompts import prompts_from_shards


def test_prompts_from_shards(tmp_path):
    made = make_synthetic_shards(str(tmp_path / "set"), n_train=4, n_val=6, image_sizes=((48, 48),), maxcount=3,
                                 edit_fraction=0.5)
    prompts = prompts_from_shards(made["val"], 4, max_image_side=32)
    assert len(prompts) == 4 and [p.seed for p in prompts] == [0, 1, 2, 3]
    assert all((p.height, p.width) == (32, 32) and p.reference.size == (32, 32) for p in prompts)
    edits = [p for p in prompts if p.input_images]
    assert edits and all("<|image_1|>" in p.instruction for p in edits)
    again = prompts_from_shards(made["val"], 4, max_image_side=32)
    assert [p.instruction for p in again] == [p.instruction for p in prompts]  # the same every run
    assert prompts_from_shards(made["val"], 0, 32) == []
