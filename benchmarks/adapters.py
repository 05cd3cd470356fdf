"""Step time and peak memory of one adapted Linear: deft_omni against peft and the dense form.

    python benchmarks/adapters.py                 # quick set (< 5 min on 2 cores)
    python benchmarks/adapters.py --full          # every shape, r = 8 and 64, every method
    python benchmarks/adapters.py --sdxl          # SDXL's UNet attention shapes (640/1280 wide, text 2048), r = 4
    python benchmarks/adapters.py --json out.json # every row, for scripts

Method: each layer is measured as an interior layer (its input requires grad, so the base's
input gradient is part of every step: forward + backward); fp32, 2 threads; per case one
warm-up then the median of --repeats steps, cases of one (shape, T, r) point interleaved
round by round; peak memory = the case's peak RSS during one step minus the RSS just before
it, in a fresh process per case (after one warm-up step there, so one-time library
initialisation is not counted; two such processes run at a time, after the timing).  Ratios are against peft's LoRA measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Optional

QUICK_SHAPES = [(3072, 9216), (3072, 3072)]
FULL_SHAPES = [(3072, 9216), (3072, 3072), (3072, 16384), (8192, 3072)]
# SDXL's UNet attention at 1024 px (--sdxl): (in, out) -> tokens per image.  Self-attention q/k/v/out
# at 640 wide (64x64 latents -> 4096 tokens) and 1280 wide (32x32 -> 1024); cross-attention k/v read
# the 77 text tokens, 2048 wide; a fused q,k,v of attn1 is one 640->1920 / 1280->3840 unit.
SDXL_SHAPES = {(640, 640): 4096, (1280, 1280): 1024, (640, 1920): 4096, (1280, 3840): 1024,
               (2048, 640): 77, (2048, 1280): 77}
SDXL_RANK = 4
WARMUP_TOKENS = 16
MMAP_THRESHOLD = 64 * 1024
ALL_BASES = ["qr", "relu", "relaxed", "relu2", "tsvd", "lrmf", "eigen", "nmf"]


@dataclass(frozen=True)
class Case:
    impl: str            # base | peft | ours | dense
    method: str          # none | lora | deft | para
    basis: str           # decomposition, '-' where it does not apply
    d_in: int
    d_out: int
    tokens: int
    rank: int

    @property
    def label(self) -> str:
        if self.impl == "base":
            return "base Linear"
        name = {"peft": "peft", "ours": "deft_omni", "dense": "dense ref"}[self.impl]
        return f"{name} {self.method.upper() if self.method == 'lora' else self.method}" + (
            f" {self.basis}" if self.basis != "-" else "")


def cases_for(full: bool, only: Optional[set] = None, sdxl: bool = False) -> list[Case]:
    if sdxl:
        shapes = [s for s in SDXL_SHAPES if only is None or s in only]
        ranks, tokens_of = [SDXL_RANK], lambda s: (SDXL_SHAPES[s],)
    else:
        shapes = [s for s in (FULL_SHAPES if full else QUICK_SHAPES) if only is None or s in only]
        ranks, tokens_of = ([8, 64] if full else [64]), lambda s: (512, 2048)
    out = []
    for d_in, d_out in shapes:
        for tokens in tokens_of((d_in, d_out)):
            for r in ranks:
                def c(impl, method, basis="-"):
                    out.append(Case(impl, method, basis, d_in, d_out, tokens, r))
                c("base", "none")
                c("peft", "lora")
                c("peft", "deft", "relu")
                c("peft", "deft", "qr")
                if full:
                    c("peft", "para", "qr")
                for b in (ALL_BASES if full else ["relu", "qr", "tsvd", "eigen"]):
                    c("ours", "deft", b)
                for b in (ALL_BASES if full else ["qr"]):
                    c("ours", "para", b)
                c("ours", "lora")
                if tokens == 512 and not sdxl:
                    c("dense", "deft", "qr")
    return out


# -- building one case --------------------------------------------------------------------
def build(case: Case):
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(case.d_in, case.d_out, bias=False)
            nn.init.normal_(self.lin.weight, std=0.02)

    holder = Holder()
    holder.lin.weight.requires_grad_(False)
    if case.impl == "base":
        return holder.lin
    if case.impl == "dense":
        return DenseDeft(holder.lin.weight, case.rank, case.basis)
    if case.impl == "peft":
        from peft import DeftConfig, LoraConfig, get_peft_model

        if case.method == "lora":
            cfg = LoraConfig(r=case.rank, lora_alpha=case.rank, target_modules=["lin"])
        else:
            cfg = DeftConfig(r=case.rank, target_modules=["lin"], decomposition_method=case.basis,
                             para=case.method == "para")
        return get_peft_model(holder, cfg).base_model.model.lin
    from deft_omni.adapters import AdapterConfig, inject_adapter

    inject_adapter(holder, AdapterConfig(method=case.method, rank=case.rank, decomposition=case.basis
                                         if case.basis != "-" else "qr", target_modules=["lin"]))
    return holder.lin


def DenseDeft(weight, rank, basis):
    """The authors' formulation: every forward builds the out x out projector and W'."""
    import torch
    from torch import nn

    from deft_omni.adapters.bases import compute_basis

    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("W0", weight)
            self.P = nn.Parameter(torch.randn(weight.shape[0], rank) * 0.02)
            self.R = nn.Parameter(torch.randn(rank, weight.shape[1]) * 0.02)

        def forward(self, x):
            B, right = compute_basis(self.P, basis)
            proj = B @ right.T
            W = self.W0 - proj @ self.W0 + B @ self.R
            return x @ W.T

    return Dense()


def make_step(module, case: Case):
    import torch

    x = torch.randn(case.tokens, case.d_in, requires_grad=True)
    g = torch.randn(case.tokens, case.d_out)
    params = [p for p in module.parameters() if p.requires_grad]

    def step():
        y = module(x)
        y.backward(g)
        x.grad = None
        for p in params:
            p.grad = None

    return step


# -- timing (interleaved, one process) ----------------------------------------------------
def time_point(cases: list[Case], repeats: int) -> dict[Case, float]:
    steps = {c: make_step(build(c), c) for c in cases}
    samples: dict[Case, list[float]] = {c: [] for c in cases}
    for round_ in range(repeats + 1):
        for c in cases:
            t0 = time.perf_counter()
            steps[c]()
            if round_:  # round 0 is the warm-up
                samples[c].append(time.perf_counter() - t0)
    return {c: statistics.median(v) for c, v in samples.items()}


# -- memory (fresh process per case) ------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(case: Case) -> int:
    import torch

    torch.set_num_threads(2)
    module = build(case)
    # Warm-up on a few tokens: one-time library initialisation is not the case's memory, and
    # with the fixed mmap threshold (memory_pool) no allocator state carries over in size.
    make_step(module, replace(case, tokens=WARMUP_TOKENS))()
    step = make_step(module, case)
    gc.collect()
    before = _rss()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current RSS
        f.write("5")
    step()
    return _peak_rss() - before


def memory_pool(max_workers: int = 2, preload: Optional[list[str]] = None) -> ProcessPoolExecutor:
    """A fresh process per case, forked from a server that has imported torch and peft once
    (and run no parallel work), so a case costs its own steps, not the imports."""
    # glibc's default mmap threshold moves with the sizes freed so far, so whether a large
    # buffer lands in the heap (and stays in RSS after free) depended on the case's history:
    # the same case varied by +-30 %.  A fixed threshold maps every large buffer and unmaps it
    # on free, so peak RSS follows the live tensors.  Children inherit the forkserver's env.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload or ["torch", "peft", "deft_omni.adapters"])
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=ctx, max_tasks_per_child=1)


# -- report --------------------------------------------------------------------------------
@dataclass
class Row:
    method: str
    impl: str
    basis: str
    shape: str
    tokens: int
    rank: int
    time_ms: float
    peak_mb: float
    time_vs_peft_lora: Optional[float] = None
    mem_vs_peft_lora: Optional[float] = None


def run(full: bool, repeats: int, progress, shapes: Optional[set] = None, sdxl: bool = False) -> list[Row]:
    import torch

    torch.set_num_threads(2)
    cases = cases_for(full, shapes, sdxl)
    points = sorted({(c.d_in, c.d_out, c.tokens, c.rank) for c in cases}, key=lambda p: (p[0] * p[1], p[2], p[3]))
    rows = []
    for point in points:
        group = [c for c in cases if (c.d_in, c.d_out, c.tokens, c.rank) == point]
        times = time_point(group, repeats)
        gc.collect()
        # Memory is per process, so two children at a time do not disturb each other's numbers.
        # The dense case (its warm-up costs a full step: the out x out projector does not shrink
        # with T) goes first, so the other cases run beside it instead of after it.
        order = sorted(group, key=lambda c: c.impl != "dense")
        with memory_pool() as pool:
            mems = dict(zip(order, pool.map(memory_child, order)))
        progress.update(len(group))
        ref = next(c for c in group if c.impl == "peft" and c.method == "lora")
        for c in group:
            rows.append(Row(c.method, c.impl, c.basis, f"{c.d_in}->{c.d_out}", c.tokens, c.rank,
                            1e3 * times[c], mems[c] / 2 ** 20, times[c] / times[ref],
                            mems[c] / mems[ref] if mems[ref] > 0 else None))
    return rows


def label(row: Row) -> str:
    return Case(row.impl, row.method, row.basis, 0, 0, 0, 0).label


def table(rows: list[Row]) -> str:
    lines = ["| shape | T | r | method | step ms | ×peft LoRA | peak MiB | ×peft LoRA |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.shape} | {r.tokens} | {r.rank} | {label(r)} | {r.time_ms:.1f} | "
                     f"{r.time_vs_peft_lora:.3f} | {r.peak_mb:.1f} | "
                     f"{r.mem_vs_peft_lora:.3f} |")
    return "\n".join(lines)


def checks(rows: list[Row]) -> list[str]:
    """The issue's targets, evaluated on this run's numbers."""
    out = []
    key = {(r.impl, r.method, r.basis, r.shape, r.tokens, r.rank): r for r in rows}
    for r in rows:
        if r.impl == "ours" and r.method == "deft" and r.basis in ("relu", "qr"):
            peer = key.get(("peft", "deft", r.basis, r.shape, r.tokens, r.rank))
            t, m = r.time_ms / peer.time_ms, r.peak_mb / max(peer.peak_mb, 1e-9)
            out.append(f"{'ok ' if t <= 1.03 and m <= 1.03 else 'MISS'} deft_omni/peft DEFT {r.basis} {r.shape} "
                       f"T={r.tokens} r={r.rank}: time {t:.3f} mem {m:.3f} (target <= 1.03)")
            if (r.tokens, r.rank) == (2048, 64) or r.rank == SDXL_RANK:
                ok = r.time_vs_peft_lora <= 1.05 and r.mem_vs_peft_lora <= 1.05
                out.append(f"{'ok ' if ok else 'MISS'} deft_omni DEFT {r.basis}/peft LoRA {r.shape} T={r.tokens}: time "
                           f"{r.time_vs_peft_lora:.3f} mem {r.mem_vs_peft_lora:.3f} (target <= 1.05)")
        if r.impl == "dense":
            ours = key.get(("ours", "deft", r.basis, r.shape, r.tokens, r.rank))
            ratio = r.time_ms / ours.time_ms
            out.append(f"{'ok ' if ratio >= 5 else 'MISS'} dense/deft_omni DEFT {r.basis} {r.shape} T={r.tokens} "
                       f"r={r.rank}: {ratio:.1f}x (target >= 5)")
    for what in ("time", "mem"):
        ratios = []
        for r in rows:
            if r.impl == "ours" and r.method == "deft" and r.basis in ("relu", "qr"):
                peer = key[("peft", "deft", r.basis, r.shape, r.tokens, r.rank)]
                ratios.append(r.time_ms / peer.time_ms if what == "time" else r.peak_mb / max(peer.peak_mb, 1e-9))
        med = statistics.median(ratios)
        out.append(f"{'ok ' if med < 1.0 else 'MISS'} median deft_omni/peft DEFT {what}: {med:.3f} (target < 1.0)")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every shape, r = 8 and 64, every method (long)")
    parser.add_argument("--sdxl", action="store_true", help="SDXL's UNet attention shapes at 1024 px, r = 4")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per case after one warm-up (>= 5)")
    parser.add_argument("--json", help="write every row to this JSON file")
    parser.add_argument("--shape", action="append", metavar="IN->OUT",
                        help="only these shapes of the chosen set, e.g. --shape 8192->3072 (repeatable)")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    shapes = None
    if args.shape:
        shapes = {tuple(int(v) for v in s.split("->")) for s in args.shape}
        known = {(c.d_in, c.d_out) for c in cases_for(args.full, sdxl=args.sdxl)}
        if not shapes <= known:
            parser.error(f"--shape {sorted(shapes - known)} is not in this set; choose from "
                         + ", ".join(f"{a}->{b}" for a, b in sorted(known)))
    total = len(cases_for(args.full, shapes, args.sdxl))
    with tqdm(total=total, desc="cases", unit="case") as progress:
        rows = run(args.full, args.repeats, progress, shapes, args.sdxl)
    print(table(rows))
    print()
    print("\n".join(checks(rows)))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)


if __name__ == "__main__":
    main()
