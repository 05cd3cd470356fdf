"""`python -m deft_omni.report` on a real tiny run and on a sweep folder built from it."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
from omegaconf import OmegaConf

from deft_omni.report import main, report
from deft_omni.reporting import detect
from deft_omni.reporting.folders import expected_jobs
from deft_omni.training.callbacks import smooth as ema  # the one smoothing (curve and report)

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def _images(md_path):
    return IMAGE.findall(md_path.read_text())


def test_run_report_has_plots_and_sample_grids(tiny_run, tmp_path):
    assert detect(tiny_run) == "run"
    md = report(tiny_run, tmp_path / "rep")
    links = _images(md)
    for name in ("loss.png", "lr.png", "throughput.png"):
        assert name in links, name
    grids = [link for link in links if "samples/step_" in link]
    assert [g.rsplit("/", 1)[-1] for g in grids] == ["step_000006.png", "step_000012.png"]
    for link in links:  # relative links resolve from the report folder
        assert (md.parent / link).is_file(), link
    text = md.read_text()
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert "| steps | 12 |" in text and f"| final_loss | {summary['final_loss']:.4g} |" in text
    assert "rank=2" in text and "max_steps=12" in text
    page = (md.parent / "report.html").read_text()
    assert "<table>" in page and page.count("<img") == len(links)


def _job(src, dst, rank, decomposition, final_loss, overrides):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "adapters"))
    cfg = OmegaConf.load(dst / "config.yaml")
    cfg.adapter.rank, cfg.adapter.decomposition = rank, decomposition
    (dst / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    summary = json.loads((dst / "summary.json").read_text())
    summary["final_loss"] = final_loss
    (dst / "summary.json").write_text(json.dumps(summary))
    (dst / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_sweep_report_one_row_per_job(tiny_run, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    _job(tiny_run, sweep / "0", 2, "qr", 0.5, ["adapter.rank=2", "adapter.decomposition=qr"])
    _job(tiny_run, sweep / "1", 4, "qr", 0.4, ["adapter.rank=4", "adapter.decomposition=qr"])
    _job(tiny_run, sweep / "2", 2, "relu", 0.7, ["adapter.rank=2", "adapter.decomposition=relu"])
    (sweep / "1" / "eval").mkdir()
    (sweep / "1" / "eval" / "metrics.json").write_text(json.dumps({"clip_i": {"mean": 0.8, "std": 0.1},
                                                                    "fid": 3.0}))
    failed = sweep / "3"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text("- adapter.rank=4\n- adapter.decomposition=relu\n")
    (failed / "train.log").write_text("Traceback ...\n")
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": [
        "adapter.rank=2,4", "adapter.decomposition=qr,relu", "+tag='a,b'", "seed=0,1"]}}}), sweep / "multirun.yaml")
    assert expected_jobs(sweep) == 8 and detect(sweep) == "sweep"

    assert main([str(sweep)]) == 0
    out = sweep / "report"
    with open(out / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["job"] for r in rows] == [str(i) for i in range(8)]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"] + ["missing"] * 4
    assert rows[1]["overrides"] == "adapter.rank=4 adapter.decomposition=qr"
    assert rows[3]["overrides"] == "adapter.rank=4 adapter.decomposition=relu" and rows[3]["final_loss"] == ""
    assert [r["rank"] for r in rows[:3]] == ["2", "4", "2"]
    assert [float(r["final_loss"]) for r in rows[:3]] == [0.5, 0.4, 0.7]
    assert rows[1]["eval/clip_i"] == "0.8" and rows[1]["eval/clip_i_std"] == "0.1" and rows[1]["eval/fid"] == "3.0"
    assert rows[0]["eval/clip_i"] == ""
    md = (out / "report.md").read_text()
    assert "loss_vs_rank.png" in md and (out / "loss_vs_rank.png").is_file()
    assert "job 3 (failed)" in md and "job 7 (missing)" in md and "0.8 ± 0.1" in md
    assert "Lowest final loss: job 1" in md


def test_neither_run_nor_sweep_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hi")
    assert main([str(tmp_path / "stuff")]) == 2
    err = capsys.readouterr().err
    assert "neither a training run" in err and "hydra.run.dir" in err
    assert main([str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_ema_is_debiased():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.5 * 0.5 * 1 + 0.5 * 3) / 0.75])
