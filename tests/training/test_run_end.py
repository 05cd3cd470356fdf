"""Nothing is lost at the end of a run: a failing optional callback is a warning, and the resume
checkpoint, the final adapter and summary.json are written before optional work; stale
temporaries of interrupted writes are removed at start and end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _training_helpers import make_module, train_loader, trainer

from deft_omni.core.atomic import TMP_MARK
from deft_omni.training import SampleGridCallback, standard_callbacks


class BrokenGrid(SampleGridCallback):
    def render(self, pl_module):
        raise RuntimeError("the sampler broke")


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_failing_sample_grid_changes_nothing(tiny_model_dir, shards, tmp_path):
    module = make_module(tiny_model_dir)
    out = tmp_path / "run"
    stale = out / "checkpoints" / f".last.ckpt{TMP_MARK}{_dead_pid()}-ab"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    cbs = standard_callbacks(out, adapter_every_n_steps=0, resume_every_n_steps=2, progress_refresh_rate=0,
                             summary=lambda tr, m, dt, counts: {"steps": int(tr.global_step),
                                                                "read": counts["data/samples_used"]})
    cbs.append(BrokenGrid(out / "samples", ["a red circle"], every_n_steps=2, num_steps=1))
    from deft_omni.training import SafeCheckpointIO

    with pytest.warns(UserWarning, match="BrokenGrid: could not write .*step_000002.png.*the sampler broke"):
        tr = trainer(out, max_steps=3, callbacks=cbs, plugins=[SafeCheckpointIO()])
        tr.fit(module, train_loader(module, shards))
    assert tr.global_step == 3
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "adapters" / "final" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text()) == {"steps": 3, "read": 6}  # 3 batches of 2
    assert not stale.exists()
    leftovers = [p for p in out.rglob("*") if TMP_MARK in p.name]
    assert leftovers == []


def test_outputs_follow_the_umask(tiny_model_dir, shards, tmp_path):
    old = os.umask(0o027)
    try:
        module = make_module(tiny_model_dir)
        out = tmp_path / "run"
        from deft_omni.training import SafeCheckpointIO

        cbs = standard_callbacks(out, adapter_every_n_steps=1, resume_every_n_steps=1, progress_refresh_rate=0)
        trainer(out, max_steps=1, callbacks=cbs, plugins=[SafeCheckpointIO()]).fit(module, train_loader(module, shards))
    finally:
        os.umask(old)
    for path in [out / "checkpoints" / "last.ckpt", out / "adapters" / "final" / "adapter_model.safetensors",
                 out / "adapters" / "final" / "deft_omni.json"]:
        assert os.stat(path).st_mode & 0o777 == 0o640, path
    for path in [out / "adapters" / "final", out / "adapters" / "step_000001", out / "checkpoints"]:
        assert os.stat(path).st_mode & 0o777 == 0o750, path
