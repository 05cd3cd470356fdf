"""Fixtures for the backbone tests: one thread, the tiny SD stacks, DreamBooth shards."""

from __future__ import annotations

import pytest

from deft_omni.backbones.sd_tiny import ensure_tiny_sd15, ensure_tiny_sdxl

from ._sd_data import dreambooth_shards


@pytest.fixture(autouse=True)
def _one_thread(one_thread, single_process):
    yield


@pytest.fixture(scope="session")
def tiny_sd_dirs():
    """The tiny random SD1.5 and SDXL folders (diffusers layout), built once into the cache."""
    return {"sd15": ensure_tiny_sd15(), "sdxl": ensure_tiny_sdxl()}


@pytest.fixture(scope="session")
def db_shards(tmp_path_factory):
    return dreambooth_shards(tmp_path_factory.mktemp("sd_backbone_data"))
