"""Per-image rows -> per-subject and overall mean ± std, written as CSV, Markdown and JSON.

The std is the population standard deviation (numpy's default, ``ddof=0``), so a subject
with one image gets 0 rather than NaN. "Overall" pools all images (every image weighs
the same), not the mean of the subject means. Missing values (a metric that does not
apply to an image) are left out of that metric's statistics.
"""

from __future__ import annotations

from ..core.atomic import atomic_file, write_json

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

OVERALL = "overall"


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def _stat(values: Sequence[Any]) -> Stat | None:
    vals = np.array([float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))])
    if vals.size == 0:
        return None
    return Stat(float(vals.mean()), float(vals.std()), int(vals.size))


def aggregate(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, dict[str, Stat | None]]:
    """{subject: {column: Stat}} in first-seen subject order, plus ``OVERALL`` last."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["subject"]), []).append(row)
    out = {s: {c: _stat([r.get(c) for r in rs]) for c in columns} for s, rs in groups.items()}
    out[OVERALL if OVERALL not in groups else f"{OVERALL} (all images)"] = {c: _stat([r.get(c) for r in rows])
                                                                          for c in columns}
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_per_image(path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    head = ["image", "subject", "text"] + list(columns)
    with atomic_file(path, "w", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(head)
        for row in rows:
            writer.writerow([_fmt(row.get(c)) for c in head])


def write_per_subject(path: str, stats: dict[str, dict[str, Stat | None]], columns: Sequence[str]) -> None:
    head = ["subject", "n"] + [f"{c}_{k}" for c in columns for k in ("mean", "std")]
    with atomic_file(path, "w", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(head)
        for subject, per in stats.items():
            n = max((s.n for s in per.values() if s is not None), default=0)
            cells = []
            for c in columns:
                s = per[c]
                cells += [_fmt(s.mean), _fmt(s.std)] if s is not None else ["", ""]
            writer.writerow([subject, n] + cells)


def _pm(stat: Stat | None) -> str:
    if stat is None:
        return "–"
    digits = 1 if abs(stat.mean) >= 100 else 4
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def markdown_table(stats: dict[str, dict[str, Stat | None]], columns: Sequence[str]) -> str:
    """Overall row first (bold), then one row per subject; cells are mean ± std."""
    order = list(stats)[-1:] + list(stats)[:-1]
    lines = ["| subject | n | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for i, subject in enumerate(order):
        per = stats[subject]
        n = max((s.n for s in per.values() if s is not None), default=0)
        label = f"**{subject}**" if i == 0 else subject
        lines.append(f"| {label} | {n} | " + " | ".join(_pm(per[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
                  meta: dict[str, Any], notes: Sequence[str] = ()) -> dict[str, str]:
    """per_image.csv, per_subject.csv, summary.md and metrics.json in ``out``; returns their paths."""
    os.makedirs(out, exist_ok=True)
    stats = aggregate(rows, columns)
    paths = {name: os.path.join(out, name) for name in ("per_image.csv", "per_subject.csv", "summary.md",
                                                         "metrics.json")}
    write_per_image(paths["per_image.csv"], rows, columns)
    write_per_subject(paths["per_subject.csv"], stats, columns)
    with atomic_file(paths["summary.md"], "w", encoding="utf-8") as fh:
        fh.write(f"# Evaluation of {meta.get('generated', '?')}\n\n")
        fh.write(markdown_table(stats, columns))
        if notes:
            fh.write("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    overall_key = list(stats)[-1]
    payload = {
        "meta": meta,
        "overall": {c: (s.as_dict() if s else None) for c, s in stats[overall_key].items()},
        "per_subject": {subj: {c: (s.as_dict() if s else None) for c, s in per.items()}
                        for subj, per in list(stats.items())[:-1]},
        "per_image": list(rows),
    }
    write_json(paths["metrics.json"], payload)
    return paths
