"""Adapter folders through the one atomic writer: umask modes, one publish with the caller's
files, and staging into a folder the caller publishes."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from deft_omni.adapters import AdapterConfig, inject_adapter, load_adapter, save_adapter, stage_adapter
from deft_omni.core.atomic import atomic_dir, parse_temp_name

from .conftest import TwoLayer


torch.manual_seed(0)
BASE = TwoLayer()


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = copy.deepcopy(BASE)
    inject_adapter(m, AdapterConfig(rank=2, target_modules=["to_q", "o"], init_identity=False))
    return m


def _mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_folder_and_files_follow_the_umask(model, tmp_path, mask):
    old = os.umask(mask)
    try:
        save_adapter(model, tmp_path / "a")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == 0o777 & ~mask  # a teammate can read a shared adapter
    for f in (tmp_path / "a").iterdir():
        assert _mode(f) == 0o666 & ~mask, f.name


def test_extra_files_join_the_same_publish(model, tmp_path):
    seen = []

    def extra(staging):
        seen.append(staging)
        assert parse_temp_name(staging.name) is not None  # a recognisable temporary, not the target
        assert not (tmp_path / "a").exists()  # nothing published yet
        (staging / "camera.json").write_text("{}")

    save_adapter(model, tmp_path / "a", extra_files=extra)
    assert seen and (tmp_path / "a" / "camera.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_failing_extra_files_leave_the_old_folder(model, tmp_path):
    save_adapter(model, tmp_path / "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}

    def boom(staging):
        (staging / "half.json").write_text("{")
        raise RuntimeError("extension failed")

    with torch.no_grad():
        model.o.owned["default"].P.add_(1.0)
    with pytest.raises(RuntimeError, match="extension failed"):
        save_adapter(model, tmp_path / "a", extra_files=boom)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no staging left behind


def test_stage_adapter_builds_one_folder_with_an_ema_copy(model, tmp_path):
    x = torch.randn(3, 12)
    live = model(x).detach()
    P0 = model.o.owned["default"].P.detach().clone()
    with atomic_dir(tmp_path / "step_10") as staging:
        stage_adapter(model, staging, extra={"training": {"global_step": 10}})
        with torch.no_grad():
            model.o.owned["default"].P.mul_(2.0)  # stands in for the EMA weights
        stage_adapter(model, staging / "ema", extra={"training": {"ema": True}})
        (staging / "world.json").write_text("{}")
        assert not (tmp_path / "step_10").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10"]
    folder = tmp_path / "step_10"
    assert (folder / "world.json").exists() and (folder / "ema" / "deft_omni.json").exists()
    for sub, scale in ((folder, 1.0), (folder / "ema", 2.0)):
        fresh = copy.deepcopy(BASE)
        load_adapter(fresh, sub)
        torch.testing.assert_close(fresh.o.owned["default"].P, scale * P0)
    fresh = copy.deepcopy(BASE)
    load_adapter(fresh, folder)
    torch.testing.assert_close(fresh(x), live)
