"""Fixtures for the inspection tests: one thread (the CPU is shared)."""

from __future__ import annotations

import pytest



@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
