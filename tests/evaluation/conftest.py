"""Fixtures for the evaluation tests: one thread, tiny random metric models, a few images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from deft_omni.evaluation.demo import shapes_image
from deft_omni.evaluation.models import (
    load_clip,
    load_depth_model,
    load_vision_backbone,
)
from deft_omni.evaluation.tiny import (
    build_tiny_clip,
    build_tiny_depth,
    build_tiny_dino,
    build_tiny_dinov2,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_metric_models")
    torch.set_num_threads(1)
    return {"clip": build_tiny_clip(str(root / "clip")), "dino": build_tiny_dino(str(root / "dino")),
            "dinov2": build_tiny_dinov2(str(root / "dinov2")), "depth": build_tiny_depth(str(root / "depth"))}


@pytest.fixture(scope="session")
def loaded(tiny_dirs):
    return {"clip": load_clip(tiny_dirs["clip"]), "dino": load_vision_backbone(tiny_dirs["dino"]),
            "dinov2": load_vision_backbone(tiny_dirs["dinov2"], flag="--dinov2"),
            "depth": load_depth_model(tiny_dirs["depth"])}


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Five 48x40-ish synthetic images of mixed sizes (the processors resize and crop)."""
    imgs = [shapes_image(seed) for seed in range(4)]
    imgs.append(shapes_image(9, size=56).crop((0, 0, 56, 40)))
    return imgs
