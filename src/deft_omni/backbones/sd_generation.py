"""``python -m deft_omni.generate`` on a Stable Diffusion folder: diffusers' own pipeline
(``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` with the folder's scheduler), deft_omni's
adapters on its UNet and text encoders (live, or merged with ``--merge``), and the same PNG +
sidecar files as OmniGen's engine, so ``--from-sidecar`` and ``python -m deft_omni.evaluate``
work unchanged.

Prompts are batched when they share size, guidance scale and negative prompt (one pipeline call
takes one of each); every image draws its initial noise from its own CPU generator seeded with
its seed (diffusers' list-of-generators form), so an image does not depend on its batch beyond
float rounding.  The pipeline returns latents, decoded one image at a time by the fp32 VAE
(diffusers' SD pipelines do not cast latents to the VAE's dtype).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ..core.dtypes import resolve_dtype
from ..generation.adapters_spec import apply_adapters
from ..generation.errors import GenerationError
from ..generation.runner import (
    GenerationSettings,
    Job,
    plan_jobs,
    preflight,
    sidecar_record,
    write_grid,
    write_image,
)
from ..generation.sampler import decode_latents, tensor_to_pil
from ..generation.sidecar import model_identity
from .sd_family import SDWeightsNotFound, load_parts, make_pipeline, scheduler_from_config


def sd_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Jobs sharing (size, guidance, negative prompt), in first-appearance order, cut into batches."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        p = job.prompt
        groups.setdefault((p.height, p.width, p.guidance_scale, p.negative_prompt), []).append(job)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def _sidecar(settings: GenerationSettings, job: Job, model: dict, adapters: list, batch: list[Job],
             scheduler: dict, pipeline: str, argv: Optional[list[str]]) -> dict[str, Any]:
    """OmniGen's sidecar with SD's negative prompt (null: the pipeline's own) and sampler."""
    record = sidecar_record(settings, job, model, adapters, batch, argv)
    record["prompt"]["negative_prompt"] = job.prompt.negative_prompt
    record["sampler"] = {
        "name": pipeline, "scheduler": scheduler.get("_class_name"),
        "scheduler_config": {k: v for k, v in scheduler.items() if not k.startswith("_")},
        "guidance": "uncond + guidance_scale (cond - uncond); negative_prompt null: the pipeline's own",
        "noise": "randn_tensor with a list of torch.Generator().manual_seed(seed), one per image, on CPU"}
    return record


def _check_model(settings: GenerationSettings, identity: dict, path: Path) -> None:
    recorded = settings.expected_model
    if recorded and identity["quick_sha256"] != recorded.get("quick_sha256"):
        raise GenerationError(f"--model {path} is not the model that made this image (identity "
                              f"{identity['quick_sha256'][:12]} vs {str(recorded.get('quick_sha256'))[:12]} "
                              f"recorded, from {recorded.get('path')}); pass --model with that model")


def run_sd_generation(cls: Any, settings: GenerationSettings, jobs: Optional[list[Job]] = None,
                      argv: Optional[list[str]] = None) -> list[Path]:
    """Make the images of ``settings`` with the backbone class ``cls`` (its ``sd`` family)."""
    jobs = plan_jobs(settings) if jobs is None else jobs
    preflight(settings, jobs)
    for job in jobs:
        if job.prompt.input_images:
            raise GenerationError(f"{job.prompt.source}: input images need OmniGen; the {cls.family} backbone "
                                  f"is text-to-image")
    model_path = Path(settings.model_path or settings.model).expanduser()
    identity = {"name": settings.model, "named": settings.model_path is not None, "family": cls.family,
                **model_identity(model_path)}
    _check_model(settings, identity, model_path)
    try:
        parts = load_parts(model_path, cls.sd, torch_dtype=resolve_dtype(settings.dtype), device=settings.device)
    except SDWeightsNotFound as err:
        raise GenerationError(f"--model {settings.model}: {err}") from None
    adapters = apply_adapters(parts.networks, settings.adapters, settings.merge, model_path)
    pipe = make_pipeline(cls.sd, parts.networks, parts.vae, parts.tokenizers,
                         scheduler_from_config(parts.scheduler_config))
    settings.out.mkdir(parents=True, exist_ok=True)
    written: dict[int, Path] = {}
    rows = []
    bar = tqdm(total=len(jobs), desc="images", unit="img", disable=not settings.progress)
    for batch in sd_batches(jobs, settings.batch_size):
        first = batch[0].prompt
        pipe.scheduler = scheduler_from_config(parts.scheduler_config)  # schedulers keep per-call state
        with torch.no_grad():
            negative = None if first.negative_prompt is None else [first.negative_prompt] * len(batch)
            latents = pipe(prompt=[j.prompt.instruction for j in batch], negative_prompt=negative,
                           height=first.height, width=first.width, num_inference_steps=settings.steps,
                           guidance_scale=first.guidance_scale, output_type="latent",
                           generator=[torch.Generator().manual_seed(int(j.prompt.seed)) for j in batch]).images
        for k, job in enumerate(batch):
            image = tensor_to_pil(decode_latents(parts.vae, latents[k:k + 1].float())[0])
            record = _sidecar(settings, job, identity, adapters, batch, parts.scheduler_config,
                              cls.sd.pipeline_class, argv)
            written[job.index] = write_image(settings, job, image, record)
            rows.append((job.index, [image], job.prompt.instruction))
            bar.update()
    bar.close()
    write_grid(settings, rows)
    return [written[j.index] for j in jobs]
