"""What a folder is (one training run or a multirun sweep) and what it holds, read leniently.

A run folder (``python -m deft_omni.train``) has some of: summary.json, config.yaml,
loss_history.json, logs/metrics.csv, samples/step_*.png, .hydra/overrides.yaml.  A sweep
folder (``-m``) has numbered job folders 0, 1, ... (each a run) and multirun.yaml.  A missing
file is a missing section of the report, never a crash.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

RUN_MARKERS = ("summary.json", "loss_history.json", "logs/metrics.csv", "config.yaml", ".hydra/config.yaml")


class ReportError(ValueError):
    """A folder that cannot be reported on (names the folder and what was expected)."""


def job_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def detect(folder: Path) -> str:
    """'run', 'sweep' or 'study' (python -m deft_omni.study); anything else raises ReportError saying what was looked for."""
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder; pass a training run folder or a multirun sweep folder.")
    if (folder / "study.json").is_file():
        return "study"
    if (folder / "multirun.yaml").is_file() or job_dirs(folder):
        return "sweep"
    if any((folder / m).exists() for m in RUN_MARKERS):
        return "run"
    raise ReportError(
        f"{folder} is neither a training run (none of {', '.join(RUN_MARKERS)}) nor a multirun sweep "
        f"(no multirun.yaml, no numbered job folders 0, 1, ...). Pass the folder given as hydra.run.dir "
        f"or hydra.sweep.dir to python -m deft_omni.train."
    )


def read_json(path: Path) -> Optional[Any]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def read_overrides(folder: Path) -> list[str]:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        return [str(o) for o in OmegaConf.load(path)]
    except Exception:  # noqa: BLE001 -- a damaged file: the job row simply shows no overrides
        return []


def read_config(folder: Path) -> Optional[Any]:
    for rel in ("config.yaml", ".hydra/config.yaml"):
        path = folder / rel
        if path.is_file():
            try:
                return OmegaConf.load(path)
            except Exception:  # noqa: BLE001
                continue
    return None


def adapter_fields(folder: Path) -> dict[str, Any]:
    """method, decomposition and rank of the run's adapter (from its config.yaml)."""
    cfg = read_config(folder)
    if cfg is None:
        return {}
    out = {}
    for key in ("method", "decomposition", "rank", "alpha"):
        value = OmegaConf.select(cfg, f"adapter.{key}", default=None)
        if value is not None:
            out[key] = value
    return out


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_metrics_csv(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Lightning CSVLogger's metrics.csv as column -> [(step, value)], blank cells skipped."""
    path = folder / "logs" / "metrics.csv"
    if not path.is_file():
        return {}
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            step = _number(row.get("step", ""))
            if step is None:
                continue
            for key, text in row.items():
                if key in ("step", "epoch") or key is None:
                    continue
                value = _number(text)
                if value is not None:
                    series.setdefault(key, []).append((int(step), value))
    return series


def read_loss_history(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """loss_history.json's {'train': [[step, loss]], 'val': [[step, loss]]} (LossCurveCallback)."""
    data = read_json(folder / "loss_history.json")
    if not isinstance(data, dict):
        return {}
    out = {}
    for key in ("train", "val"):
        points = []
        for item in data.get(key, []) or []:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                points.append((int(item[0]), float(item[1])))
            elif isinstance(item, dict) and "loss" in item:
                points.append((int(item.get("step", len(points))), float(item["loss"])))
        out[key] = points
    return out


def sample_grids(folder: Path) -> list[Path]:
    return sorted((folder / "samples").glob("step_*.png")) if (folder / "samples").is_dir() else []


def eval_metrics(folder: Path) -> dict[str, tuple[float, Optional[float]]]:
    """name -> (mean, std or None) from every eval*/metrics.json ({name: v} or {name: {mean, std}})."""
    found = sorted(folder.glob("eval*/metrics.json"))
    out: dict[str, tuple[float, Optional[float]]] = {}
    for path in found:
        data = read_json(path)
        if not isinstance(data, dict):
            continue
        prefix = "" if len(found) == 1 else f"{path.parent.name}/"
        for name, value in data.items():
            if isinstance(value, dict) and _number(value.get("mean")) is not None:
                out[prefix + name] = (float(value["mean"]), _number(value.get("std")))
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and _number(value) is not None:
                out[prefix + name] = (float(value), None)
    return out


def expected_jobs(folder: Path) -> Optional[int]:
    """How many jobs the basic sweeper's overrides ask for (key=a,b,c lists), if readable."""
    path = folder / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        task = OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=[]) or []
    except Exception:  # noqa: BLE001
        return None
    count = 1
    for override in task:
        _, _, value = str(override).partition("=")
        if any(fn in value for fn in ("range(", "choice(", "interval(", "glob(")):
            return None  # sweep functions: the job count is not a simple product
        depth, parts, quote = 0, 1, ""
        for ch in value:
            if quote:
                quote = "" if ch == quote else quote
                continue
            quote = ch if ch in "'\"" else ""
            depth += ch in "[({"
            depth -= ch in "])}"
            parts += ch == "," and depth == 0
        count *= parts
    return count


def collect_sweep_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder of a multirun: its overrides and its summary.json (or "failed")."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
        row: dict[str, Any] = {"job": job.name, "overrides": " ".join(overrides)}
        summary = job / "summary.json"
        if summary.exists():
            row.update(json.loads(summary.read_text()))
        else:
            row["final_loss"] = "failed"
        rows.append(row)
    return rows
