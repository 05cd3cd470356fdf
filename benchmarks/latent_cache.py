"""What the loader delivers per second: cached latents against pixels + VAE encode, side by side.

    nice -n 5 python benchmarks/latent_cache.py              # 256^2 and 512^2, tiny and SDXL-size VAEs
    nice -n 5 python benchmarks/latent_cache.py --no-sdxl    # the tiny VAE only (about a minute)

For each resolution one generated set (JPEG photos-like images, half the samples with one input
image of the same size, as the converters write them) is encoded once with
``deft_omni.latent_cache`` (fp16; pixels kept, and pixels dropped), then one thread of work per
case reads it with ``build_val_loader`` (batch 4, no workers: what one DataLoader worker does) and
does what a training step would need before the transformer:

* ``pixels``: decode, fit, tensors (the loader alone);
* ``pixels + VAE``: that, plus the VAE posterior of every output and input image (the tiny
  test VAE, and an ``AutoencoderKL`` of SDXL's architecture with random weights: random weights
  cost what real ones cost);
* ``cached``: read the stored posteriors and draw ``mean + std * eps`` (pixels kept or dropped).

Cases of one resolution are interleaved round by round; the table gives the median of
``--rounds`` passes (the SDXL-size VAE: one pass over ``--sdxl-samples`` samples, minutes).  Timings on a shared machine are noisy (the development machine has 2 cores
shared by several sessions; the load average is recorded with the results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from deft_omni.backbones import load_backbone  # noqa: E402
from deft_omni.data import ShardSetWriter, build_val_loader, make_sample  # noqa: E402
from deft_omni.latent_cache import EncodeSettings, encode_latents  # noqa: E402
from deft_omni.model.latents import LatentEncoder, draw_latent, scale_latents  # noqa: E402

SDXL_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025)


def photo(side: int, rng: np.random.Generator) -> Image.Image:
    """Smooth structure plus grain: JPEG sizes like a photo's, not like a flat test image's."""
    coarse = rng.uniform(0, 255, (side // 32, side // 32, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
    grain = rng.normal(0, 6, (side, side, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + grain, 0, 255).astype(np.uint8))


def make_set(folder: Path, side: int, n: int) -> str:
    rng = np.random.default_rng(side)
    with ShardSetWriter(str(folder), source="bench", maxcount=16) as writer:
        for i in range(n):
            inputs = [photo(side, rng)] if i % 2 else []
            text = ("<img><|image_1|></img> the same scene at dusk" if inputs else "a scene") + f" {i}"
            writer.write(make_sample(f"s{i:05d}", text, photo(side, rng), inputs, image_format="jpg"))
    return str(folder)


def folder_bytes(folder: str) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.tar"))


def rate(path: str, processor: Any, work: Callable[[dict], None], limit: Optional[int]) -> float:
    """Samples per second through the loader and ``work`` (one pass, or ``limit`` samples)."""
    start, n = time.perf_counter(), 0
    for batch in build_val_loader(path, processor, batch_size=4):
        work(batch)
        n += len(batch["keys"])
        if limit is not None and n >= limit:
            break
    return n / (time.perf_counter() - start)


def vae_work(vae: torch.nn.Module) -> Callable[[dict], None]:
    encoder = LatentEncoder()

    def work(batch: dict) -> None:
        encoder.encode(vae, batch["output_images"], "sample", torch.Generator().manual_seed(0))
        for img in batch["input_images"]:
            encoder.encode(vae, img, "sample", torch.Generator().manual_seed(0))
    return work


def cached_work(vae: torch.nn.Module) -> Callable[[dict], None]:
    def work(batch: dict) -> None:
        gen = torch.Generator().manual_seed(0)
        for post in [batch["output_latents"], *batch["input_latents"]]:
            post = post.float()
            scale_latents(vae, draw_latent(post[:, 0], post[:, 1], "sample", gen))
    return work


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    backbone = load_backbone("tiny")
    tiny_vae = backbone.vae
    sdxl = None
    if args.sdxl:
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        sdxl = AutoencoderKL(**SDXL_VAE).eval().requires_grad_(False)
    rows, results = [], {"sides": {}}
    with tempfile.TemporaryDirectory(prefix="latent_cache_bench_") as tmp:
        for side, n in ((256, args.samples_256), (512, args.samples_512)):
            processor = backbone.make_processor(max_image_side=side)
            pixels = make_set(Path(tmp) / f"px{side}", side, n)
            t0 = time.perf_counter()
            kept = encode_latents(EncodeSettings(model="tiny", input=pixels, output=f"{tmp}/kept{side}",
                                                 max_image_side=side, quiet=True), log=lambda m: None)["output"]
            encode_s = time.perf_counter() - t0
            dropped = encode_latents(EncodeSettings(model="tiny", input=pixels, output=f"{tmp}/dropped{side}",
                                                    max_image_side=side, drop_pixels=True, quiet=True),
                                     log=lambda m: None)["output"]
            cases = {"pixels (loader only)": (pixels, lambda b: None, None),
                     "pixels + tiny VAE encode": (pixels, vae_work(tiny_vae), None),
                     "cached latents, pixels kept": (kept, cached_work(tiny_vae), None),
                     "cached latents, pixels dropped": (dropped, cached_work(tiny_vae), None)}
            got: dict[str, list[float]] = {name: [] for name in cases}
            for name, (path, work, limit) in cases.items():  # warm-up: file cache, first-call costs
                rate(path, processor, work, 4)
            for _ in range(args.rounds):
                for name, (path, work, limit) in cases.items():
                    got[name].append(rate(path, processor, work, limit))
            if sdxl is not None:  # seconds per image on 2 cores: one pass over the first few samples
                name = "pixels + SDXL-size VAE encode"
                cases[name] = (pixels, vae_work(sdxl), args.sdxl_samples)
                got[name] = [rate(pixels, processor, vae_work(sdxl), args.sdxl_samples)]
            sizes = {pixels: folder_bytes(pixels) / n, kept: folder_bytes(kept) / n, dropped: folder_bytes(dropped) / n}
            per = {}
            for name, (path, _, limit) in cases.items():
                med = statistics.median(got[name])
                per[name] = {"samples_per_s": med, "all": got[name], "bytes_per_sample": sizes[path],
                             "samples_timed": limit or n}
                rows.append((f"{side}x{side}", name, med, min(got[name]), max(got[name]), sizes[path] / 1024))
            results["sides"][side] = {"cases": per, "samples": n, "one_time_encode_tiny_s": encode_s,
                                      "one_time_encode_tiny_samples_per_s": n / encode_s}
    results.update(threads=args.threads, rounds=args.rounds, load_average=os.getloadavg(),
                   machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                   torch=torch.__version__, rows=rows)
    return results


def markdown(res: dict[str, Any]) -> str:
    lines = ["| images | case | samples/s (median) | min .. max | s per sample | KiB per sample on disk |",
             "|---|---|---|---|---|---|"]
    for side, case, med, lo, hi, kib in res["rows"]:
        lines.append(f"| {side} | {case} | {med:.3g} | {lo:.3g} .. {hi:.3g} | {1 / med:.3g} | {kib:.0f} |")
    lines.append("")
    for side, info in res["sides"].items():
        lines.append(f"- {side}x{side}: {info['samples']} samples (half with one input image); the one-time encode "
                     f"with the tiny VAE took {info['one_time_encode_tiny_s']:.1f} s "
                     f"({info['one_time_encode_tiny_samples_per_s']:.1f} samples/s).")
    lines.append(f"- {res['threads']} torch threads, {res['rounds']} rounds, batch 4, no DataLoader workers; "
                 f"{res['machine']}; load average at the end {', '.join(f'{v:.1f}' for v in res['load_average'])} "
                 "(a shared machine: the figures are noisy).")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples-256", type=int, default=48)
    p.add_argument("--samples-512", type=int, default=24)
    p.add_argument("--sdxl", action=argparse.BooleanOptionalAction, default=True,
                   help="also time an SDXL-size AutoencoderKL (random weights) on the pixel path")
    p.add_argument("--sdxl-samples", type=int, default=2,
                   help="samples timed (one pass, no warm-up) with the SDXL-size VAE: about 14 s per 256^2 image "
                        "and 55 s per 512^2 image on 2 shared cores")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latent_cache")
    p.add_argument("--render", type=Path, default=None, help="only rewrite the table of an earlier results JSON")
    args = p.parse_args(argv)
    from deft_omni.core.atomic import write_json, write_text

    if args.render is not None:
        res = json.loads(args.render.read_text())
        write_text(args.render.with_suffix(".md"), markdown(res))
        print(markdown(res))
        return res
    res = run(args)
    write_json(args.out.with_suffix(".json"), res)
    write_text(args.out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
