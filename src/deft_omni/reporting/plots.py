"""Report figures (matplotlib, Agg): loss, learning rate, throughput, and loss against rank."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..core.atomic import atomic_path  # noqa: E402

from ..training.callbacks import smooth  # noqa: E402 - one smoothing for the curve and the report

Series = list[tuple[int, float]]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def loss_plot(train: Series, val: Series, path: Path, smoothing: float = 0.9) -> Optional[Path]:
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train (raw)")
        ax.plot(steps, smooth(list(losses), smoothing), color="tab:blue", lw=1.8,
                label=f"train (EMA {smoothing:g})")
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, "o-", color="tab:orange", ms=4, label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def series_plot(series: dict[str, Series], path: Path, title: str, ylabel: str,
                log_y: bool = False) -> Optional[Path]:
    """One line per named series (e.g. lr/adapter_R, lr/adapter_P)."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, ".-", ms=3, label=name)
    if log_y and all(v > 0 for pts in series.values() for _, v in pts):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def throughput_plot(series: dict[str, Series], path: Path) -> Optional[Path]:
    """One panel per perf/* metric (samples/s, tokens/s, step time, peak memory)."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.2 * len(series)), sharex=True, squeeze=False)
    for ax, (name, points) in zip(axes[:, 0], series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, ".-", ms=3, color="tab:green")
        ax.set_ylabel(name.split("/")[-1], fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    return _save(fig, path)


def _finite(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def rank_plot(rows: list[dict[str, Any]], metrics: list[str], path: Path) -> Optional[Path]:
    """metric against adapter rank, one line per method/decomposition; None without two ranks."""
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in rows:
        rank = _finite(row.get("rank"))
        if rank is None:
            continue
        label = row.get("variant") or "?"
        for metric in metrics:
            value = _finite(row.get(metric))
            if value is not None:
                groups.setdefault(metric, {}).setdefault(label, []).append((rank, value))
    metrics = [m for m in metrics if m in groups]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, points in sorted(groups[metric].items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
        ranks = sorted({p[0] for pts in groups[metric].values() for p in pts})
        if len(ranks) > 1 and ranks[0] > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [f"{r:g}" for r in ranks])
        ax.set_xlabel("rank r")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)
