"""One-command reports of a training run or a multirun sweep (Markdown + HTML + PNG plots).

    python -m deft_omni.report <run-or-sweep-dir> [--out DIR] [--smoothing 0.9]

A run folder (hydra.run.dir of `python -m deft_omni.train`) gives loss (raw + EMA), lr,
throughput and the sample grids over time; a sweep folder (hydra.sweep.dir of `-m`) gives a
table of every job and loss against rank, one line per method/decomposition.  The kind is
detected from the folder.  Output: <dir>/report/report.md, report.html and the PNGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .reporting.folders import ReportError, detect
from .reporting.run_page import run_report
from .reporting.sweep_page import sweep_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deft_omni.report", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a training run folder or a multirun sweep folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <folder>/report)")
    p.add_argument("--smoothing", type=float, default=0.9, help="EMA weight of the smoothed loss, in [0, 1)")
    return p


def report(folder: Path, out: Optional[Path] = None, smoothing: float = 0.9) -> Path:
    """Write the report of `folder` (run or sweep, detected); returns report.md's path."""
    if not 0.0 <= smoothing < 1.0:
        raise ReportError(f"--smoothing {smoothing} must be in [0, 1) (0: raw loss).")
    folder = folder.expanduser()
    kind = detect(folder)
    out = (out or folder / "report").expanduser()
    if kind == "study":
        from .reporting.study_page import study_report

        return study_report(folder, out)
    return run_report(folder, out, smoothing) if kind == "run" else sweep_report(folder, out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = report(args.folder, args.out, args.smoothing)
    except (ReportError, ValueError) as err:
        print(f"deft_omni.report: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} (and report.html beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
