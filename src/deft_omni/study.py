"""``python -m deft_omni.study``: the retention study (the paper's Table 5 claim, in the world).

    python -m deft_omni.study --out runs/study            # DEFT qr / relu, LoRA, PaRa; r = 8; 3 seeds
    python -m deft_omni.study --out runs/study --quick    # 1 seed, half the horizon
    python -m deft_omni.study --out runs/study --full     # + r = 4
    python -m deft_omni.study --out runs/lr --lr-search   # the equal-budget learning-rate search
    python -m deft_omni.report runs/study                       # table + acquisition-vs-retention plot

Every job is the demo's concept run (``experiment=demo``: the world base, ``sks`` from 5
references, class priors) with one method, rank, seed and learning rate, trained for ``--steps``
(default 4x the demo's) and judged every ``steps / 5`` (``world.every_n_steps``) on the concept
(acquisition, fidelity), on prompts combining it with other attributes (editability) and on world
prompts without it (retention).  Jobs run one after another, each in ``OUT/<method>_r<rank>_s<seed>``;
finished ones are kept, so a killed study resumes.  ``OUT/study.json`` holds every curve and the
table; learning rates come from :data:`LR_FILE` (the committed search), or ``--lr``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .core.atomic import write_json

METHODS: dict[str, list[str]] = {
    "deft_qr": ["adapter=deft", "adapter.decomposition=qr"],
    "deft_relu": ["adapter=deft", "adapter.decomposition=relu"],
    "lora": ["adapter=lora"],
    "para": ["adapter=para"],
}
METRICS = ("acquisition", "fidelity", "editability", "retention")
LR_FILE = Path(__file__).parent / "world" / "study_lrs.json"  # the committed search's picks
LR_GRID = (1e-3, 3e-3, 1e-2)
DEMO_STEPS = 300
STUDY_FILE = "study.json"


def job_name(method: str, rank: int, seed: int, lr: Optional[float] = None) -> str:
    return f"{method}_r{rank}_s{seed}" + ("" if lr is None else f"_lr{lr:g}")


def run_job(out: Path, method: str, rank: int, seed: int, lr: float, steps: int, every: int,
            judge_n: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train and judge one job (or read it back when its folder holds a finished judgement)."""
    saved = out / "world_judge.json"
    if saved.is_file():
        done = json.loads(saved.read_text())
        if done.get("after") and done["after"]["step"] == steps:
            return done
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from .train import CONFIG_DIR, train

    overrides = ["experiment=demo", *METHODS[method], f"adapter.rank={rank}", f"optim.lr={lr}", f"seed={seed}",
                 f"max_steps={steps}", f"world.every_n_steps={every}", f"world.n={judge_n}",
                 f"callbacks.sample_every_n_steps={steps}", f"trainer.val_check_interval={steps}",
                 f"callbacks.adapter_every_n_steps={steps}", f"callbacks.resume_every_n_steps={every}",
                 "callbacks.progress_refresh_rate=0", *extra]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        if (out / "checkpoints").is_dir():
            cfg.ckpt_path = "last"
    train(cfg)
    return json.loads(saved.read_text())


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(jobs: dict[str, dict]) -> dict[str, Any]:
    """Per method and rank: mean and std over seeds of the final judgement, and mean curves."""
    groups: dict[str, list[dict]] = {}
    for job in jobs.values():
        groups.setdefault(f"{job['method']} r{job['rank']}", []).append(job)
    table, curves = {}, {}
    for name, members in sorted(groups.items()):
        finals = [m["judge"]["after"] for m in members]
        base = members[0]["judge"]["before"]
        table[name] = {"seeds": len(members), "lr": members[0]["lr"],
                       **{k: _mean_std([f[k] for f in finals]) for k in METRICS},
                       "base_retention": base["retention"]}
        steps = sorted({h["step"] for m in members for h in m["judge"]["history"]})
        curves[name] = [{"step": 0, **{k: statistics.fmean(m["judge"]["before"][k] for m in members)
                                       for k in METRICS}}]
        for s in steps:
            at = [h for m in members for h in m["judge"]["history"] if h["step"] == s]
            curves[name].append({"step": s, **{k: statistics.fmean(h[k] for h in at) for k in METRICS}})
    return {"table": table, "curves": curves}


def finished_jobs(out: Path, steps: int) -> dict[str, dict]:
    """Every job folder of ``out`` whose judgement reached ``steps``, also those another process of
    the same study ran (``--methods`` split across processes share one folder)."""
    jobs = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        m = re.fullmatch(r"(?P<method>\w+?)_r(?P<rank>\d+)_s(?P<seed>\d+)", folder.name)
        saved = folder / "world_judge.json"
        if m is None or m["method"] not in METHODS or not saved.is_file():
            continue
        judge = json.loads(saved.read_text())
        if not judge.get("after") or judge["after"]["step"] != steps:
            continue
        cfg = (folder / "config.yaml").read_text() if (folder / "config.yaml").is_file() else ""
        lr = re.search(r"^  lr: (\S+)$", cfg, re.M)
        jobs[folder.name] = {"method": m["method"], "rank": int(m["rank"]), "seed": int(m["seed"]),
                             "lr": float(lr.group(1)) if lr else float("nan"), "judge": judge}
    return jobs


def learning_rates(path: Path = LR_FILE) -> dict[str, float]:
    return json.loads(path.read_text())["lr"] if path.is_file() else {}


def parse_shard(text: str) -> tuple[int, int]:
    """``"k/n"`` -> (k, n): this process runs jobs k, k + n, k + 2n, ... of the study's list."""
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if m is None or not 0 <= int(m[1]) < int(m[2]):
        raise argparse.ArgumentTypeError(f"--shard {text!r}: write k/n with 0 <= k < n, e.g. 0/2")
    return int(m[1]), int(m[2])


def run_study(out: Path, methods: list[str], ranks: list[int], seeds: list[int], steps: int, checkpoints: int,
              judge_n: int, lrs: dict[str, float], shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    every = max(1, steps // checkpoints)
    jobs: dict[str, dict] = {}
    start = time.perf_counter()
    todo = [(seed, method, rank) for seed in seeds for method in methods for rank in ranks]
    for seed, method, rank in todo[shard[0]::shard[1]]:
        name = job_name(method, rank, seed)
        lr = float(lrs.get(method, 3e-3))
        print(f"[study] {name}: lr {lr:g}, {steps} steps, judged every {every}", flush=True)
        judge = run_job(out / name, method, rank, seed, lr, steps, every, judge_n)
        jobs[name] = {"method": method, "rank": rank, "seed": seed, "lr": lr, "judge": judge}
        write_summary(out, {**finished_jobs(out, steps), **jobs}, steps, every, judge_n, start)
    return write_summary(out, finished_jobs(out, steps), steps, every, judge_n, start)


def write_summary(out: Path, jobs: dict[str, dict], steps: int, every: int, judge_n: int, start: float) -> dict:
    record = {"settings": {"steps": steps, "every": every, "judge_n": judge_n}, "jobs": jobs, **summarise(jobs),
              "seconds": round(time.perf_counter() - start, 1)}
    write_json(out / STUDY_FILE, record)
    return record


def default_workers() -> int:
    """Two processes of one thread each on a 2-core machine: the demo's model is too small for
    two threads to halve a step (measured: ~80 min one process, ~55 min two)."""
    return max(1, min(2, os.cpu_count() or 1))


def run_workers(argv: list[str], workers: int) -> None:
    """Run the study as ``workers`` processes (``--shard k/workers``), each with its share of threads;
    raise if one fails (its finished jobs are kept: rerunning resumes)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-m", "deft_omni.study", *argv, "--workers", "1", "--shard",
                               f"{k}/{workers}"], env=env) for k in range(workers)]
    failed = [k for k, proc in enumerate(procs) if proc.wait() != 0]
    if failed:
        raise SystemExit(f"study: worker(s) {failed} failed (see their output above); rerun the same command to resume")


def lr_search(out: Path, methods: list[str], rank: int, steps: int, judge_n: int,
              grid: tuple[float, ...] = LR_GRID, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Each method gets the same budget: ``len(grid)`` runs of ``steps`` at seed 0.  The pick
    maximises acquisition + retention (learning the concept without forgetting the world);
    ties go to the smaller rate.  A worker (``shard`` other than (0, 1)) runs its share of the
    runs and returns {}; the parent then reads every finished run back and writes the picks."""
    todo = [(method, lr) for method in methods for lr in grid]
    mine = todo[shard[0]::shard[1]]
    results: dict[str, dict[str, dict]] = {m: {} for m in methods}
    for method, lr in (mine if shard != (0, 1) else todo):
        judge = run_job(out / job_name(method, rank, 0, lr), method, rank, 0, lr, steps, steps, judge_n)
        results[method][f"{lr:g}"] = {k: judge["after"][k] for k in METRICS}
    if shard != (0, 1):
        return {}
    picks = {m: float(max(sorted(r, key=float), key=lambda lr: r[lr]["acquisition"] + r[lr]["retention"]))
             for m, r in results.items()}
    record = {"lr": picks, "search": results, "rank": rank, "steps": steps, "judge_n": judge_n,
              "rule": "argmax acquisition + retention after `steps`, seed 0"}
    write_json(out / "lr_search.json", record)
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deft_omni.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="study folder (jobs, study.json)")
    p.add_argument("--quick", action="store_true", help="1 seed, half the horizon")
    p.add_argument("--full", action="store_true", help="also r = 4")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4 * DEMO_STEPS, help="training horizon (default 4x the demo's)")
    p.add_argument("--checkpoints", type=int, default=5, help="judgements during training")
    p.add_argument("--judge-n", type=int, default=24, help="prompts per judged set")
    p.add_argument("--lr", type=float, default=None, help="one learning rate for every method (default: the search's)")
    p.add_argument("--lr-search", action="store_true", help="run the learning-rate search instead (seed 0)")
    p.add_argument("--lr-file", type=Path, default=LR_FILE)
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="processes sharing the jobs (default: 2 on a machine with 2+ cores, else 1)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    parent = args.workers > 1 and args.shard == (0, 1)
    if args.lr_search:
        if parent:  # the workers run the jobs; this process then reads them back and picks
            run_workers(list(argv if argv is not None else sys.argv[1:]), args.workers)
        record = lr_search(args.out, args.methods, 8, DEMO_STEPS, args.judge_n, shard=args.shard)
        if record:
            print(json.dumps(record["lr"]), flush=True)
        return record
    seeds = list(range(1 if args.quick else args.seeds))
    steps = args.steps // 2 if args.quick else args.steps
    lrs = {m: args.lr for m in METHODS} if args.lr is not None else learning_rates(args.lr_file)
    ranks = [8, 4] if args.full else [8]
    if parent:
        start = time.perf_counter()
        run_workers(list(argv if argv is not None else sys.argv[1:]), args.workers)
        result = write_summary(args.out, finished_jobs(args.out, steps), steps, max(1, steps // args.checkpoints),
                               args.judge_n, start)
    else:
        result = run_study(args.out, args.methods, ranks, seeds, steps, args.checkpoints, args.judge_n, lrs,
                           args.shard)
    if args.shard != (0, 1):
        return result  # a worker: the parent prints the whole study's table
    for name, row in result["table"].items():
        print(name, {k: f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}" for k, v in row.items() if k in METRICS}, flush=True)
    return result


if __name__ == "__main__":
    main()
