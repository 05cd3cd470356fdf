"""The retention study's bookkeeping: finished jobs are found in the folder (also those another
process ran), averaged over seeds, and the report renders the table and the plot."""

from __future__ import annotations

import json

import pytest

from deft_omni.report import report
from deft_omni.study import METRICS, finished_jobs, summarise


def _judge(step: int, value: float) -> dict:
    return {"step": step, **{m: value for m in METRICS}}


def _job(root, name, values, steps=100, lr=0.01):
    folder = root / name
    folder.mkdir()
    history = [_judge(s, v) for s, v in zip((50, steps), values)]
    (folder / "world_judge.json").write_text(json.dumps({"before": _judge(0, 0.5), "after": history[-1],
                                                         "history": history}))
    (folder / "config.yaml").write_text(f"optim:\n  lr: {lr}\n")


def test_jobs_are_found_averaged_and_reported(tmp_path):
    _job(tmp_path, "deft_qr_r8_s0", [0.2, 0.4])
    _job(tmp_path, "deft_qr_r8_s1", [0.4, 0.6])
    _job(tmp_path, "lora_r8_s0", [0.1, 0.3])
    _job(tmp_path, "lora_r8_s1", [0.1, 0.3], steps=80)  # another horizon: not this study's
    (tmp_path / "notes").mkdir()
    jobs = finished_jobs(tmp_path, 100)
    assert sorted(jobs) == ["deft_qr_r8_s0", "deft_qr_r8_s1", "lora_r8_s0"]
    assert jobs["deft_qr_r8_s1"]["lr"] == 0.01 and jobs["deft_qr_r8_s1"]["seed"] == 1
    result = summarise(jobs)
    mean, std = result["table"]["deft_qr r8"]["acquisition"]
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.1414, abs=1e-3)
    assert [p["step"] for p in result["curves"]["deft_qr r8"]] == [0, 50, 100]
    assert result["curves"]["deft_qr r8"][1]["retention"] == pytest.approx(0.3)
    (tmp_path / "study.json").write_text(json.dumps({"settings": {"steps": 100, "every": 50, "judge_n": 4},
                                                     "jobs": jobs, **result, "seconds": 60}))
    page = report(tmp_path).read_text()
    assert "| deft_qr r8 | 2 | 0.01 | 50.0 ± 14.1 |" in page
    assert (tmp_path / "report" / "acquisition_vs_retention.png").is_file()
