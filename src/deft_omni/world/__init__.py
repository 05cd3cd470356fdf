"""The shapes world (issue 12): procedural scenes with known ground truth, a deterministic judge,
and a small VAE for them.

The generator and the judge are numpy / PIL / OpenCV code; import ``deft_omni.world.tokenizer``,
``.shards``, ``.vae`` and ``.vae_module`` explicitly (they pull in transformers, webdataset,
diffusers and Lightning).

The judge's API for evaluation code::

    specs = held_out_prompts(200, "text_one", "seen", seed=0)     # prompts with ground truth
    images = [...]                                                 # PIL images generated for them
    scores = evaluate_pairs(zip(specs, images))                    # WorldScores
    print(format_table({"text_one/seen": scores}), chance("text_one", "seen"))
"""

from .chance import chance
from .judge import JudgeConfig, Reading, ReadObject, read_image
from .metrics import ATTRIBUTES, WorldScores, evaluate_pairs, format_table, score_reading
from .render import render_array, render_scene
from .spec import (
    BACKGROUNDS,
    COLOURS,
    CONCEPT_SHAPE,
    CONCEPT_WORDS,
    HELD_OUT_PAIRS,
    SHAPES,
    SIZES,
    Geometry,
    ObjectSpec,
    SceneSpec,
    TaskSpec,
    task_from_meta,
    task_to_meta,
)
from .tasks import DEFAULT_MIX, TASKS, describe_scene, held_out_prompts, mixed_task, sample_task

__all__ = [
    "ATTRIBUTES", "BACKGROUNDS", "COLOURS", "CONCEPT_SHAPE", "CONCEPT_WORDS", "DEFAULT_MIX", "HELD_OUT_PAIRS",
    "SHAPES", "SIZES", "TASKS", "Geometry", "JudgeConfig", "ObjectSpec", "ReadObject", "Reading", "SceneSpec",
    "TaskSpec", "WorldScores", "chance", "describe_scene", "evaluate_pairs", "format_table", "held_out_prompts",
    "mixed_task", "read_image", "render_array", "render_scene", "sample_task", "score_reading",
    "task_from_meta", "task_to_meta",
]
