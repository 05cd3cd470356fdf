"""A Hydra callback that tabulates a multirun: one row per job, CSV and Markdown at the sweep root."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .core.atomic import atomic_file, write_text
from .reporting.folders import collect_sweep_jobs as collect

COLUMNS = ["job", "overrides", "final_loss", "min_loss", "val_loss", "trainable_params", "steps_per_s",
           "peak_memory_mb", "steps"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_tables(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(sweep_dir / "summary.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_tables(sweep_dir, collect(sweep_dir))
