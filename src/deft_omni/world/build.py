"""``python -m deft_omni.world.build``: train the world base from scratch, judge it, and publish it.

    python -m deft_omni.world.build                       # -> src/deft_omni/assets/world_base
    python -m deft_omni.world.build --out DIR --work W    # elsewhere; W keeps the stages
    python -m deft_omni.world.build --steps 300 --vae-steps 400 --n-train 2000 --eval-n 50   # a short recipe

Stages, each kept in ``--work`` so a killed build resumes at the stage it was in:

1. the world VAE (:mod:`.vae_module`, Lightning) -> ``W/vae``;
2. the training tasks' posteriors, encoded once -> ``W/latents.safetensors``;
3. a random-init OmniGen transformer of :class:`~.base_recipe.WorldBaseConfig`'s size beside the
   VAE, the world tokenizer and OmniGen's scheduler -> ``W/init`` (a model folder like any other);
4. full training of that folder through :class:`deft_omni.training.DeftOmniModule`
   (``adapter.method=full``), the OmniGen backbone's rectified-flow loss and cached latents;
5. the judge on held-out prompts (VAE round trips and generations), then the folder, ``world.json``
   (recipe, sampler defaults, scores, times) and ``SHA256SUMS``, published with one rename.

A rebuild with the same options and ``--threads`` on one machine gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from ..backbones.named import CHECKSUMS, WORLD_BASE, sha256_file
from ..core.atomic import atomic_dir, write_json, write_text
from ..core.seeding import derive_seed
from .base_recipe import WorldBaseConfig
from .metrics import format_table
from .vae import WorldVAEConfig

WORLD_INFO = "world.json"


def _log(msg: str) -> None:
    print(f"[world.build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def vae_stage(work: Path, cfg: WorldVAEConfig):
    from diffusers import AutoencoderKL

    from .vae_module import RECIPE_NAME, train_world_vae

    folder = work / "vae"
    recipe = folder / RECIPE_NAME
    if recipe.is_file() and json.loads(recipe.read_text())["recipe"] == json.loads(json.dumps(cfg.as_dict())):
        _log(f"VAE: reusing {folder}")
        return AutoencoderKL.from_pretrained(folder).eval().requires_grad_(False), json.loads(recipe.read_text())
    _log(f"VAE: training {cfg.steps} steps x {cfg.batch_size} renders (one thread)")
    threads = torch.get_num_threads()
    # Batches of 4 renders gain little from more threads, and on one its bytes do not depend on the
    # machine's core count.
    torch.set_num_threads(1)
    try:
        vae, facts = train_world_vae(cfg, folder)
    finally:
        torch.set_num_threads(threads)
    _log(f"VAE: {facts['train_seconds']} s")
    return vae.requires_grad_(False), {"recipe": cfg.as_dict(), **facts}


def init_stage(work: Path, cfg: WorldBaseConfig, vae_dir: Path) -> Path:
    """A model folder holding the random-init transformer (seeded), the VAE, tokenizer, scheduler."""
    from diffusers import OmniGenTransformer2DModel

    from ..model.loading import default_omnigen_scheduler
    from ..model.tiny import write_model_index
    from .tokenizer import WORLD_VOCAB_SIZE, build_world_tokenizer

    with atomic_dir(work / "init") as staging:
        torch.manual_seed(derive_seed("world-transformer-init", cfg.seed))
        model = OmniGenTransformer2DModel(**cfg.transformer_config(WORLD_VOCAB_SIZE))
        model.save_pretrained(staging / "transformer", safe_serialization=True)
        shutil.copytree(vae_dir, staging / "vae")
        tokenizer = build_world_tokenizer()
        tokenizer.save_pretrained(staging / "tokenizer")
        default_omnigen_scheduler().save_pretrained(staging / "scheduler")
        write_model_index(staging, type(tokenizer).__name__)
    return work / "init"


class _LogEvery:
    """A log line every ``n`` steps when there is no progress bar (a build's log file)."""

    def __new__(cls, n: int):
        import lightning.pytorch as pl

        class LogEvery(pl.Callback):
            def __init__(self) -> None:
                self.start, self.losses = time.perf_counter(), []

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                self.losses.append(float(outputs["loss"]))
                step = int(trainer.global_step)
                if step % n == 0:
                    elapsed = time.perf_counter() - self.start
                    _log(f"step {step}: loss {sum(self.losses[-n:]) / len(self.losses[-n:]):.4f}, "
                         f"{step / elapsed:.2f} steps/s")

        return LogEvery()


def train_stage(cfg: WorldBaseConfig, init: Path, specs, latents, progress: bool = True):
    """The trained backbone (DeftOmniModule, full training) and the seconds it took."""
    import lightning.pytorch as pl

    from ..training.module import DeftOmniModule
    from .base_data import WorldBatches

    module = DeftOmniModule(
        model={"path": str(init), "torch_dtype": "float32", "init_seed": cfg.seed}, adapter={"method": "full"},
        optim={"lr": cfg.lr, "warmup_steps": cfg.warmup_steps, "schedule": "cosine", "total_steps": cfg.steps,
               "min_lr_ratio": cfg.min_lr_ratio},
        loss={"latent_mode": "mean", "seed": cfg.seed}, verbose=False)
    processor = module.backbone.make_processor(max_image_side=cfg.image_size)
    batches = WorldBatches(cfg, specs, latents, processor)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)
    trainer = pl.Trainer(max_steps=cfg.steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                         gradient_clip_val=1.0, deterministic=True, num_sanity_val_steps=0,
                         callbacks=[] if progress else [_LogEvery(250)])
    start = time.perf_counter()
    trainer.fit(module, loader)
    return module.backbone, processor, time.perf_counter() - start


def judge_stage(backbone, processor, cfg: WorldBaseConfig, n: int) -> dict:
    from .concept import concept_roundtrip_scores
    from .judged import SamplerSettings, judge_sets, scores_dict
    from .vae import roundtrip_scores

    sampler = SamplerSettings(cfg.sample_steps, cfg.guidance_scale, cfg.img_guidance_scale, cfg.image_size)
    roundtrips = roundtrip_scores(backbone.vae, n=n)
    roundtrips.update(concept_roundtrip_scores(backbone.vae, n=n))
    _log("VAE round trips (the ceiling):\n" + format_table(roundtrips))
    rows, _ = judge_sets(backbone.denoiser, backbone.vae, processor, sampler, n)
    _log(f"generations, {cfg.sample_steps} steps:\n" + format_table(rows))
    return {"n_per_set": n, "roundtrip": scores_dict(roundtrips), "generated": scores_dict(rows)}


def publish(out: Path, init: Path, backbone, info: dict) -> Path:
    """The model folder at ``out`` (replaced at once), with ``world.json`` and ``SHA256SUMS``."""
    with atomic_dir(out) as staging:
        for part in ("vae", "tokenizer", "scheduler", "model_index.json"):
            src = init / part
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, staging / part)
        backbone.denoiser.save_pretrained(str(staging / "transformer"), safe_serialization=True)
        write_json(staging / WORLD_INFO, info)
        files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != CHECKSUMS)
        write_text(staging / CHECKSUMS, "".join(f"{sha256_file(p)}  {p.relative_to(staging).as_posix()}\n"
                                                for p in files))
    return out


def build(cfg: WorldBaseConfig, vae_cfg: WorldVAEConfig, out: Path, work: Path, eval_n: int = 200,
          progress: bool = True) -> dict:
    from .base_data import encoded_tasks

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vae, vae_info = vae_stage(work, vae_cfg)
    t_vae = time.perf_counter() - t0
    _log(f"encoding {cfg.n_train} training tasks once")
    specs, latents = encoded_tasks(cfg, vae, work / f"latents_{cfg.seed}_{cfg.n_train}.safetensors")
    t_enc = time.perf_counter() - t0 - t_vae
    init = init_stage(work, cfg, work / "vae")
    _log(f"training the transformer: {cfg.steps} steps x {cfg.batch_size}")
    backbone, processor, t_train = train_stage(cfg, init, specs, latents, progress)
    _log(f"trained in {t_train:.0f} s; judging {eval_n} held-out prompts per set")
    t_judge0 = time.perf_counter()
    scores = judge_stage(backbone, processor, cfg, eval_n)
    info = {
        "name": "world", "recipe": cfg.as_dict(), "vae": vae_info, "sampler": cfg.sampler_defaults(),
        "parameters": sum(p.numel() for p in backbone.denoiser.parameters()), "scores": scores,
        "seconds": {"vae": round(t_vae, 1), "encode": round(t_enc, 1), "transformer": round(t_train, 1),
                    "judge": round(time.perf_counter() - t_judge0, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "built_with": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                       "machine": platform.machine(), "python": platform.python_version()},
        "rebuild": "python -m deft_omni.world.build",
    }
    publish(out, init, backbone, info)
    _log(f"published {out} ({info['seconds']['total']:.0f} s in all)")
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deft_omni.world.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=WORLD_BASE, help=f"model folder to publish (default {WORLD_BASE})")
    p.add_argument("--work", type=Path, default=None, help="stage folder (default: OUT.work beside OUT)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (a rebuild is bit-identical at the same count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="transformer steps (default: the recipe's)")
    p.add_argument("--n-train", type=int, default=None, help="training tasks (default: the recipe's)")
    p.add_argument("--vae-steps", type=int, default=None, help="VAE steps (default: the recipe's)")
    p.add_argument("--eval-n", type=int, default=200, help="held-out prompts per judged set")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[list[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = WorldBaseConfig(seed=args.seed)
    changes = {k: v for k, v in (("steps", args.steps), ("n_train", args.n_train)) if v is not None}
    cfg = replace(cfg, **changes)
    vae_cfg = WorldVAEConfig(seed=args.seed)
    if args.vae_steps is not None:
        vae_cfg = replace(vae_cfg, steps=args.vae_steps)
    work = args.work or args.out.with_name(args.out.name + ".work")
    return build(cfg, vae_cfg, args.out, work, args.eval_n, progress=not args.no_progress)


if __name__ == "__main__":
    main()
