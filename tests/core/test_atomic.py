"""The atomic writer: content appears whole or not at all, modes follow the umask, stale
temporaries are found and removed."""

import os
import subprocess
import sys
import time

import pytest

from deft_omni.core import atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(old)


def _mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_modes_follow_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        f = atomic.write_text(tmp_path / "a.txt", "x")
        with atomic.atomic_dir(tmp_path / "d") as staging:
            (staging / "inner.json").write_text("{}")
        with atomic.atomic_path(tmp_path / "p.bin") as tmp:
            tmp.write_bytes(b"1")
    finally:
        os.umask(old)
    assert _mode(f) == 0o666 & ~mask
    assert _mode(tmp_path / "d") == 0o777 & ~mask
    assert _mode(tmp_path / "d" / "inner.json") == 0o666 & ~mask
    assert _mode(tmp_path / "p.bin") == 0o666 & ~mask


def test_failed_write_leaves_target_and_no_temp(tmp_path, umask_022):
    target = tmp_path / "t.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(target, "w") as fh:
            fh.write("{half")
            raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_dir_replaces_whole_folder(tmp_path, umask_022):
    target = tmp_path / "folder"
    with atomic.atomic_dir(target) as s:
        (s / "old.txt").write_text("old")
    with atomic.atomic_dir(target) as s:
        (s / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
    with pytest.raises(FileExistsError):
        with atomic.atomic_dir(target, replace=False):
            pass
    with pytest.raises(ValueError):
        with atomic.atomic_dir(target) as s:
            (s / "x").write_text("x")
            raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_temp_names_are_recognisable(tmp_path):
    tmp = atomic.temp_sibling(tmp_path / "step_000100.ckpt")
    assert atomic.parse_temp_name(tmp.name) == ("step_000100.ckpt", os.getpid())
    assert atomic.parse_temp_name("step_000100.ckpt") is None
    assert atomic.parse_temp_name(".step_000100.tmp") is None


def test_clean_stale(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    parent_pid = os.getppid()  # alive, not ours
    (tmp_path / f".a.ckpt{atomic.TMP_MARK}{dead_pid}-ab").write_text("x")
    (tmp_path / f".b{atomic.TMP_MARK}{os.getpid()}-cd").mkdir()
    alive_recent = tmp_path / f".c{atomic.TMP_MARK}{parent_pid}-ef"
    alive_recent.write_text("x")
    alive_old = tmp_path / f".d{atomic.TMP_MARK}{parent_pid}-01"
    alive_old.write_text("x")
    past = time.time() - 3600
    os.utime(alive_old, (past, past))
    keep = tmp_path / "real.ckpt"
    keep.write_text("x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / f".e{atomic.TMP_MARK}{dead_pid}-aa").write_text("x")
    removed = atomic.clean_stale(tmp_path, started_before=time.time() - 60)
    names = {p.name for p in removed}
    assert names == {f".a.ckpt{atomic.TMP_MARK}{dead_pid}-ab", f".b{atomic.TMP_MARK}{os.getpid()}-cd",
                     alive_old.name}
    assert alive_recent.exists() and keep.exists()
    assert (sub / f".e{atomic.TMP_MARK}{dead_pid}-aa").exists()
    atomic.clean_stale(tmp_path, recursive=True)
    assert not (sub / f".e{atomic.TMP_MARK}{dead_pid}-aa").exists()


def test_dtype_vocabulary():
    import torch

    from deft_omni.core import dtype_name, resolve_dtype

    for spelling in ("bf16", "bfloat16", "torch.bfloat16", "BF16"):
        assert resolve_dtype(spelling) is torch.bfloat16
    for spelling in ("fp16", "float16"):
        assert resolve_dtype(spelling) is torch.float16
    for spelling in ("fp32", "float32"):
        assert resolve_dtype(spelling) is torch.float32
    assert dtype_name("bf16") == "bfloat16"
    with pytest.raises(ValueError, match="bf16"):
        resolve_dtype("int3")


def test_writers_that_chmod_are_overruled(tmp_path, umask_022):
    """safetensors' save_file makes its file 0600 whatever the umask; the writer settles it."""
    import torch
    from safetensors.torch import save_file

    with atomic.atomic_path(tmp_path / "a.safetensors") as tmp:
        save_file({"x": torch.zeros(2)}, str(tmp))
    with atomic.atomic_dir(tmp_path / "folder") as staging:
        save_file({"x": torch.zeros(2)}, str(staging / "b.safetensors"))
    assert _mode(tmp_path / "a.safetensors") == 0o644
    assert _mode(tmp_path / "folder" / "b.safetensors") == 0o644
