"""The report of one training run: summary, loss / lr / throughput plots, sample grids over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .folders import (
    adapter_fields,
    eval_metrics,
    read_json,
    read_loss_history,
    read_metrics_csv,
    read_overrides,
    sample_grids,
)
from .pages import fmt, image, table, write_pages
from .plots import loss_plot, series_plot, throughput_plot

SUMMARY_KEYS = ["steps", "final_loss", "min_loss", "val_loss", "trainable_params", "steps_per_s",
                "peak_memory_mb", "wall_s"]
PERF_KEYS = ("perf/samples_per_s", "perf/tokens_per_s", "perf/step_s", "perf/peak_mem_gb")


def train_val_series(run: Path, metrics: dict[str, list]) -> tuple[list, list]:
    """Per-step train loss (loss_history.json, else metrics.csv) and val loss (either)."""
    history = read_loss_history(run)
    train = history.get("train") or metrics.get("train/loss") or metrics.get("train/loss_step") or []
    val = history.get("val") or metrics.get("val/loss") or []
    return train, val


def run_report(run: Path, out: Path, smoothing: float = 0.9) -> Path:
    """Write report.md / report.html and the PNGs into `out`; returns the Markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = read_metrics_csv(run)
    train, val = train_val_series(run, metrics)
    summary = read_json(run / "summary.json")
    adapter = adapter_fields(run)
    overrides = read_overrides(run)

    lines = [f"# Training run `{run.name}`", "", f"- **folder**: `{run.resolve()}`"]
    if adapter:
        lines.append("- **adapter**: " + ", ".join(f"{k}={v}" for k, v in adapter.items()))
    if overrides:
        lines.append("- **overrides**: `" + " ".join(overrides) + "`")
    if not isinstance(summary, dict):
        lines.append("- **status**: no summary.json: the run is unfinished or failed (see train.log)")
    lines.append("")
    if isinstance(summary, dict):
        lines += ["## Summary", ""]
        lines += table([("key", "key"), ("value", "value")],
                       [{"key": k, "value": summary.get(k)} for k in SUMMARY_KEYS if k in summary])
        lines.append("")
    evals = eval_metrics(run)
    if evals:
        lines += ["## Evaluation", ""]
        lines += table([("name", "metric"), ("value", "value")], [{"name": k, "value": v} for k, v in evals.items()])
        lines.append("")

    lines += ["## Curves", ""]
    plots = [
        loss_plot(train, val, out / "loss.png", smoothing),
        series_plot({k: v for k, v in metrics.items() if k.startswith("lr")}, out / "lr.png",
                    "learning rate per parameter group", "lr"),
        throughput_plot({k: metrics[k] for k in PERF_KEYS if k in metrics}, out / "throughput.png"),
        series_plot({k: v for k, v in metrics.items() if k == "train/grad_norm"}, out / "grad_norm.png",
                    "gradient norm (before clipping)", "‖g‖"),
    ]
    made = [p for p in plots if p is not None]
    for p in made:
        lines += image(p, out)
    if not made:
        lines += ["No loss history or metrics.csv found: nothing to plot.", ""]

    grids = sample_grids(run)
    lines += ["## Sample grids over time", ""]
    if grids:
        for grid in grids:
            step = grid.stem.split("_")[-1].lstrip("0") or "0"
            lines += [f"### step {step}", ""] + image(grid, out, f"samples at step {step}")
    else:
        lines += ["No sample grids (samples/step_*.png) in this run.", ""]
    return write_pages(out, "\n".join(lines), f"run {run.name}")


def run_row(run: Path) -> dict[str, Any]:
    """The facts of one run for a sweep table (summary, adapter fields, eval metrics, status)."""
    summary = read_json(run / "summary.json")
    row: dict[str, Any] = {"job": run.name, "overrides": " ".join(read_overrides(run))}
    row.update(adapter_fields(run))
    if isinstance(summary, dict):
        row.update({k: summary.get(k) for k in SUMMARY_KEYS})
        row["status"] = "ok"
    else:
        row["status"] = "failed" if (run / "train.log").exists() or (run / ".hydra").exists() else "incomplete"
    for name, value in eval_metrics(run).items():
        row[f"eval/{name}"] = value
    row["variant"] = "/".join(fmt(row[k]) for k in ("method", "decomposition") if row.get(k) is not None) or "?"
    return row
