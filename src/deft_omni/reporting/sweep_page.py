"""The report of a multirun sweep: one row per job (Table 4 style) and loss against rank.

The job table extends `deft_omni.sweep.collect`'s rows (overrides + summary.json) with the
adapter's method / decomposition / rank from each job's config.yaml and any eval*/metrics.json.
"""

from __future__ import annotations

from ..core.atomic import atomic_file

import csv
from pathlib import Path
from typing import Any

from .folders import collect_sweep_jobs as collect
from .folders import expected_jobs, job_dirs
from .pages import fmt, image, table, write_pages
from .plots import rank_plot
from .run_page import run_row

BASE_COLUMNS = [("job", "job"), ("status", "status"), ("overrides", "overrides"), ("method", "method"),
                ("decomposition", "decomp."), ("rank", "rank"), ("final_loss", "final loss"),
                ("min_loss", "min loss"), ("val_loss", "val loss"), ("trainable_params", "trainable"),
                ("steps_per_s", "steps/s"), ("peak_memory_mb", "peak MB"), ("steps", "steps")]
RANK_METRICS = ["final_loss", "min_loss", "val_loss"]


def sweep_rows(sweep: Path) -> list[dict[str, Any]]:
    """One row per job folder, plus 'missing' rows for jobs the sweep asked for but never made."""
    by_job = {r["job"]: r for r in collect(sweep)}
    rows = []
    for job in job_dirs(sweep):
        row = run_row(job)
        if not row["overrides"]:
            row["overrides"] = by_job.get(job.name, {}).get("overrides", "")
        rows.append(row)
    wanted = expected_jobs(sweep)
    have = {int(r["job"]) for r in rows}
    for n in range(wanted or 0):
        if n not in have:
            rows.append({"job": str(n), "status": "missing", "variant": "?"})
    rows.sort(key=lambda r: int(r["job"]))
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    evals = list(dict.fromkeys(k for r in rows for k in r if k.startswith("eval/")))
    return BASE_COLUMNS + [(k, k[5:]) for k in evals]


def write_csv(rows: list[dict[str, Any]], columns: list[tuple[str, str]], path: Path) -> Path:
    keys = [k for k, _ in columns]
    with atomic_file(path, "w") as fh:
        writer = csv.writer(fh)
        header = []
        for k in keys:
            header += [k, f"{k}_std"] if k.startswith("eval/") else [k]
        writer.writerow(header)
        for r in rows:
            cells = []
            for k in keys:
                v = r.get(k)
                if k.startswith("eval/"):
                    mean, std = v if isinstance(v, tuple) else (None, None)
                    cells += [mean, std]
                else:
                    cells.append(v)
            writer.writerow(["" if c is None else c for c in cells])
    return path


def sweep_report(sweep: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep_rows(sweep)
    if not rows:
        raise ValueError(f"{sweep}: a multirun folder without job folders (0, 1, ...): nothing ran yet.")
    columns = _columns(rows)
    write_csv(rows, columns, out / "report.csv")
    ok = [r for r in rows if r.get("status") == "ok"]
    bad = [r for r in rows if r.get("status") != "ok"]
    lines = [f"# Sweep `{sweep.name}`", "", f"- **folder**: `{sweep.resolve()}`",
             f"- **jobs**: {len(rows)} ({len(ok)} finished, {len(bad)} failed or missing)"]
    if bad:
        lines.append("- **not finished**: " + ", ".join(f"job {r['job']} ({r['status']})" for r in bad))
    lines += ["", "## Jobs", ""] + table(columns, rows) + ["", "Every value is also in report.csv.", ""]
    metrics = RANK_METRICS + [k for k, _ in columns if k.startswith("eval/")]
    plot = rank_plot([{**r, **{k: (v[0] if isinstance(v, tuple) else v) for k, v in r.items()}} for r in ok],
                     metrics, out / "loss_vs_rank.png")
    lines += ["## Loss against rank", ""]
    lines += image(plot, out, "loss against rank, one line per method/decomposition") if plot else \
        ["No finished job has a rank and a loss: nothing to plot.", ""]
    best = min((r for r in ok if isinstance(r.get("final_loss"), (int, float))),
               key=lambda r: r["final_loss"], default=None)
    if best is not None:
        lines += [f"Lowest final loss: job {best['job']} ({fmt(best['final_loss'])}, `{best['overrides']}`).", ""]
    for r in ok:
        if (sweep / r["job"] / "samples").is_dir():
            lines += ["Per-job pages: `python -m deft_omni.report <sweep>/<job>`.", ""]
            break
    return write_pages(out, "\n".join(lines), f"sweep {sweep.name}")
