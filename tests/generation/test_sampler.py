"""The batched Euler sampler: step-by-step agreement with diffusers' scheduler as OmniGenPipeline
drives it, and batch-size independence of every image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from deft_omni.data import CFG_INSTRUCTION, OmniGenTrainProcessor
from deft_omni.generation import SamplePrompt, build_guidance_batch, generate_latents, generate_latents_batch
from deft_omni.generation.sampler import initial_noise, load_input_image

STEPS = 5


def _pipeline_reference(parts, processor, instruction, images, seed, g, g_img):
    """OmniGenPipeline's loop (diffusers 0.42 pipeline_omnigen.py, read as text): sigmas
    linspace(1, 0, n+1)[:n] through set_timesteps, [cond, uncond(, img)] rows, its guidance
    formula, scheduler.step.  Returns the latents after every step."""
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True, num_train_timesteps=1)
    scheduler.set_timesteps(sigmas=np.linspace(1, 0, STEPS + 1)[:STEPS])
    pixels = [load_input_image(im, processor) for im in images]
    batch, n_branches = build_guidance_batch(processor, instruction, pixels, 32, 32, CFG_INSTRUCTION)
    latents_in = [parts.vae.encode(im).latent_dist.mean * parts.vae.config.scaling_factor
                  for im in batch["input_images"]]
    inverse = torch.argsort(batch["order"])
    latents = randn_tensor((1, 4, 4, 4), generator=[torch.Generator().manual_seed(seed)], dtype=torch.float32)
    history = []
    for t in scheduler.timesteps:
        out = parts.transformer(hidden_states=torch.cat([latents] * n_branches), timestep=t.expand(n_branches),
                                input_ids=batch["input_ids"], input_img_latents=latents_in,
                                input_image_sizes=batch["input_image_sizes"], attention_mask=batch["attention_mask"],
                                position_ids=batch["position_ids"], return_dict=False)[0][inverse]
        if n_branches == 3:
            cond, uncond, img_cond = torch.split(out, 1, dim=0)
            noise_pred = uncond + g_img * (img_cond - uncond) + g * (cond - img_cond)
        else:
            cond, uncond = torch.split(out, 1, dim=0)
            noise_pred = uncond + g * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        history.append(latents.clone())
    return history


@pytest.mark.parametrize("with_image", [False, True])
@torch.no_grad()
def test_matches_diffusers_scheduler_step_by_step(parts, input_png, with_image):
    processor = OmniGenTrainProcessor(parts.tokenizer, cfg_dropout=0.0)
    instruction = "turn <img><|image_1|></img> into a red cat" if with_image else "a red cat on a mat"
    images = [input_png] if with_image else []
    ref = _pipeline_reference(parts, processor, instruction, images, seed=5, g=3.0, g_img=1.7)
    ours = []
    generate_latents(parts.transformer, parts.vae, processor, instruction, images, 32, 32, STEPS, 3.0, 1.7,
                     seed=5, step_callback=lambda i, t, x: ours.append(x.clone()))
    assert len(ours) == len(ref) == STEPS
    moved = (ref[-1] - randn_tensor((1, 4, 4, 4), generator=[torch.Generator().manual_seed(5)])).abs().max()
    assert moved > 0.1  # the loop really changes the latents
    for step, (a, b) in enumerate(zip(ours, ref)):
        assert (a - b).abs().max().item() < 1e-5, f"step {step}"


def test_noise_is_diffusers_randn_with_one_generator_per_image():
    seeds = [3, 9, 4]
    ref = randn_tensor((3, 4, 4, 6), generator=[torch.Generator().manual_seed(s) for s in seeds])
    assert torch.equal(initial_noise(seeds, 4, 4, 6), ref)
    assert torch.equal(initial_noise(seeds[1:2], 4, 4, 6)[0], ref[1])


def _prompts(input_png):
    return [
        SamplePrompt("a red cat", [], 32, 32, seed=1),
        SamplePrompt("put <img><|image_1|></img> in a much longer sentence about a garden at dusk", [input_png],
                     32, 32, seed=2, guidance_scale=3.5, img_guidance_scale=1.2),
        SamplePrompt("x", [], 32, 32, seed=3, guidance_scale=4.0, negative_prompt="blurry"),
    ]


@torch.no_grad()
def test_image_independent_of_batch_size(parts, input_png):
    processor = OmniGenTrainProcessor(parts.tokenizer, cfg_dropout=0.0)
    prompts = _prompts(input_png)
    calls = []
    hook = parts.transformer.register_forward_hook(lambda m, a, kw, out: calls.append(kw["hidden_states"].shape[0]),
                                                   with_kwargs=True)
    try:
        together = generate_latents_batch(parts.transformer, parts.vae, processor, prompts, 3)
    finally:
        hook.remove()
    assert calls == [7] * 3  # one call per step: 3 cond + 3 uncond + 1 image-only row
    pairs = generate_latents_batch(parts.transformer, parts.vae, processor, prompts[1:], 3)
    for i, prompt in enumerate(prompts):
        alone = generate_latents_batch(parts.transformer, parts.vae, processor, [prompt], 3)
        assert (alone[0] - together[i]).abs().max() < 1e-5, i
        if i:
            assert (pairs[i - 1] - together[i]).abs().max() < 1e-5, i
    # Different seeds and prompts really give different images (the comparison above can fail).
    assert (together[0] - together[2]).abs().max() > 0.1


@torch.no_grad()
def test_batch_rejects_mixed_sizes(parts):
    processor = OmniGenTrainProcessor(parts.tokenizer, cfg_dropout=0.0)
    with pytest.raises(ValueError, match="one output size"):
        generate_latents_batch(parts.transformer, parts.vae, processor,
                               [SamplePrompt("a", height=32, width=32), SamplePrompt("b", height=32, width=48)], 1)


def test_grid_captions_wrap_to_the_row_instead_of_being_cut():
    from PIL import Image

    from deft_omni.generation.sampler import _wrap, make_grid

    caption = "a small purple sks at the bottom right on a black background"
    lines = _wrap(caption, 16, 3, len)  # measured in characters here
    assert len(lines) == 3 and all(len(line) <= 16 for line in lines) and lines[-1].endswith("...")
    assert " ".join(_wrap(caption, 16, 9, len)) == caption  # nothing lost when it fits
    assert _wrap("abcdefghij", 4, 9, len) == ["abcd", "efgh", "ij"]  # a word longer than a line is cut
    tile = Image.new("RGB", (96, 96), (255, 0, 0))
    one_line = make_grid([[tile]], ["short"])
    wrapped = make_grid([[tile]], [caption + " " + caption])  # two lines or more at 200 px
    assert wrapped.width == 204 and wrapped.height >= one_line.height + 12
    assert wrapped.getpixel((50, wrapped.height - 4 - 48)) == (255, 0, 0)  # the image sits below them
    assert make_grid([[tile]]).width == 104  # no caption, no extra width
