"""Fixtures for the converter tests: a tiny offline tokenizer and a processor around it."""

from __future__ import annotations

import pytest

from deft_omni.data import OmniGenTrainProcessor
from tests.data._data_helpers import build_tiny_tokenizer


@pytest.fixture(autouse=True)
def _single_process(single_process):
    yield


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture()
def processor(tokenizer):
    return OmniGenTrainProcessor(tokenizer, max_image_side=64, cfg_dropout=0.0)
