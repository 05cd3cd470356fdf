"""One SDXL training step (UNet forward + backward) with deft_omni's DEFT against peft's LoRA.

    python benchmarks/sd_step.py                 # ~5 min on 2 CPU cores
    python benchmarks/sd_step.py --json out.json

The UNet has SDXL's widths (320, 640, 1280), attention heads, 2048-wide cross-attention and
micro-conditioning, with one resnet and one transformer block per level (7 blocks, 436 M
parameters) at 64x64 latents (512 px), batch 1, fp32.  Adapters at r = 4 on to_q, to_k, to_v,
to_out.0 of every block: peft LoRA exactly as diffusers' train_dreambooth_lora_sdxl.py adds it
(``unet.add_adapter(LoraConfig(r, lora_alpha=r, init_lora_weights="gaussian", ...))``), and
deft_omni's DEFT qr / LoRA with the ``sd_attn`` preset (fused q,k,v of attn1 and k,v of attn2).
A step is MSE(unet(x_t, t, text, added), noise).backward(); time: the median of --repeats steps
after one warm-up, cases interleaved round by round in one process; peak memory: the peak RSS
of one step minus the RSS before it, in a fresh process per case (after a warm-up step there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapters import _peak_rss, _rss, memory_pool  # noqa: E402 - the per-case memory protocol

UNET = dict(sample_size=64, block_out_channels=(320, 640, 1280), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=1, attention_head_dim=(5, 10, 20), use_linear_projection=True,
            cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
CASES = ("peft LoRA", "deft_omni DEFT qr", "deft_omni LoRA")
RANK = 4
PRESET = Path(__file__).resolve().parents[1] / "configs" / "targets" / "sd_attn.yaml"


def build(case: str, weights=None):
    """(networks, trainable parameters, step function) of one case; ``weights``: a state dict the
    frozen base shares (the timing process holds every case at once)."""
    import torch
    import yaml
    from diffusers import UNet2DConditionModel

    from deft_omni.backbones.sd_family import SDNetworks

    torch.manual_seed(0)
    if weights is None:
        unet = UNet2DConditionModel(**UNET)
    else:
        with torch.device("meta"):
            unet = UNet2DConditionModel(**UNET)
        unet.load_state_dict(weights, assign=True)
    unet.requires_grad_(False)
    net = SDNetworks(unet, {})
    if case == "peft LoRA":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    elif case != "base":  # "base": no adapter (the shared weights)
        from deft_omni.adapters import AdapterConfig, inject_adapter

        method = "deft" if "DEFT" in case else "lora"
        inject_adapter(net, AdapterConfig(method=method, rank=RANK, decomposition="qr",
                                          **yaml.safe_load(PRESET.read_text())))
    unet.train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 64, 64, generator=gen)
    noise = torch.randn(1, 4, 64, 64, generator=gen)
    text = torch.randn(1, 77, 2048, generator=gen)
    added = {"text_embeds": torch.randn(1, 1280, generator=gen),
             "time_ids": torch.tensor([[512.0, 512, 0, 0, 512, 512]])}
    params = [p for p in unet.parameters() if p.requires_grad]

    def step():
        pred = unet(x, torch.tensor([500]), text, added_cond_kwargs=added).sample
        torch.nn.functional.mse_loss(pred, noise).backward()
        for p in params:
            p.grad = None

    return net, params, step


def memory_child(case: str) -> int:
    import gc

    import torch

    torch.set_num_threads(2)
    _, _, step = build(case)
    step()  # warm-up: one-time initialisation is not the case's memory
    gc.collect()
    before = _rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return _peak_rss() - before


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case after one warm-up")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    weights = build("base")[0].unet.state_dict()
    built = {case: build(case, weights) for case in CASES}
    counts = {case: sum(p.numel() for p in built[case][1]) for case in CASES}
    samples: dict[str, list[float]] = {case: [] for case in CASES}
    for round_ in range(args.repeats + 1):
        for case in CASES:
            t0 = time.perf_counter()
            built[case][2]()
            if round_:
                samples[case].append(time.perf_counter() - t0)
    del built, weights
    with memory_pool() as pool:
        mems = dict(zip(CASES, pool.map(memory_child, CASES)))
    ref = "peft LoRA"
    rows = []
    for case in CASES:
        sec = statistics.median(samples[case])
        rows.append({"case": case, "trainable": counts[case], "step_s": sec, "peak_mb": mems[case] / 2 ** 20,
                     "time_vs_peft_lora": sec / statistics.median(samples[ref]),
                     "mem_vs_peft_lora": mems[case] / mems[ref]})
    print("| case | trainable | step s | ×peft LoRA | peak MiB | ×peft LoRA |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['trainable']:,} | {r['step_s']:.2f} | {r['time_vs_peft_lora']:.3f} | "
              f"{r['peak_mb']:.0f} | {r['mem_vs_peft_lora']:.3f} |")
    deft = next(r for r in rows if r["case"] == "deft_omni DEFT qr")
    ok = deft["time_vs_peft_lora"] <= 1.05 and deft["mem_vs_peft_lora"] <= 1.05
    print(f"\n{'ok ' if ok else 'MISS'} deft_omni DEFT qr / peft LoRA: time {deft['time_vs_peft_lora']:.3f} "
          f"mem {deft['mem_vs_peft_lora']:.3f} (target <= 1.05)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"unet": UNET, "rank": RANK, "repeats": args.repeats, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
