"""What fits which card, and how the model compares with the public figures.

A card's usable memory: 90 % of it (the caching allocator's fragmentation: reserved runs 5-15 %
above allocated in diffusion trainers, more when shapes vary) minus 0.75 GiB (CUDA context,
cuBLAS and cuDNN workspaces): the model predicts ``max_memory_allocated``, and ``nvidia-smi``
shows more.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from .predict import GIB, Coefficients, Setup, predict

CARDS = [(12, "int8"), (16, "int8"), (16, "bf16"), (24, "bf16"), (48, "bf16"), (80, "bf16")]
SIDES = (1024, 768, 512)
BATCHES = (8, 4, 2, 1)


def usable_bytes(card_gib: float) -> float:
    return (0.90 * card_gib - 0.75) * GIB


# The workload a card is chosen for: one condition image at the output's side (VisualCloze-style
# pairs, OmniGen's editing tasks) and a long instruction; text-to-image needs less.
WORKLOAD = Setup(inputs=1, text_tokens=128, rank=32)


def candidates(workload: Setup, base: str, latents: tuple[str, ...]) -> list[Setup]:
    """In order of preference: the largest side; the VAE as today (pixels) before cached latents;
    no checkpointing (a third less compute) before checkpointing; the largest batch."""
    out = []
    for side in SIDES:
        for lat in latents:
            for ckpt in (False, True):
                for batch in BATCHES:
                    out.append(replace(workload, side=side, batch=batch, ckpt=ckpt, base=base, latents=lat))
    return out


def recommend(co: Coefficients, card_gib: float, base: str = "bf16", workload: Setup = WORKLOAD,
              latents: tuple[str, ...] = ("pixels", "cached")) -> Optional[dict[str, Any]]:
    """The first candidate that fits, with its prediction; None if nothing does."""
    limit = usable_bytes(card_gib)
    for setup in candidates(workload, base, latents):
        pred = predict(setup, co)
        if pred.peak <= limit:
            return {"card_gib": card_gib, "base": base, "usable_gib": limit / GIB, "setup": setup,
                    "peak_gib": pred.peak / GIB, "seconds": pred.seconds,
                    "samples_per_s": {k: setup.batch / v for k, v in pred.seconds.items()}}
    return None


def recommendations(co: Coefficients, workload: Setup = WORKLOAD) -> list[dict[str, Any]]:
    rows = []
    for card, base in CARDS:
        today = recommend(co, card, base, workload, latents=("pixels",))
        cached = recommend(co, card, base, workload, latents=("cached",))
        rows.append({"card_gib": card, "base": base, "today": today, "cached": cached})
    return rows


# -- public figures -----------------------------------------------------------------------------
PAPER = {"lora": (8.03, 12.0), "deft": (7.95, 11.0)}  # GB, steps/s; r = 64, batch 2, side not given


def paper_check(co: Coefficients) -> list[dict[str, Any]]:
    """The paper's figures against the model at the sides it might have used."""
    out = []
    for method, (gb, steps) in PAPER.items():
        for side in (256, 512, 1024):
            setup = Setup(side=side, batch=2, rank=64, method=method, basis="qr" if method == "deft" else "-",
                          ckpt=True, latents="cached")
            pred = predict(setup, co)
            floor = sum(t.bytes for t in pred.terms if t.phase == "static")
            out.append({"method": method, "paper_gb": gb, "paper_steps_per_s": steps, "side": side,
                        "predicted_gib": pred.peak / GIB, "static_floor_gib": floor / GIB,
                        "needed_tflops_at_paper_speed": pred.flops * steps / 1e12,
                        "predicted_steps_per_s": {k: 1.0 / v for k, v in pred.seconds.items()}})
    return out


def omnigen_lora_recipe(inputs: int = 0) -> Setup:
    """OmniGen's own LoRA example (docs/fine-tuning.md, train.py): peft LoRA r=8 on the fused
    qkv_proj + o_proj (the same units as ours), the model and the LoRA cast to bf16 (so AdamW's
    states are bf16 too), the fp32 VAE on the GPU, gradient checkpointing, 1024 px, batch 2."""
    return Setup(side=1024, batch=2, rank=8, impl="ours", method="lora", basis="-", ckpt=True, inputs=inputs,
                 adapter_dtype="bf16")


def omnigen_full_recipe() -> Setup:
    """OmniGen's full fine-tuning at max_image_size 512, batch 1: every weight bf16 (train.py casts the
    model), AdamW states in bf16, checkpointing on (train.py enables it for every run)."""
    return Setup(side=512, batch=1, ckpt=True, trained="full", impl="ours", method="lora", basis="-")


def public_checks(co: Coefficients) -> dict[str, Any]:
    lora16 = [predict(omnigen_lora_recipe(n), co) for n in (0, 1, 2)]
    math16 = predict(replace(omnigen_lora_recipe(0), attention="math"), co)
    full125 = predict(omnigen_full_recipe(), co)
    return {
        "paper": paper_check(co),
        "omnigen_16": {"reported_gb": 25.0, "what": "nvidia-smi during the official LoRA example",
                       "predicted_gib": [p.peak / GIB for p in lora16], "inputs": [0, 1, 2],
                       "phases_gib": [{k: v / GIB for k, v in p.phases.items()} for p in lora16],
                       "math_attention_gib": math16.peak / GIB},
        "omnigen_125": {"reported": "out of memory on 40 GB at 512 px (full fine-tuning)",
                        "predicted_gib": full125.peak / GIB,
                        "phases_gib": {k: v / GIB for k, v in full125.phases.items()},
                        "binding": full125.binding()},
    }


def preset_for(rec: dict[str, Any]) -> dict[str, Any]:
    """The config values a card preset sets (see configs/trainer/gpu*.yaml)."""
    s: Setup = rec["setup"]
    return {"model.torch_dtype": "bfloat16", "model.gradient_checkpointing": s.ckpt, "data.batch_size": s.batch,
            "data.max_image_side": s.side}

