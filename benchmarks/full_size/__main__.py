"""Run the full-size benchmark: measure on the CPU, fit, predict the GPU, write the results.

    python -m benchmarks.full_size --quick       # smoke run, < 3 min on 2 cores
    python -m benchmarks.full_size               # the default matrix, < 30 min
    python -m benchmarks.full_size --full        # a longer matrix, a recorded artifact
    python -m benchmarks.full_size --predict benchmarks/results/full_size.json   # tables from a record

Writes ``benchmarks/results/full_size[_quick|_full].{json,md}`` (``--out`` for another stem).
Run it niced on a shared machine (``nice -n 5``): timings are noisy under load, memory is not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke matrix (< 3 min)")
    size.add_argument("--full", action="store_true", help="the longer matrix (RSS for every case, more methods)")
    size.add_argument("--predict", metavar="JSON", help="no measuring: refit and rebuild the tables from a saved "
                                                         "record's rows (--out to write them)")
    parser.add_argument("--out", help="output stem (default benchmarks/results/full_size[_quick|_full])")
    parser.add_argument("--repeats", type=int, help="timed rounds per group (default 2, full 3, quick 1)")
    args = parser.parse_args(argv)

    from deft_omni.core.atomic import write_json, write_text

    from .matrix import derive_coefficients, plan, run_plan
    from .report import build_report

    mode = "quick" if args.quick else "full" if args.full else "default"
    stem = Path(args.out) if args.out else RESULTS / ("full_size" + {"default": ""}.get(mode, f"_{mode}"))
    if args.predict:
        record = json.loads(Path(args.predict).read_text())
        result = {k: record[k] for k in ("rows", "traces", "vae")}
        mode, elapsed = record["mode"], record["elapsed_s"]
        co = derive_coefficients(result["rows"], result["vae"], plan(mode)["reference"])
    else:
        spec = plan(mode)
        if args.repeats is not None:
            spec["repeats"] = args.repeats
        t0 = time.perf_counter()
        result = run_plan(spec, progress=lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}",
                                                            file=sys.stderr, flush=True))
        co = derive_coefficients(result["rows"], result["vae"], spec["reference"])
        elapsed = time.perf_counter() - t0
    md, record = build_report(result, co, mode, elapsed)
    print(md)
    if not args.predict or args.out:
        os.makedirs(stem.parent, exist_ok=True)
        write_json(stem.with_suffix(".json"), record)
        write_text(stem.with_suffix(".md"), md + "\n")
        print(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
