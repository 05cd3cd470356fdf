"""Tables (Markdown) and the JSON record of a run."""

from __future__ import annotations

from typing import Any

from .cards import preset_for, public_checks, recommendations
from .predict import GIB, GPUS, UTILISATION, Coefficients, Prediction, Setup, predict

MIB = 2 ** 20


def prediction_grid(co: Coefficients, text_tokens: int) -> list[Prediction]:
    out = []
    for side in (512, 1024):
        for batch in (1, 2):
            for ckpt in (True, False):
                for rank in (8, 32, 64):
                    for impl, method, basis in (("ours", "deft", "qr"), ("peft", "lora", "-")):
                        out.append(predict(Setup(side=side, batch=batch, rank=rank, ckpt=ckpt, impl=impl,
                                                 method=method, basis=basis, text_tokens=text_tokens), co))
    return out


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def prediction_table(preds: list[Prediction]) -> str:
    lines = ["| side | batch | ckpt | r | S | deft_omni DEFT qr (GiB) | peft LoRA (GiB) | ratio | "
             "step s A100 | step s H100 | what sets the peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    pairs = {}
    for p in preds:
        s = p.setup
        pairs.setdefault((s.side, s.batch, s.ckpt, s.rank), {})[s.impl] = p
    for (side, batch, ckpt, rank), d in pairs.items():
        ours, peft = d["ours"], d["peft"]
        lines.append(f"| {side}² | {batch} | {'on' if ckpt else 'off'} | {rank} | {ours.setup.seq} | {_gib(ours.peak)} | "
                     f"{_gib(peft.peak)} | {ours.peak / peft.peak:.3f} | {ours.seconds['A100']:.2f} | "
                     f"{ours.seconds['H100']:.2f} | {ours.binding()} |")
    return "\n".join(lines)


def terms_table(pred: Prediction) -> str:
    lines = [f"Terms of {pred.setup.impl} {pred.setup.method} r={pred.setup.rank}, {pred.setup.side}², batch "
             f"{pred.setup.batch}, checkpointing {'on' if pred.setup.ckpt else 'off'}, S = {pred.setup.seq}:", "",
             "| phase | term | GiB | source | note |", "|---|---|---|---|---|"]
    for t in pred.terms:
        lines.append(f"| {t.phase} | {t.name} | {t.bytes / GIB:.3f} | {t.source} | {t.note} |")
    phases = ", ".join(f"{k} {v / GIB:.2f}" for k, v in pred.phases.items())
    lines += ["", f"Phase totals (static + phase), GiB: {phases}. **Peak {pred.peak / GIB:.2f} GiB.**"]
    return "\n".join(lines)


def cards_table(recs: list[dict[str, Any]]) -> str:
    lines = ["| card | base | usable GiB | today (VAE on the GPU) | peak GiB | samples/s H100 | "
             "with cached latents | peak GiB |", "|---|---|---|---|---|---|---|---|"]

    def cells(rec) -> list[str]:
        if rec is None:
            return ["nothing fits", "-"]
        s: Setup = rec["setup"]
        return [f"{s.side}², batch {s.batch}, ckpt {'on' if s.ckpt else 'off'}", f"{rec['peak_gib']:.2f}"]

    for r in recs:
        today, cached = r["today"], r["cached"]
        usable = (today or cached or {}).get("usable_gib", float("nan"))
        speed = f"{today['samples_per_s']['H100']:.2f}" if today else "-"
        lines.append("| " + " | ".join([f"{r['card_gib']} GB", r["base"], f"{usable:.1f}", *cells(today), speed,
                                         *cells(cached)]) + " |")
    return "\n".join(lines)


def public_section(public: dict[str, Any]) -> str:
    lines = ["| source | figure | model | comment |", "|---|---|---|---|"]
    for p in public["paper"]:
        speeds = ", ".join(f"{k} {v:.2f}" for k, v in p["predicted_steps_per_s"].items())
        lines.append(f"| paper ({p['method']}, r=64, batch 2) | {p['paper_gb']} GB, {p['paper_steps_per_s']} steps/s | "
                     f"at {p['side']}² with every saving (ckpt, cached latents): {p['predicted_gib']:.2f} GiB "
                     f"(weights + adapter states alone {p['static_floor_gib']:.2f}); {speeds} steps/s | "
                     f"{p['paper_steps_per_s']} steps/s needs {p['needed_tflops_at_paper_speed']:.0f} TFLOP/s sustained |")
    o16 = public["omnigen_16"]
    lines.append(f"| OmniGen #16 (official LoRA example: 1024 px, batch 2, r 8, ckpt) | ~{o16['reported_gb']:.0f} GB "
                 f"({o16['what']}) | allocated: {o16['predicted_gib'][0]:.2f} GiB text-to-image, {o16['predicted_gib'][1]:.2f} "
                 f"GiB with one 1024² input image, {o16['predicted_gib'][2]:.2f} GiB with two; "
                 f"{o16['math_attention_gib']:.2f} GiB text-to-image if attention kept its scores (math kernel) | nvidia-smi adds the CUDA context and the caching allocator's "
                 f"reserve |")
    o125 = public["omnigen_125"]
    lines.append(f"| OmniGen #125 (full fine-tune, 512 px) | {o125['reported']} | {o125['predicted_gib']:.2f} GiB; "
                 f"phases {', '.join(f'{k} {v:.1f}' for k, v in o125['phases_gib'].items())} | largest term: "
                 f"{o125['binding']} |")
    return "\n".join(lines)


def measured_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | source | r | side | inputs | batch | ckpt | k | S | per block MiB | step peak MiB | RSS MiB | "
             "step s | ×peft LoRA time | ×peft LoRA mem |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    refs = {(r["case"]["rank"], r["case"]["side"], r["case"]["inputs"], r["case"]["batch"], r["case"]["ckpt"],
             r["case"]["layers"]): r for r in rows if r["case"]["impl"] == "peft" and r["case"]["method"] == "lora"}
    for r in rows:
        c = r["case"]
        ref = refs.get((c["rank"], c["side"], c["inputs"], c["batch"], c["ckpt"], c["layers"]))
        rt = f"{r['step_s'] / ref['step_s']:.3f}" if ref and r.get("step_s") and ref.get("step_s") else "-"
        rm = f"{r['peak'] / ref['peak']:.3f}" if ref else "-"
        rss = f"{r['rss_step_bytes'] / MIB:.0f}" if r.get("rss_step_bytes") is not None else "-"
        step = f"{r['step_s']:.2f}" if r.get("step_s") is not None else "-"
        source = r.get("source", "measured") + {True: " (replay equal)", False: " (REPLAY DIFFERS)"}.get(
            r.get("replay_equal"), "")
        lines.append(f"| {r['label']} | {source} | {c['rank']} | {c['side']}² | {c['inputs']} | {c['batch']} | "
                     f"{'on' if c['ckpt'] else 'off'} | {c['layers']} | {r['seq']} | {r['per_layer'] / MIB:.1f} | "
                     f"{r['peak'] / MIB:.1f} | {rss} | {step} | {rt} | {rm} |")
    return "\n".join(lines)


def crosscheck_table(co: Coefficients, traces: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """The model's step phase on CPU kernels (no GPU-only term) against fake 32-layer traces and
    the measured k = 2 rows."""
    lines = ["| check | case | S | model step peak MiB | trace/measured MiB | model/actual |", "|---|---|---|---|---|---|"]
    for label, items in (("32-layer trace", traces), ("measured k=2", [r for r in rows if r["case"]["layers"] == 2])):
        for t in items:
            c = t["case"]
            setup = Setup(side=c["side"], batch=c["batch"], rank=c["rank"], impl=c["impl"], method=c["method"],
                          basis=c["basis"], ckpt=c["ckpt"], inputs=c["inputs"], text_tokens=t["text_tokens"],
                          layers=c["layers"])
            pred = predict(setup, co)
            cpu_terms = [x for x in pred.terms if x.phase == "step" and "(GPU)" not in x.name]
            model = sum(x.bytes for x in cpu_terms)
            lines.append(f"| {label} | {t['label']} r={c['rank']} {c['side']}² +{c['inputs']} input b{c['batch']} "
                         f"{'ckpt' if c['ckpt'] else 'no ckpt'} k={c['layers']} | {t['seq']} | {model / MIB:.0f} | "
                         f"{t['peak'] / MIB:.0f} | {model / t['peak']:.3f} |")
    return "\n".join(lines)


def cost_lines(rows: list[dict[str, Any]], traces: list[dict[str, Any]]) -> str:
    """CPU seconds per block (k = 2 minus k = 1, same process, interleaved) and the FLOPs counted
    in the 32-layer traces against the analytic count the GPU times use (which adds the QK^T
    recomputation of a fused attention backward, which the counter does not see, and counts the
    first block's input gradients, which training skips)."""
    from .arch import OMNIGEN_V1, step_flops

    lines = []
    by = {(r["case"]["side"], r["case"]["inputs"], r["case"]["batch"], r["case"]["ckpt"], r["case"]["layers"],
           r["case"]["impl"], r["case"]["method"], r["case"]["basis"], r["case"]["rank"]): r
          for r in rows if r.get("step_s")}
    for key, two in by.items():
        one = by.get((*key[:4], 1, *key[5:]))
        if key[4] == 2 and one is not None:
            lines.append(f"- CPU time per block, {two['label']} r={key[8]} {key[0]}² S={two['seq']} "
                         f"ckpt {'on' if key[3] else 'off'}: {two['step_s'] - one['step_s']:.1f} s "
                         f"(k=1 step {one['step_s']:.1f} s, k=2 {two['step_s']:.1f} s)")
    for t in traces:
        c = t["case"]
        if "flops" in t:
            analytic = step_flops(OMNIGEN_V1, c["batch"], t["seq"], c["rank"], c["ckpt"])["total"]
            lines.append(f"- FLOPs, {t['label']} {c['side']}² b{c['batch']} {'ckpt' if c['ckpt'] else 'no ckpt'} "
                         f"S={t['seq']}: counted {t['flops'] / 1e12:.1f} T, model {analytic / 1e12:.1f} T "
                         f"({t['flops'] / analytic:.3f})")
    return "\n".join(lines)


def build_report(result: dict[str, Any], co: Coefficients, mode: str, elapsed_s: float) -> tuple[str, dict]:
    rows, traces = result["rows"], result["traces"]
    text_tokens = rows[0]["text_tokens"] if rows else 63
    grid = prediction_grid(co, text_tokens)
    head = predict(Setup(side=1024, batch=2, rank=64, ckpt=True, text_tokens=text_tokens), co)
    head_peft = predict(Setup(side=1024, batch=2, rank=64, ckpt=True, impl="peft", method="lora", basis="-",
                              text_tokens=text_tokens), co)
    recs = recommendations(co)
    public = public_checks(co)
    gpu_note = ", ".join(f"{k}: {v['bf16'] / 1e12:.0f} TFLOP/s bf16, {v['tf32'] / 1e12:.0f} TF32" for k, v in GPUS.items())
    md = "\n\n".join([
        f"# Full-size OmniGen: predicted GPU memory and step cost ({mode})",
        "Predicted, not measured on a GPU. Memory terms are measured (1-2 full-width layers on this "
        "machine's CPU, live tensor bytes), traced (fake tensors) or computed (parameter counts, dtypes). "
        f"Step times assume {UTILISATION:.0%} of the dense peak ({gpu_note}). CPU timings were taken on "
        f"2 cores shared with other jobs: noisy (memory figures are not). Run time {elapsed_s / 60:.1f} min.",
        "## Predicted peak (torch.cuda.max_memory_allocated) and step time, full 32 layers, bf16 base",
        f"Text-to-image, {text_tokens} text tokens, the VAE encoding on the GPU (fp32), fp32 adapters and "
        "AdamW; S = sequence length.",
        prediction_table(grid), terms_table(head), terms_table(head_peft),
        "## Card recommendations", "deft_omni DEFT qr, r = 32, one condition image at the output's side, "
        "128 text tokens; usable = 90 % of the card - 0.75 GiB. Text-to-image needs less.", cards_table(recs),
        "## Public figures", public_section(public),
        "## Measured on CPU (bf16 base + autocast, fp32 adapters, training steps of 1-2 full-width blocks)",
        "Every block is measured as an interior one (its input requires grad). 'traced': the same step replayed "
        "on fake tensors (no time); where a case ran both ways the bytes must agree. Step peak: above the "
        "static bytes, after the (tiny) VAE's encode.", measured_table(rows),
        "## Cross-checks", crosscheck_table(co, traces, rows), cost_lines(rows, traces),
    ])
    record = {"mode": mode, "elapsed_s": elapsed_s, "coefficients": co.to_dict(), "rows": rows, "traces": traces,
              "vae": result["vae"], "predictions": [p.to_dict() for p in grid], "headline": head.to_dict(),
              "headline_peft_lora": head_peft.to_dict(),
              "cards": [{k: (_rec_dict(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in recs],
              "public": public}
    return md, record


def _rec_dict(rec: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict

    out = dict(rec)
    out["setup"] = asdict(rec["setup"])
    out["preset"] = preset_for(rec)
    return out
