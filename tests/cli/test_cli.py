"""The command line for real: a CLI smoke run, 2-process CPU DDP from Hydra, a 2-job multirun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ["experiment=tiny_synthetic", "max_steps=6", "data.synthetic.n_train=48", "data.synthetic.n_val=8", "data.batch_size=2",
        "trainer.val_check_interval=3", "callbacks.sample_every_n_steps=100", "callbacks.progress_refresh_rate=0"]


def _run(args, tmp_path, timeout=300):
    env = {**os.environ, "DEFT_OMNI_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "deft_omni.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_cli_smoke_and_config_error(tmp_path):
    _run([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert (tmp_path / "run" / "adapters" / "final" / "deft_omni.json").exists()
    bad = subprocess.run([sys.executable, "-m", "deft_omni.train", "adapter.rank=-2",
                          f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DEFT_OMNI_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert bad.returncode != 0 and "config error: adapter: AdapterConfig.rank must be a positive" in bad.stderr


def test_ddp_cpu2_from_hydra(tmp_path):
    rec = tmp_path / "rec"
    run_dir = tmp_path / "runs" / "ddp"
    _run([*TINY, "trainer=ddp_cpu2", f"hydra.run.dir={run_dir}",
          f"+callbacks.extra=[{{_target_: tests.cli.recorder.RankRecorder, out: '{rec}'}}]"], tmp_path)
    seen = [json.loads((rec / f"rank{r}.json").read_text())["keys"] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 6  # same number of batches on both ranks
    keys0 = {k for batch in seen[0] for k in batch}
    keys1 = {k for batch in seen[1] for k in batch}
    assert keys0 and keys1 and not keys0 & keys1  # disjoint shards
    w0, w1 = load_file(str(rec / "rank0.safetensors")), load_file(str(rec / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert (w0[k] == w1[k]).all(), k
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]  # one output folder
    assert (run_dir / "adapters" / "final").is_dir()


def test_multirun_writes_a_summary_table(tmp_path):
    sweep = tmp_path / "sweep"
    _run(["-m", *TINY, "max_steps=3", "adapter.rank=2,4", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=400)
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    # One row per job, in job order, each with the job's own overrides (the sweep's value last).
    assert [r["job"] for r in rows] == ["0", "1"]
    assert [r["overrides"].split()[-1] for r in rows] == ["adapter.rank=2", "adapter.rank=4"]
    assert all("max_steps=3" in r["overrides"].split() for r in rows)
    assert all(float(r["final_loss"]) > 0 and int(r["trainable_params"]) > 0 for r in rows)
    assert int(rows[1]["trainable_params"]) == 2 * int(rows[0]["trainable_params"])
    assert "| job | overrides |" in (sweep / "summary.md").read_text()
