"""The GPU check: the full 32 layers in bf16, measured beside the model's prediction.

    python -m benchmarks.full_size.gpu_check                 # on one CUDA GPU, ~2-4 min
    python -m benchmarks.full_size.gpu_check --tiny          # the same code path on CPU, seconds

On the GPU: OmniGen-v1's architecture from random weights (nothing downloaded), SDXL's VAE
(random, fp32) encoding the pixels as in training, 1024² output, batch 2, r = 64, gradient
checkpointing, bf16 base under bf16 autocast, fp32 adapters, AdamW; for deft_omni DEFT qr, peft
LoRA and peft DEFT qr, one model at a time.  Per method: one warm-up step, then ``--steps`` timed
steps (CUDA-synchronised); measured = ``torch.cuda.max_memory_allocated`` over the timed steps and
the median step time; predicted = :func:`~.predict.predict` with the coefficients recorded by
``python -m benchmarks.full_size`` (``--record``).  Then the issue's goals: DEFT <= 1.03x peft
LoRA in time and <= 1.02x in memory, and a peak under 16 GiB (else the term that prevents it).

The machine needs this checkout and its dependencies (torch with CUDA, diffusers, peft,
transformers, tokenizers, lightning): with no network, bring them as wheels.

``--tiny``: the project's tiny model on CPU; "measured" is the live tensor bytes of the step
(the CPU's max_memory_allocated) and "predicted" a fake-tensor trace of the same step, which
must agree exactly.  A test runs it.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from .case import Case

RECORD = Path(__file__).resolve().parents[1] / "results" / "full_size.json"
METHODS = [("ours", "deft", "qr"), ("peft", "lora", "-"), ("peft", "deft", "qr")]
GPU_CASE = Case(side=1024, batch=2, rank=64, ckpt=True, layers=32, interior=False)
TINY_CASE = Case(side=64, batch=2, rank=4, ckpt=True, layers=2, interior=False, arch="tiny")
GIB = 2 ** 30


def measure_gpu(case: Case, steps: int) -> dict[str, Any]:
    import torch

    from .case import make_backbone, make_batch, make_optimizer, make_step, sequence, text_tokens

    device = torch.device("cuda")
    backbone, groups = make_backbone(case, device=device, vae="sdxl")
    optimizer = make_optimizer(groups)
    batch = make_batch(case, backbone)
    step = make_step(case, backbone, optimizer, batch)
    step()  # warm-up: kernels chosen, AdamW states made
    torch.cuda.reset_peak_memory_stats(device)
    times = [step()["step_s"] for _ in range(steps)]
    out = {"seq": sequence(batch), "text_tokens": text_tokens(batch, case),
           "peak": torch.cuda.max_memory_allocated(device), "reserved": torch.cuda.max_memory_reserved(device),
           "step_s": statistics.median(times), "step_times": times}
    del backbone, optimizer, step, batch
    gc.collect()
    torch.cuda.empty_cache()
    return out


def measure_tiny(case: Case) -> dict[str, Any]:
    """CPU: absolute live bytes of one step after a warm-up (the analogue of max_memory_allocated)."""
    from .case import make_backbone, make_batch, make_optimizer, make_step, sequence, text_tokens
    from .measure import measure_step

    backbone, groups = make_backbone(case)
    optimizer = make_optimizer(groups)
    batch = make_batch(case, backbone)
    step = make_step(case, backbone, optimizer, batch)
    step()
    row = measure_step(case, backbone, step, batch)
    return {"seq": sequence(batch), "text_tokens": text_tokens(batch, case), "step_s": step()["step_s"],
            "peak": row["static_bytes"] + row["batch_bytes"] + row["peak"]}


def predicted_tiny(case: Case) -> dict[str, Any]:
    from .trace import trace_case

    row = trace_case(case, flops=False)
    return {"peak": row["static_bytes"] + row["batch_bytes"] + row["peak"], "seconds": None}


def predicted_gpu(case: Case, measured: dict[str, Any], record: Path) -> dict[str, Any]:
    from .predict import Coefficients, Setup, predict

    co = Coefficients.from_dict(json.loads(record.read_text())["coefficients"])
    setup = Setup(side=case.side, batch=case.batch, rank=case.rank, impl=case.impl, method=case.method,
                  basis=case.basis, ckpt=case.ckpt, inputs=case.inputs, text_tokens=measured["text_tokens"],
                  layers=case.layers)
    pred = predict(setup, co)
    return {"peak": pred.peak, "seconds": pred.seconds, "binding": pred.binding(),
            "terms": [(t.name, t.bytes, t.source, t.phase) for t in pred.terms]}


def goals(rows: dict[str, dict[str, Any]]) -> list[str]:
    ours, lora = rows.get("ours-deft-qr"), rows.get("peft-lora--")
    out = []
    if ours and lora:
        t = ours["measured"]["step_s"] / lora["measured"]["step_s"]
        m = ours["measured"]["peak"] / lora["measured"]["peak"]
        out.append(f"{'ok ' if t <= 1.03 else 'MISS'} deft_omni DEFT / peft LoRA time {t:.3f} (goal <= 1.03)")
        out.append(f"{'ok ' if m <= 1.02 else 'MISS'} deft_omni DEFT / peft LoRA memory {m:.3f} (goal <= 1.02)")
    if ours:
        peak = ours["measured"]["peak"] / GIB
        binding = ours["predicted"].get("binding")
        out.append(f"{'ok ' if peak < 16 else 'MISS'} deft_omni DEFT peak {peak:.2f} GiB (goal < 16)"
                   + (f"; largest term: {binding}" if peak >= 16 and binding else ""))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on CPU (exercises the code path)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method after one warm-up")
    parser.add_argument("--record", type=Path, default=RECORD, help="coefficients from python -m benchmarks.full_size")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --tiny on CPU, or on a GPU machine")
    if not args.tiny and not args.record.is_file():
        parser.error(f"--record {args.record} does not exist: run `python -m benchmarks.full_size` first "
                     "(or copy its full_size.json here)")
    base = TINY_CASE if args.tiny else GPU_CASE
    rows: dict[str, dict[str, Any]] = {}
    for impl, method, basis in METHODS:
        case = replace(base, impl=impl, method=method, basis=basis)
        key = f"{impl}-{method}-{basis}"
        measured = measure_tiny(case) if args.tiny else measure_gpu(case, args.steps)
        predicted = predicted_tiny(case) if args.tiny else predicted_gpu(case, measured, args.record)
        rows[key] = {"case": case.to_dict(), "label": case.label, "measured": measured, "predicted": predicted}
        speed = "" if predicted.get("seconds") is None else \
            "  predicted step s " + ", ".join(f"{k} {v:.2f}" for k, v in predicted["seconds"].items())
        print(f"{case.label:20s} S={measured['seq']}  peak measured {measured['peak'] / GIB:.3f} GiB  predicted "
              f"{predicted['peak'] / GIB:.3f} GiB  ({measured['peak'] / predicted['peak']:.3f}x)  "
              f"step {measured['step_s']:.3f} s{speed}", flush=True)
    for line in goals(rows):
        print(line)
    if args.json:
        from deft_omni.core.atomic import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
