"""The report of a world retention study (``python -m deft_omni.study``): the table of final
judgements (mean ± std over seeds) and acquisition against retention over training, one curve per
method, beside each metric over steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .pages import image, write_pages
from .plots import _save, plt

METRICS = ("acquisition", "fidelity", "editability", "retention")


def trade_off_plot(curves: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, points in curves.items():
        steps = [p["step"] for p in points]
        xs, ys = [p["acquisition"] for p in points], [p["retention"] for p in points]
        line, = axes[0].plot(xs, ys, "o-", ms=3, label=name)
        axes[0].annotate(str(points[-1]["step"]), (xs[-1], ys[-1]), fontsize=7, color=line.get_color())
        axes[1].plot(steps, xs, "o-", ms=3, label=name)
        axes[2].plot(steps, ys, "o-", ms=3, label=name)
    axes[0].set_xlabel("acquisition (sks read as the concept)")
    axes[0].set_ylabel("retention (world prompts, micro adherence)")
    axes[0].set_title("acquisition against retention (the end step is labelled)", fontsize=10)
    for ax, what in ((axes[1], "acquisition"), (axes[2], "retention")):
        ax.set_xlabel("step")
        ax.set_ylabel(what)
        ax.set_title(f"{what} over training (mean over seeds)", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _cell(v: Any) -> str:
    return f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}" if isinstance(v, (list, tuple)) else str(v)


def study_report(folder: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    study = json.loads((folder / "study.json").read_text())
    s = study["settings"]
    lines = [f"# Retention study `{folder.name}`", "",
             f"{len(study['jobs'])} jobs, {s['steps']} steps each, judged every {s['every']} steps on "
             f"{s['judge_n']} prompts per set.", "",
             "| method | seeds | lr | " + " | ".join(METRICS) + " | retention at step 0 |",
             "|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for name, row in study["table"].items():
        lines.append(f"| {name} | {row['seeds']} | {row['lr']:g} | " + " | ".join(_cell(row[k]) for k in METRICS)
                     + f" | {100 * row['base_retention']:.1f} |")
    lines += ["", "Percent, mean ± std over seeds, at the last step. Retention at step 0 is the base's for the "
                  "identity-initialised methods (DEFT, LoRA); PaRa starts by projecting a random subspace out "
                  "of every adapted weight, so its step 0 is not the base.", ""]
    lines += image(trade_off_plot(study["curves"], out / "acquisition_vs_retention.png"), out,
                   "acquisition against retention, one curve per method")
    return write_pages(out, "\n".join(lines), f"study {folder.name}")
