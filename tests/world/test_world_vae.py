"""The world VAE: loss pieces, a Lightning fit of a few steps, unit-variance latents, and a
save/load round trip (safetensors, recipe beside it)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL

from deft_omni.world.spec import Geometry, ObjectSpec, SceneSpec
from deft_omni.world.render import render_array
from deft_omni.world.vae import WorldVAEConfig, encode_mean, object_weights, render_batch, roundtrip
from deft_omni.world.vae_module import RECIPE_NAME, fit_world_vae, save_world_vae

SMALL = dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, steps=3, batch_size=2, warmup_steps=1,
             geometry=Geometry(image_size=48, large_radius=7.0, small_radius=5.0, jitter=1.0))


def test_object_weights_mark_the_object_only():
    scene = SceneSpec((ObjectSpec("square", "red", "large", 4),), "white")
    x = torch.from_numpy(render_array(scene)).permute(2, 0, 1)[None] / 127.5 - 1
    w = object_weights(x, 5.0)
    assert w.shape == (1, 1, 96, 96) and set(w.unique().tolist()) == {1.0, 5.0}
    assert w[0, 0, 48, 48] == 5.0 and w[0, 0, 2, 2] == 1.0
    assert 0.04 < (w == 5.0).float().mean() < 0.1  # the square (5.8% of the image) and its rim


def test_batches_are_deterministic():
    geometry = SMALL["geometry"]
    a, b = render_batch(1, 7, 4, geometry), render_batch(1, 7, 4, geometry)
    assert a.shape == (4, 3, 48, 48) and torch.equal(a, b) and not torch.equal(a, render_batch(1, 8, 4, geometry))


def test_extra_shapes_reach_the_vae_renders_at_their_share_and_only_when_asked(monkeypatch):
    import deft_omni.world.vae as vae_mod

    drawn: list[str] = []
    real = vae_mod.render_objects
    monkeypatch.setattr(vae_mod, "render_objects", lambda objs, bg, g: drawn.extend(o.shape for o in objs) or real(objs, bg, g))
    geometry = SMALL["geometry"]
    for step in range(40):
        render_batch(0, step, 4, geometry)
    assert drawn and "star" not in drawn
    drawn.clear()
    for step in range(40):
        render_batch(0, step, 4, geometry, extra_shapes=("star",), extra_share=0.25)
    share = drawn.count("star") / len(drawn)
    assert 0.15 < share < 0.35, share
    assert set(drawn) - {"star"} == {"circle", "square", "triangle", "diamond", "cross"}
    with pytest.raises(ValueError, match="extra_shape_share"):
        WorldVAEConfig(extra_shapes=(), extra_shape_share=0.2)


def test_fit_calibrate_save_load(tmp_path, one_thread):
    cfg = WorldVAEConfig(**SMALL)
    vae, facts = fit_world_vae(cfg)
    assert facts["steps"] == 3 and facts["scaling_factor"] > 0
    x = render_batch(0, 10**9, 2, cfg.geometry)  # the calibration batch
    z = encode_mean(vae, x) * vae.config.scaling_factor
    assert z.shape == (2, 4, 6, 6) and abs(float(z.std()) - 1.0) < 1e-3
    out = save_world_vae(vae, tmp_path / "vae", cfg, facts)
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    recipe = json.loads((out / RECIPE_NAME).read_text())
    assert recipe["recipe"]["block_out_channels"] == [8, 8, 8, 8] and recipe["steps"] == 3
    again = AutoencoderKL.from_pretrained(out).eval()
    assert again.config.scaling_factor == vae.config.scaling_factor
    assert torch.allclose(roundtrip(again, x), roundtrip(vae, x), atol=1e-6)
    rebuilt, _ = fit_world_vae(cfg)  # same recipe, same machine and threads: the same weights
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), vae.state_dict().values()))
