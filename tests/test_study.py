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


def test_shards_split_the_jobs_between_processes_and_the_summary_holds_them_all(tmp_path, monkeypatch):
    import deft_omni.study as study

    ran: list[tuple[int, str]] = []

    def fake_job(out, method, rank, seed, lr, steps, every, judge_n, extra=()):
        _job(out.parent, out.name, [0.1 * seed, 0.2], steps=steps, lr=lr)
        ran.append((seed, method))
        return json.loads((out / "world_judge.json").read_text())

    monkeypatch.setattr(study, "run_job", fake_job)
    args = (["deft_qr", "lora", "para"], [8], [0, 1], 100, 2, 4, {"lora": 0.01})
    study.run_study(tmp_path, *args, shard=study.parse_shard("0/2"))
    first = list(ran)
    result = study.run_study(tmp_path, *args, shard=study.parse_shard("1/2"))
    assert len(first) == 3 and len(ran) == 6 and len(set(ran)) == 6  # disjoint halves, every job once
    assert sorted(result["jobs"]) == sorted(f"{m}_r8_s{s}" for s in (0, 1) for m in ("deft_qr", "lora", "para"))
    assert result["table"]["lora r8"]["seeds"] == 2
    with pytest.raises(Exception, match="k/n"):
        study.parse_shard("2/2")


def test_the_lr_search_splits_across_workers_and_the_parent_picks_from_all_runs(tmp_path, monkeypatch):
    import deft_omni.study as study

    ran: list[str] = []
    value = {"deft_qr": {0.001: 0.2, 0.01: 0.6}, "lora": {0.001: 0.5, 0.01: 0.1}}

    def fake_job(out, method, rank, seed, lr, steps, every, judge_n, extra=()):
        if not out.is_dir():
            _job(out.parent, out.name, [0.0, value[method][lr]], steps=steps, lr=lr)
            ran.append(out.name)
        return json.loads((out / "world_judge.json").read_text())

    monkeypatch.setattr(study, "run_job", fake_job)
    args = (tmp_path, ["deft_qr", "lora"], 8, 100, 4, (0.001, 0.01))
    assert study.lr_search(*args, shard=(0, 2)) == {} and not (tmp_path / "lr_search.json").exists()
    assert study.lr_search(*args, shard=(1, 2)) == {} and len(ran) == 4 and len(set(ran)) == 4
    record = study.lr_search(*args)  # the parent: every run is read back, none rerun
    assert len(ran) == 4 and record["lr"] == {"deft_qr": 0.01, "lora": 0.001}
    assert json.loads((tmp_path / "lr_search.json").read_text())["lr"] == record["lr"]
