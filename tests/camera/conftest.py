"""Fixtures for the camera tests: one thread, the synthetic camera scene."""

from __future__ import annotations

import pytest

from deft_omni.camera.synthetic import make_camera_scene_shards


@pytest.fixture(autouse=True)
def _one_thread_single_process(one_thread, single_process):
    yield


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """256 train / 16 held-out views of the synthetic scene, 32x32."""
    return make_camera_scene_shards(str(tmp_path_factory.mktemp("camera") / "scene"), n_train=256, n_val=16)
