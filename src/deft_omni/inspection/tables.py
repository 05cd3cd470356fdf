"""inspect.csv (every number, one row per unit) and inspect.md (the readable table)."""

from __future__ import annotations

from ..core.atomic import atomic_file

import csv
import math
from pathlib import Path
from typing import Any

from .collect import split_layer
from .subspace import UnitStats

COLUMNS = ["unit", "layer", "module", "out", "in", "rank", "w0_fro", "dw_fro", "rel_fro", "rel_spectral",
           "erank", "rank90", "basis_rank", "k", "angle_min_deg", "angle_mean_deg", "energy_topk",
           "chance_topk", "svd", "angles_deg"]
MD_COLUMNS = [("layer", "layer"), ("module", "module"), ("rel_fro", "‖ΔW‖/‖W0‖"), ("erank", "eff. rank"),
              ("rank90", "rank 90%"), ("angle_min_deg", "min ∠ (°)"), ("angle_mean_deg", "mean ∠ (°)"),
              ("energy_topk", "ΔW energy in top-k"), ("chance_topk", "chance")]


def stats_row(s: UnitStats) -> dict[str, Any]:
    layer, module = split_layer(s.unit)
    return {
        "unit": s.unit, "layer": "" if layer is None else layer, "module": module, "out": s.out_features,
        "in": s.in_features, "rank": s.rank, "w0_fro": s.w0_fro, "dw_fro": s.dw_fro, "rel_fro": s.rel_fro,
        "rel_spectral": s.rel_spectral, "erank": s.erank, "rank90": s.rank90, "basis_rank": s.basis_rank,
        "k": s.k, "angle_min_deg": s.angle_min_deg, "angle_mean_deg": s.angle_mean_deg,
        "energy_topk": s.energy_topk, "chance_topk": s.chance_topk, "svd": s.svd,
        "angles_deg": " ".join(f"{a:.4f}" for a in s.angles_deg),
    }


def write_csv(stats: list[UnitStats], path: Path) -> Path:
    with atomic_file(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for s in stats:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in stats_row(s).items()})
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def markdown(stats: list[UnitStats], header: dict[str, Any], images: list[str]) -> str:
    """The page: what was inspected, a summary line, the heatmaps and the per-unit table."""
    lines = ["# Adapter inspection", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    lines += ["", "## Summary over units", ""]
    k = stats[0].k if stats else 0
    lines += [
        f"- mean ‖ΔW‖_F/‖W0‖_F: {_fmt(_mean([s.rel_fro for s in stats]))}",
        (f"- mean effective rank (Roy & Vetterli): {_fmt(_mean([s.erank for s in stats]))} of rank "
         f"{stats[0].rank if stats else '?'}"),
        (f"- mean smallest principal angle between span(B) and W0's top-{k} left subspace: "
         f"{_fmt(_mean([s.angle_min_deg for s in stats]))}°"),
        (f"- mean share of ‖ΔW‖² inside W0's top-{k} subspace: {_fmt(_mean([s.energy_topk for s in stats]))} "
         f"(a random update: {_fmt(_mean([s.chance_topk for s in stats]))})"),
        "",
    ]
    for img in images:
        lines += [f"![{Path(img).stem}]({img})", ""]
    lines += ["## Per unit", "", "| " + " | ".join(t for _, t in MD_COLUMNS) + " |",
              "|" + "---|" * len(MD_COLUMNS)]
    for s in stats:
        row = stats_row(s)
        lines.append("| " + " | ".join(_fmt(row[c]) for c, _ in MD_COLUMNS) + " |")
    lines += ["", "Every number, and all principal angles, are in inspect.csv; definitions in docs/inspection.md.", ""]
    return "\n".join(lines)
