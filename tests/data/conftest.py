"""Fixtures for the data tests: a tiny offline tokenizer and a processor around it."""

from __future__ import annotations

import pytest
from ._data_helpers import build_tiny_tokenizer

from deft_omni.data import OmniGenTrainProcessor


@pytest.fixture(autouse=True)
def _single_process(single_process):
    yield


@pytest.fixture(scope="session")
def tokenizer():
    tok = build_tiny_tokenizer()
    assert tok.bos_token_id == 1 and tok.unk_token_id == 0
    return tok


@pytest.fixture()
def processor(tokenizer):
    return OmniGenTrainProcessor(tokenizer, max_image_side=64, cfg_dropout=0.0)
