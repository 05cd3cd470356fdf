"""The case matrices (quick, default, full), how they run, and the coefficients they give.

Timing: the cases of a group (same sequence shape, or one rank of the method matrix) live in one
forkserver child and are timed round by round, interleaved, so drift in the machine's load hits
them alike; each case's memory step (live tensor bytes, per-block activations) runs there first,
once.  Peak RSS needs a fresh process per case: it is taken for the ``rss`` subset.
"""

from __future__ import annotations

import gc
import os
import statistics
from collections import defaultdict
from dataclasses import replace
from typing import Any, Callable, Optional

from .case import Case
from .fit import fit_quadratic
from .predict import Coefficients

REFERENCE = Case(impl="ours", method="deft", basis="qr", rank=64, side=512)
METHODS = [("ours", "deft", "qr"), ("ours", "deft", "relu"), ("ours", "lora", "-"), ("ours", "para", "qr"),
           ("peft", "lora", "-"), ("peft", "deft", "qr")]
FULL_EXTRA_METHODS = [("peft", "deft", "relu"), ("peft", "para", "qr")]
BASE = Case(impl="base", method="none", basis="-", rank=0, side=512)


def method_matrix(side: int, ranks: tuple[int, ...], methods=METHODS) -> list[list[Case]]:
    """One group per rank; the frozen base joins the largest rank's group."""
    groups = []
    for r in ranks:
        group = [Case(impl=i, method=m, basis=b, rank=r, side=side) for i, m, b in methods]
        if r == max(ranks):
            group.insert(0, replace(BASE, side=side))
        groups.append(group)
    return groups


def sweep(ref: Case, sides=(256, 512), inputs=(0, 1)) -> list[Case]:
    """Resolution x checkpointing x input image for one method, with a batch-2 twin and k = 2."""
    cases = [replace(ref, side=s, inputs=n, ckpt=c) for s in sides for n in inputs for c in (False, True)]
    cases += [replace(ref, side=min(sides), batch=2, ckpt=c) for c in (False, True)]
    cases += [replace(ref, layers=2, ckpt=c) for c in (False, True)]
    return cases


def plan(mode: str) -> dict[str, Any]:
    """``quick`` (< 3 min), ``default`` (< 30 min), ``full`` (longer; a recorded artifact).

    groups: real CPU runs (time and memory), a group's cases interleaved in one process;
    sweep: memory of the sweep by fake-tensor replay of the same steps (equal byte for byte to
    a real run: the cases that also ran for real are checked); traces: the full 32 layers."""
    if mode == "quick":
        ref = replace(REFERENCE, rank=8, side=256)
        group = [ref, replace(ref, impl="peft", method="lora", basis="-")]
        sweep_ = [replace(ref, ckpt=True), replace(ref, inputs=1), replace(ref, layers=2)]
        return {"groups": [group], "sweep": sweep_, "rss": [], "repeats": 1, "reference": ref,
                "traces": [replace(ref, layers=32, ckpt=True, batch=2, interior=False)]}
    methods = METHODS + (FULL_EXTRA_METHODS if mode == "full" else [])
    groups = method_matrix(512, (8, 32, 64), methods)
    groups[-1] += [replace(REFERENCE, ckpt=True), replace(REFERENCE, layers=2)]
    groups.append([replace(REFERENCE, side=256), replace(REFERENCE, side=256, ckpt=True),
                   replace(REFERENCE, side=256, inputs=1), replace(REFERENCE, inputs=1)])
    # The sweep replays the real runs' reference cases too, and peft's LoRA: their bytes must agree.
    cases = sweep(REFERENCE) + [replace(REFERENCE, impl="peft", method="lora", basis="-")]
    if mode == "full":
        groups += method_matrix(256, (8, 64), methods)
        groups.append([c for c in cases if c.batch == 2 or c.layers == 2 or c.inputs])
        cases += [replace(REFERENCE, side=768), replace(REFERENCE, side=768, ckpt=True),
                  replace(REFERENCE, batch=2), replace(REFERENCE, batch=2, ckpt=True)]
    rss = [replace(REFERENCE), replace(REFERENCE, impl="peft", method="lora", basis="-"), replace(REFERENCE, ckpt=True)]
    if mode == "full":
        rss = [c for g in groups for c in g]
    plain = replace(REFERENCE, layers=32, interior=False)
    traces = [plain, replace(plain, ckpt=True), replace(plain, inputs=1),
              replace(plain, side=1024, batch=2, ckpt=True),
              replace(plain, side=1024, batch=2, ckpt=True, impl="peft", method="lora", basis="-")]
    return {"groups": groups, "sweep": cases, "rss": rss, "repeats": 3 if mode == "full" else 2,
            "reference": REFERENCE, "traces": traces}


# -- running -----------------------------------------------------------------------------------
def time_group(cases: list[Case], repeats: int) -> list[dict[str, Any]]:
    """In this process: build every case, warm each up, one tracked memory step each, then
    ``repeats`` interleaved rounds of timed steps."""
    import time

    from .case import make_backbone, make_batch, make_optimizer, make_step, sequence, text_tokens, warm_up_case
    from .measure import measure_step

    live: list[tuple[Case, Any, Any, dict, dict]] = []
    for case in cases:
        t0 = time.perf_counter()
        backbone, groups = make_backbone(case)
        row = {"case": case.to_dict(), "key": case.key, "label": case.label, "build_s": time.perf_counter() - t0}
        optimizer = make_optimizer(groups)
        make_step(case, backbone, optimizer, make_batch(warm_up_case(case), backbone))()
        batch = make_batch(case, backbone)
        step = make_step(case, backbone, optimizer, batch)
        gc.collect()
        row.update(seq=sequence(batch), text_tokens=text_tokens(batch, case), source="measured")
        row.update(measure_step(case, backbone, step, batch))
        live.append((case, backbone, step, batch, row))
    samples: dict[str, list[dict]] = defaultdict(list)
    for _ in range(repeats):
        for case, _backbone, step, _batch, _row in live:
            samples[case.key].append(step())
    rows = []
    for case, _backbone, _step, _batch, row in live:
        times = samples[case.key]
        for key in ("forward_s", "backward_s", "optimizer_s", "step_s"):
            row[key] = statistics.median(t[key] for t in times) if times else None
        row["step_times"] = [t["step_s"] for t in times]
        row["loss"] = float(times[-1]["loss"]) if times else None
        rows.append(row)
    return rows


def rss_case(case: Case) -> dict[str, Any]:
    from .measure import run_case

    row = run_case(case, repeats=0, rss=True)
    return {"key": case.key, "rss_step_bytes": row["rss_step_bytes"], "peak": row["peak"]}


def _threaded(fn: Callable, *args):
    import torch

    torch.set_num_threads(int(os.environ.get("FULL_SIZE_THREADS", "2")))
    return fn(*args)


def _child(fn: Callable, *args):
    """``fn(*args)`` in a fresh forkserver child (benchmarks/adapters.py's pool: fixed mmap
    threshold, torch and peft imported once), on FULL_SIZE_THREADS (default 2) threads."""
    from benchmarks.adapters import memory_pool

    with memory_pool(max_workers=1, preload=["torch", "peft", "diffusers", "deft_omni.backbones"]) as pool:
        return pool.submit(_threaded, fn, *args).result()


def run_plan(spec: dict[str, Any], progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Every group in its own child, then the RSS children, then the fake 32-layer traces and the
    VAE traces (in this process: they allocate nothing)."""
    from .trace import trace_case, trace_vae_encode

    say = progress or (lambda msg: None)
    rows: list[dict[str, Any]] = []
    for i, group in enumerate(spec["groups"]):
        say(f"group {i + 1}/{len(spec['groups'])}: {', '.join(c.key for c in group)}")
        rows += _child(time_group, group, spec["repeats"])
    by_key = {r["key"]: r for r in rows}
    for case in spec["sweep"]:
        say(f"replay: {case.key}")
        traced = trace_case(case, flops=False)
        real = by_key.get(case.key)
        if real is not None:
            real["replay_equal"] = all(real[k] == traced[k] for k in ("peak", "per_layer", "held_after_forward"))
        else:
            rows.append(traced)
            by_key[case.key] = traced
    for case in spec["rss"]:
        say(f"rss: {case.key}")
        result = _child(rss_case, case)
        if case.key in by_key:
            by_key[case.key]["rss_step_bytes"] = result["rss_step_bytes"]
    traces = []
    for case in spec["traces"]:
        say(f"trace: {case.key}")
        traces.append(trace_case(case))
    vae = [trace_vae_encode(512, 1), trace_vae_encode(1024, 2)]
    return {"rows": rows, "traces": traces, "vae": vae}


# -- coefficients ----------------------------------------------------------------------------
def _method_key(case: dict) -> str:
    basis = case["basis"] if case["method"] in ("deft", "para") else "-"
    return f"{case['impl']}-{case['method']}-{basis}"


def additive_mask_bytes(row: dict) -> float:
    case = row["case"]
    return (2 if case["dtype"] == "bf16" else 4) * case["batch"] * row["seq"] ** 2


def derive_coefficients(rows: list[dict[str, Any]], vae: list[dict[str, Any]], reference: Case,
                        hidden: int = 3072) -> Coefficients:
    """Fit c + B (a S + b S^2) on the reference method's rows (every S and batch measured); the
    other methods as bytes per token over the reference, at the S where they were measured (see
    :mod:`.predict` for how they are used)."""
    ref_key = _method_key(reference.to_dict())
    ref = [r for r in rows if _method_key(r["case"]) == ref_key and r["case"]["rank"] == reference.rank]
    plain = [r for r in ref if not r["case"]["ckpt"]]
    ckpt = [r for r in ref if r["case"]["ckpt"]]
    if not plain:
        raise ValueError(f"no row of the reference method {ref_key} r={reference.rank} without checkpointing")
    seq = [r["seq"] for r in plain]
    batch = [r["case"]["batch"] for r in plain]
    layer = fit_quadratic(seq, [r["per_layer"] for r in plain], batch, intercept=True)

    def overhead(r: dict) -> float:
        return r["peak"] - r["case"]["layers"] * r["per_layer"] - additive_mask_bytes(r)

    over = fit_quadratic(seq, [overhead(r) for r in plain], batch, intercept=True)

    def ckpt_overhead(r: dict) -> float:
        k, b, s = r["case"]["layers"], r["case"]["batch"], r["seq"]
        return r["peak"] - k * 2 * b * s * hidden - layer(s, b) - additive_mask_bytes(r)

    ck = fit_quadratic([r["seq"] for r in ckpt], [ckpt_overhead(r) for r in ckpt],
                       [r["case"]["batch"] for r in ckpt], intercept=True) if ckpt else over
    layer_delta, overhead_delta = {}, {}
    for r in rows:
        c = r["case"]
        if c["ckpt"] or c["layers"] != 1 or c["impl"] == "base" or c["side"] != reference.side or c["inputs"]:
            continue
        key = f"{_method_key(c)}@r{c['rank']}"
        s, b = r["seq"], c["batch"]
        layer_delta[key] = (r["per_layer"] - layer(s, b)) / (b * s)
        overhead_delta[key] = (overhead(r) - over(s, b)) / (b * s)
    small = min(vae, key=lambda v: v["side"] ** 2 * v["images"])
    pixels = small["side"] ** 2 * small["images"]
    return Coefficients(layer=layer, overhead=over, ckpt_overhead=ck, layer_delta=layer_delta,
                        overhead_delta=overhead_delta, reference=ref_key,
                        vae_bytes_per_pixel=small["peak"] / pixels, vae_flops_per_pixel=small["flops"] / pixels)

