"""Heatmaps over layers x modules and the Fig. 3-style displacement picture (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..core.atomic import atomic_path  # noqa: E402

from .collect import split_layer  # noqa: E402
from .displacement import Displacement  # noqa: E402
from .subspace import UnitStats  # noqa: E402

# (attribute, title, colour map); the colour scale of the angles is fixed to [0, 90] degrees.
HEATMAPS = [
    ("rel_fro", "‖ΔW‖_F / ‖W0‖_F", "viridis"),
    ("erank", "effective rank of ΔW", "magma"),
    ("angle_min_deg", "smallest angle span(B) ∠ top-k(W0) (°)", "coolwarm_r"),
    ("energy_topk", "share of ‖ΔW‖² in top-k(W0)", "viridis"),
]


def grid(stats: list[UnitStats], attr: str) -> tuple[np.ndarray, list[int], list[str]]:
    """(values layers x modules with NaN holes, layer indices, module names) for layered units."""
    cells = {}
    for s in stats:
        layer, module = split_layer(s.unit)
        if layer is not None:
            cells[(layer, module)] = float(getattr(s, attr))
    layers = sorted({lm[0] for lm in cells})
    modules = list(dict.fromkeys(lm[1] for lm in cells))
    values = np.full((len(layers), len(modules)), np.nan)
    for (layer, module), v in cells.items():
        values[layers.index(layer), modules.index(module)] = v
    return values, layers, modules


def _short(module: str) -> str:
    return module.replace("self_attn.", "attn.").replace("to_q+to_k+to_v", "qkv")


def heatmap(stats: list[UnitStats], attr: str, title: str, cmap: str, path: Path) -> Path | None:
    values, layers, modules = grid(stats, attr)
    if not layers:
        return None  # no unit sits in a numbered layer: the table says it all
    fig_h = min(2.0 + 0.28 * len(layers), 14.0)
    fig, ax = plt.subplots(figsize=(2.5 + 1.3 * len(modules), fig_h))
    kwargs = {"vmin": 0.0, "vmax": 90.0} if attr.endswith("_deg") else {}
    im = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, interpolation="nearest", **kwargs)
    ax.set_xticks(range(len(modules)), [_short(m) for m in modules], rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [str(x) for x in layers])
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    if values.size <= 160:  # numbers stay legible on small grids only
        for (i, j), v in np.ndenumerate(values):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color="black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def all_heatmaps(stats: list[UnitStats], out: Path) -> list[Path]:
    made = []
    for attr, title, cmap in HEATMAPS:
        if attr in ("angle_min_deg", "energy_topk"):
            title = title.replace("top-k", f"top-{stats[0].k}")
        p = heatmap(stats, attr, title, cmap, out / f"heatmap_{attr}.png")
        if p is not None:
            made.append(p)
    return made


def displacement_plot(disp: Displacement, path: Path) -> Path:
    """One panel per update part: W0's columns (dots) and arrows to their adapted positions."""
    parts = list(disp.moves.items())
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 5.0), squeeze=False)
    pts = disp.points.double().numpy()
    plane = "top-2 left singular directions of ΔW" if disp.directions == "delta" else \
        "top-2 left singular directions of W0"
    for ax, (name, moves) in zip(axes[0], parts):
        mv = moves.double().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=6, c="0.55", label="W0 columns")
        ax.quiver(pts[:, 0], pts[:, 1], mv[:, 0], mv[:, 1], angles="xy", scale_units="xy", scale=1.0,
                  color="tab:red", width=0.003, alpha=0.8)
        ends = pts + mv
        lo, hi = np.minimum(pts, ends).min(0), np.maximum(pts, ends).max(0)
        pad = 0.05 * np.maximum(hi - lo, 1e-12)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(f"{name}: mean |move| {np.linalg.norm(mv, axis=1).mean():.3g}", fontsize=10)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{disp.unit}: {len(disp.columns)} columns of W0 moved by the update\n(projected onto the "
                 f"{plane})", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
