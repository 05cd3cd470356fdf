"""Fixtures for the inspection tests: one thread (the CPU is shared) and the tiny OmniGen."""

from __future__ import annotations

import pytest

from deft_omni.model import ensure_tiny_omnigen


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def tiny_model_dir():
    return ensure_tiny_omnigen()
