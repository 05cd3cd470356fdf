"""Fixtures for the training tests: one thread and tiny synthetic shards."""

from __future__ import annotations

import pytest

from deft_omni.data import make_synthetic_shards


@pytest.fixture(autouse=True)
def _one_thread_single_process(one_thread, single_process):
    yield


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """12 train / 4 val samples, all 32x32, half of them image-conditioned."""
    return make_synthetic_shards(str(tmp_path_factory.mktemp("training") / "shards"), n_train=12, n_val=4,
                                 image_sizes=((32, 32),), maxcount=6, edit_fraction=0.5)
