"""The world base's recipe does not rot: the build's own stages, shortened to well under 90 s (the
committed VAE, 1,000 tasks, 150 steps of 16), still teach colour and background far above chance."""

from __future__ import annotations

from dataclasses import replace

from deft_omni.backbones.named import WORLD_BASE
from deft_omni.world.base_data import encoded_tasks
from deft_omni.world.base_recipe import WorldBaseConfig
from deft_omni.world.build import init_stage, train_stage
from deft_omni.world.chance import chance
from deft_omni.world.judged import SamplerSettings, judge_sets

SHORT = dict(n_train=1000, steps=150, batch_size=16, warmup_steps=20, lr=2e-3)


def test_a_shortened_recipe_still_learns_colour_and_background(tmp_path, one_thread):
    from diffusers import AutoencoderKL

    cfg = replace(WorldBaseConfig(), **SHORT)
    vae = AutoencoderKL.from_pretrained(WORLD_BASE / "vae").eval().requires_grad_(False)
    specs, latents = encoded_tasks(cfg, vae)
    init = init_stage(tmp_path, cfg, WORLD_BASE / "vae")
    backbone, processor, _ = train_stage(cfg, init, specs, latents, progress=False)
    rows, _ = judge_sets(backbone.denoiser, backbone.vae, processor, SamplerSettings(steps=8), 40,
                         sets=[("text_one", "seen")])
    got, base = rows["text_one/seen"].per_attribute, chance("text_one", "seen")
    assert got["colour"] >= base["colour"] + 0.30, got
    assert got["background"] >= base["background"] + 0.30, got
