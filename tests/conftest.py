"""Fixtures shared by the test packages."""

from __future__ import annotations

import pytest
import torch

from deft_omni.model import build_tiny_tokenizer, ensure_tiny_omnigen


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and CI's two cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def single_process(monkeypatch):
    """The loader falls back to RANK/WORLD_SIZE; keep a launcher's values out of the tests."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The tiny random OmniGen (diffusers layout), built once into the cache."""
    return ensure_tiny_omnigen()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny model's offline tokenizer."""
    return build_tiny_tokenizer()
