"""A minimal OmniGen sampler (Euler, t from 0 = noise to 1 = data) and image-grid helpers.

Used by the training callbacks to render progress samples; no diffusers pipeline (its processor
imports torchvision) and no torchvision.  It follows OmniGen's inference :

* timesteps t_i = i / n, i = 0..n; x_{i+1} = x_i + (t_{i+1} - t_i) * v(x_i, t_i)  — the same grid
  as diffusers' ``FlowMatchEulerDiscreteScheduler(invert_sigmas=True)`` with
  ``sigmas = linspace(1, 0, n + 1)[:n]``;
* guidance with the batch [cond, uncond, image-only cond]:
  ``v = uncond + g_img (img - uncond) + g (cond - img)``; without input images [cond, uncond]
  and ``v = uncond + g (cond - uncond)``;
* the unconditional prompt defaults to ``<cfg>``, the instruction that condition dropout trains
  (OmniGen's own pipeline passes a long negative prompt instead; pass it as ``negative_prompt``);
* input images are encoded with the VAE posterior mean (deterministic; the pipeline samples).

The three prompts go through :func:`deft_omni.data.collate_processed`, which puts the longest
text first (RoPE reads row 0's positions); rows are mapped back with the batch's ``order``.

Batches (:func:`generate_latents_batch`): B prompts of one output size share each transformer
call, rows [cond_1..cond_B, uncond_1..uncond_B, img_cond of those with input images] (as
diffusers' collator).  Each image draws its noise from its own seeded generator, so image i is
the same whatever the batch size (up to float rounding of the batched matmuls).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from tqdm.auto import tqdm

from ..data import (
    CFG_INSTRUCTION,
    OmniGenTrainProcessor,
    ProcessedSample,
    collate_processed,
)
from ..model.latents import LatentEncoder, base_dtype, unscale_latents, vae_downsampling

ImageLike = Union[str, Path, Image.Image, torch.Tensor]


@dataclass
class SamplePrompt:
    """One prompt to render: an instruction with ``<img><|image_k|></img>`` tags per input image."""

    instruction: str
    input_images: list[Any] = field(default_factory=list)  # paths, PIL images or (3,H,W) tensors in [-1, 1]
    height: int = 32
    width: int = 32
    seed: int = 0
    guidance_scale: float = 2.5
    img_guidance_scale: float = 1.6
    negative_prompt: Optional[str] = None  # None: the sampler call's negative_prompt
    reference: Optional[Any] = None  # an image shown after the sample in grids (e.g. the data's own output)


def euler_timesteps(num_steps: int) -> torch.Tensor:
    """t_0 = 0 (noise) ... t_n = 1 (data), n + 1 points."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64).float()


def load_input_image(img: ImageLike, processor: OmniGenTrainProcessor, name: str = "input") -> torch.Tensor:
    """An input image as a (3, H, W) tensor in [-1, 1], sides multiples of 16 (processor's fitting)."""
    if isinstance(img, torch.Tensor):
        t = img.detach().float().cpu()
        t = t[0] if t.dim() == 4 else t
        if t.shape[-1] % 16 or t.shape[-2] % 16:
            raise ValueError(f"{name}: tensor image sides must be multiples of 16, got {tuple(t.shape)}")
        return t
    if isinstance(img, (str, Path)):
        with Image.open(img) as fh:
            img = fh.convert("RGB")
    return processor.prepare_image(img, name=name)


def build_guidance_batch(processor: OmniGenTrainProcessor, instruction: str, images: Sequence[torch.Tensor],
                         height: int, width: int, negative_prompt: str = CFG_INSTRUCTION,
                         use_img_cfg: bool = True) -> tuple[dict[str, Any], int]:
    """Collated [cond, uncond(, image-only cond)] batch of one prompt; returns (batch, number of branches)."""
    prompt = SamplePrompt(instruction=instruction, height=height, width=width)
    batch, owner, _ = _stack_guidance_rows(processor, [prompt], [list(images)], negative_prompt, use_img_cfg)
    return batch, len(owner)


def _stack_guidance_rows(processor: OmniGenTrainProcessor, prompts: Sequence[SamplePrompt],
                         images: Sequence[Sequence[torch.Tensor]], negative_prompt: str,
                         use_img_cfg: bool) -> tuple[dict[str, Any], list[int], list[Optional[int]]]:
    """Collated rows [cond_1..cond_B, uncond_1..uncond_B, img_cond of the prompts with images].

    Returns (batch, owner, img_row): ``owner[k]`` is the prompt of item k (items in the order
    above, before collation reorders them) and ``img_row[p]`` the item of prompt p's image-only
    row (None without input images: that prompt uses two-branch guidance).
    """
    height, width = prompts[0].height, prompts[0].width
    blank = torch.zeros(3, height, width)
    specs: list[tuple[str, str, list[torch.Tensor], int]] = []
    for p, (prompt, imgs) in enumerate(zip(prompts, images)):
        specs.append((f"cond_{p}", prompt.instruction, list(imgs), p))
    for p, prompt in enumerate(prompts):
        specs.append((f"uncond_{p}", prompt.negative_prompt or negative_prompt, [], p))
    img_row: list[Optional[int]] = [None] * len(prompts)
    for p, imgs in enumerate(images):
        if imgs and use_img_cfg:
            img_row[p] = len(specs)
            tags = " ".join(f"<img><|image_{i + 1}|></img>" for i in range(len(imgs)))
            specs.append((f"img_cond_{p}", tags, list(imgs), p))
    items = []
    for key, text, imgs, _ in specs:
        sizes = [tuple(int(s) for s in im.shape[-2:]) for im in imgs]
        ids, spans = processor.tokenize(text, sizes, key=key)
        items.append(ProcessedSample(key=key, input_ids=ids, image_spans=spans, input_images=imgs,
                                     output_image=blank))
    batch = collate_processed(items, pad_id=processor.pad_id, mask_dtype=processor.mask_dtype)
    return batch, [owner for *_, owner in specs], img_row


def initial_noise(seeds: Sequence[int], channels: int, height: int, width: int) -> torch.Tensor:
    """(B, C, h, w) fp32 CPU noise, row i from its own generator seeded with ``seeds[i]``.

    One generator per image makes image i independent of its batch-mates and of the batch size
    (diffusers' ``randn_tensor`` with a list of generators draws the same numbers).
    """
    rows = [torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(int(s)))
            for s in seeds]
    return torch.cat(rows)


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def generate_latents_batch(transformer: nn.Module, vae: nn.Module, processor: OmniGenTrainProcessor,
                           prompts: Sequence[SamplePrompt], num_steps: int = 8,
                           negative_prompt: str = CFG_INSTRUCTION, use_img_cfg: bool = True,
                           step_callback: Optional[StepCallback] = None,
                           progress: bool = False) -> torch.Tensor:
    """Sample several prompts of one output size in one transformer call per step.

    Returns (B, C, H/8, W/8) fp32 scaled latents on the transformer's device.  Each prompt keeps
    its own seed, guidance scales and (optional) negative prompt.  ``step_callback(i, t_i, x)``
    is called after step i with the updated latents; ``progress`` shows a tqdm bar over steps.
    """
    if not prompts:
        raise ValueError("generate_latents_batch needs at least one prompt")
    height, width = prompts[0].height, prompts[0].width
    if any((p.height, p.width) != (height, width) for p in prompts):
        sizes = sorted({(p.height, p.width) for p in prompts})
        raise ValueError(f"a batch must share one output size (one latent tensor); got {sizes}: group by size")
    if height % 16 or width % 16:
        raise ValueError(f"height and width must be multiples of 16, got {height}x{width}")
    device, dtype = next(transformer.parameters()).device, base_dtype(transformer)
    images = [[load_input_image(im, processor, f"input_{i + 1}") for i, im in enumerate(p.input_images)]
              for p in prompts]
    batch, owner, img_row = _stack_guidance_rows(processor, prompts, images, negative_prompt, use_img_cfg)
    encoder = LatentEncoder()
    cond = {
        "input_ids": batch["input_ids"].to(device),
        "input_img_latents": [encoder.encode(vae, im.to(device), "mean") for im in batch["input_images"]],
        "input_image_sizes": batch["input_image_sizes"],
        "attention_mask": batch["attention_mask"].to(device),
        "position_ids": batch["position_ids"].to(device),
    }
    order = batch["order"].tolist()  # batch row i holds item order[i]
    row_owner = torch.tensor([owner[k] for k in order], device=device)
    n = len(prompts)
    # Prompts without an image-only row reuse their uncond row: g_img (u - u) = 0 exactly, so that
    # is the two-branch formula u + g (c - u) bit for bit.
    img_idx = torch.tensor([n + p if r is None else r for p, r in enumerate(img_row)], device=device)
    g = torch.tensor([float(p.guidance_scale) for p in prompts], device=device).view(n, 1, 1, 1)
    g_img = torch.tensor([float(p.img_guidance_scale) for p in prompts], device=device).view(n, 1, 1, 1)
    down = vae_downsampling(vae)
    channels = int(getattr(transformer.config, "in_channels", 4))
    x = initial_noise([p.seed for p in prompts], channels, height // down, width // down).to(device)
    ts = euler_timesteps(num_steps).to(device)
    bar = tqdm(total=num_steps, desc="steps", unit="step", leave=False, disable=not progress)
    for i in range(num_steps):
        t = ts[i].expand(len(order))
        out = transformer(hidden_states=x[row_owner].to(dtype), timestep=t, return_dict=False, **cond)[0].float()
        pred = torch.empty_like(out)
        pred[order] = out  # back to item order: cond..., uncond..., img_cond...
        c, u, im = pred[:n], pred[n:2 * n], pred[img_idx]
        v = u + g_img * (im - u) + g * (c - im)
        x = x + (ts[i + 1] - ts[i]) * v
        if step_callback is not None:
            step_callback(i, ts[i], x)
        bar.update()
    bar.close()
    return x


@torch.no_grad()
def generate_latents(transformer: nn.Module, vae: nn.Module, processor: OmniGenTrainProcessor,
                     instruction: str, input_images: Sequence[ImageLike] = (), height: int = 32,
                     width: int = 32, num_steps: int = 8, guidance_scale: float = 2.5,
                     img_guidance_scale: float = 1.6, negative_prompt: str = CFG_INSTRUCTION,
                     seed: int = 0, use_img_cfg: bool = True,
                     step_callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Sample one image's scaled latents (1, C, H/8, W/8), fp32, on the transformer's device."""
    prompt = SamplePrompt(instruction=instruction, input_images=list(input_images), height=height, width=width,
                          seed=seed, guidance_scale=guidance_scale, img_guidance_scale=img_guidance_scale)
    return generate_latents_batch(transformer, vae, processor, [prompt], num_steps, negative_prompt,
                                  use_img_cfg, step_callback)


@torch.no_grad()
def decode_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) fp32 images in [-1, 1] from scaled latents."""
    param = next(vae.parameters())
    with torch.autocast(device_type=latents.device.type, enabled=False):
        z = unscale_latents(vae, latents.to(device=param.device, dtype=param.dtype))
        return vae.decode(z, return_dict=False)[0].float().clamp(-1, 1)


@torch.no_grad()
def generate_image(transformer: nn.Module, vae: nn.Module, processor: OmniGenTrainProcessor,
                   prompt: SamplePrompt, num_steps: int = 8, negative_prompt: str = CFG_INSTRUCTION) -> torch.Tensor:
    """(3, H, W) image in [-1, 1] for one :class:`SamplePrompt`."""
    latents = generate_latents_batch(transformer, vae, processor, [prompt], num_steps, negative_prompt)
    return decode_latents(vae, latents)[0].cpu()


def tensor_to_pil(img: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB PIL image."""
    arr = ((img.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), "RGB")


def _wrap(text: str, max_px: float, max_lines: int, measure: Callable[[str], float]) -> list[str]:
    """``text`` greedily wrapped at words to lines ``measure``-d at most ``max_px`` wide (a word too
    long for a line is cut), on at most ``max_lines`` lines, the last ending in '...' if cut short."""
    lines: list[str] = []
    for word in text.split():
        if lines and measure(lines[-1] + " " + word) <= max_px:
            lines[-1] += " " + word
            continue
        while measure(word) > max_px and len(word) > 1:  # a word wider than a line
            k = max(1, max(i for i in range(1, len(word) + 1) if measure(word[:i]) <= max_px or i == 1))
            lines.append(word[:k])
            word = word[k:]
        lines.append(word)
    lines = lines or [""]
    if len(lines) > max_lines:
        last = " ".join(lines[max_lines - 1:])
        while len(last) > 1 and measure(last + "...") > max_px:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + "..."]
    return lines


def make_grid(rows: Sequence[Sequence[Image.Image]], captions: Optional[Sequence[str]] = None,
              cell: int = 96, pad: int = 4, caption_height: int = 12, caption_lines: int = 3,
              min_caption_width: int = 200) -> Image.Image:
    """Rows of images (each resized to fit a ``cell`` square), each row under its caption, wrapped
    on up to ``caption_lines`` lines at least ``min_caption_width`` px wide (a single 96 px world
    sample's prompt is about 60-100 characters)."""
    n_cols = max((len(r) for r in rows), default=1)
    width = pad + n_cols * (cell + pad)
    if captions:
        width = max(width, pad + min_caption_width)
    font = ImageFont.load_default()
    wrapped = ([_wrap(text, width - 2 * pad, caption_lines, font.getlength) for text in captions] if captions
               else [[] for _ in rows])
    heights = [cell + len(lines) * caption_height + pad for lines in wrapped]
    grid = Image.new("RGB", (width, pad + sum(heights)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    top = pad
    for row, lines, height in zip(rows, wrapped, heights):
        for k, line in enumerate(lines):
            draw.text((pad, top + k * caption_height), line, fill=(0, 0, 0), font=font)
        img_top = top + len(lines) * caption_height
        for c, img in enumerate(row):
            scale = cell / max(img.width, img.height)
            size = (max(1, math.floor(img.width * scale)), max(1, math.floor(img.height * scale)))
            resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BICUBIC
            grid.paste(img.resize(size, resample), (pad + c * (cell + pad), img_top))
        top += height
    return grid
