"""What did an adapter learn?  Per adapted weight: ||dW||/||W0||, effective rank, principal angles.

    python -m deft_omni.inspect <adapter-dir> [--base /path/to/OmniGen-v1 | tiny] [--out DIR]
        [--dtype fp32|bf16|...] [--k 32] [--oversample 10] [--niter 4] [--exact]
        [--layer UNIT|MODULE|INDEX] [--directions delta|w0] [--columns 256] [--dry-run]

Writes inspect.csv, inspect.md, heatmap_*.png (layers x modules) and displacement.png (the
paper's Fig. 3-style picture for one unit) into --out (default <adapter-dir>/inspect).
Without --base the run's config.yaml (<run>/adapters/<name>/../../config.yaml) names the base.
Definitions and costs: docs/inspection.md.
"""

from __future__ import annotations

from .core.atomic import write_json, write_text

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .inspection.base import (
    InspectError,
    load_base_transformer,
    parse_dtype,
    resolve_base,
)
from .inspection.collect import collect_stats, find_unit, joint_weight, unit_factors
from .inspection.displacement import DIRECTIONS, displacement_field
from .inspection.plots import all_heatmaps, displacement_plot
from .inspection.subspace import SubspaceConfig
from .inspection.tables import markdown, write_csv

ADAPTER_NAME = "inspected"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deft_omni.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("adapter_dir", type=Path, help="an adapter folder (save_adapter / <run>/adapters/final)")
    p.add_argument("--base", default=None, help="the base OmniGen folder, or a named model: tiny, world (default: the run's model.path)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <adapter-dir>/inspect)")
    p.add_argument("--dtype", default="float32", help="base weights' dtype in memory; bfloat16 halves the "
                                                      "full model's 15 GB (the algebra runs in fp32)")
    p.add_argument("--k", type=int, default=32, help="W0's dominant left directions compared with span(B)")
    p.add_argument("--oversample", type=int, default=10, help="randomized SVD: extra sketch columns")
    p.add_argument("--niter", type=int, default=4, help="randomized SVD: power iterations")
    p.add_argument("--exact", action="store_true", help="exact SVD of every W0 (slow on full-size layers)")
    p.add_argument("--seed", type=int, default=0, help="seed of the SVD sketch and of the column sample")
    p.add_argument("--layer", default=None, help="unit for the displacement picture: a unit key, a module name "
                                                 "or a layer index (default: the middle unit)")
    p.add_argument("--directions", default="delta", choices=DIRECTIONS,
                   help="the 2-D plane of the displacement picture: top-2 left singular vectors of dW or of W0")
    p.add_argument("--columns", type=int, default=256, help="W0 columns drawn in the displacement picture")
    p.add_argument("--no-check-base", action="store_true", help="skip the adapter's base-fingerprint check")
    p.add_argument("--dry-run", action="store_true", help="list the adapter's units and the work, load nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def dry_run(adapter_dir: Path, cfg: SubspaceConfig) -> str:
    """The units an inspection would visit, from deft_omni.json alone (no base model needed)."""
    from .adapters import read_adapter_config

    config, meta = read_adapter_config(adapter_dir)
    units = meta.get("units")
    if not units:
        raise InspectError(f"{adapter_dir}: deft_omni.json has no 'units' (a peft folder?); --dry-run needs them.")
    lines = [f"{config.method}/{config.decomposition} rank {config.rank}: {len(units)} units"]
    for u in units:
        out, n = sum(u["out_splits"]), u["in_features"]
        q = min(cfg.k + cfg.oversample, out, n)
        how = "exact SVD" if cfg.exact or min(out, n) <= cfg.exact_max_dim else f"svd_lowrank q={q}"
        lines.append(f"  {u['key']}: W0 {out}x{n}, {how}")
    return "\n".join(lines)


def _displacement_parts(branch, dtype) -> dict:
    B, A = unit_factors(branch, dtype)
    parts = {"update ΔW": (B, A)}
    if getattr(branch, "P", None) is not None and getattr(branch, "R", None) is not None:
        # DEFT: also the removal term alone (PaRa's -B right^T W0), as the paper's Fig. 3 shows.
        with torch.no_grad():
            basis, right = branch.basis()
            parts["removal −B·rightᵀ·W0"] = (basis.to(dtype), -branch.removal(right).to(dtype))
    return parts


def run(args: argparse.Namespace) -> Path:
    adapter_dir = args.adapter_dir.expanduser()
    cfg = SubspaceConfig(k=args.k, oversample=args.oversample, niter=args.niter, exact=args.exact, seed=args.seed)
    if args.dry_run:
        print(dry_run(adapter_dir, cfg))
        return adapter_dir
    from .adapters import load_adapter, read_adapter_config

    config, _ = read_adapter_config(adapter_dir)
    dtype = parse_dtype(args.dtype)
    base = resolve_base(adapter_dir, args.base)
    out = (args.out or adapter_dir / "inspect").expanduser()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = load_base_transformer(base, dtype)
    load_adapter(model, adapter_dir, adapter_name=ADAPTER_NAME, check_base=not args.no_check_base)
    loaded = time.perf_counter()
    work = torch.float64 if dtype == torch.float64 else torch.float32
    stats = collect_stats(model, ADAPTER_NAME, cfg, dtype=work, progress=not args.quiet)
    images = [p.name for p in all_heatmaps(stats, out)]
    key, branch = find_unit(model, ADAPTER_NAME, args.layer)
    disp = displacement_field(key, joint_weight(branch, work), _displacement_parts(branch, work),
                              directions=args.directions, n_columns=args.columns, seed=args.seed)
    images.append(displacement_plot(disp, out / "displacement.png").name)
    write_csv(stats, out / "inspect.csv")
    header = {
        "adapter": str(adapter_dir), "method": f"{config.method}/{config.decomposition}, rank {config.rank}",
        "base": str(base), "base dtype": args.dtype, "units": len(stats),
        "W0 subspace": f"k={cfg.k}, oversample={cfg.oversample}, niter={cfg.niter}, "
                       f"{'exact' if cfg.exact else f'exact SVD when min(out, in) <= {cfg.exact_max_dim}'}",
        "displacement picture": f"{key}, {args.directions} plane",
        "time": f"load {loaded - start:.1f} s, analysis {time.perf_counter() - loaded:.1f} s",
    }
    write_text(out / "inspect.md", markdown(stats, header, images))
    write_json(out / "inspect.json", header)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = run(args)
    except (InspectError, ValueError, FileNotFoundError) as err:
        print(f"deft_omni.inspect: error: {err}", file=sys.stderr)
        return 2
    if not args.dry_run:
        print(f"wrote {out / 'inspect.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
