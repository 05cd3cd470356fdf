"""Run the generation command: load the base model and adapters, sample prompt batches, write
``<index>_<slug>.png`` + ``.json`` sidecars and ``grid.png``.

Prompts are grouped by output size (a transformer call takes one latent tensor) in their given
order and cut into batches of ``batch_size``; every image carries its own seed, so the batch
size does not change the images (beyond float rounding of the batched matmuls).
"""

from __future__ import annotations

import platform
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

import deft_omni

from ..core.atomic import atomic_path
from ..core.dtypes import resolve_dtype
from ..data import CFG_INSTRUCTION, OmniGenTrainProcessor
from .adapters_spec import AdapterSpec, apply_adapters, check_adapter_folder, file_sha256
from .errors import GenerationError
from .prompts import PromptSpec, slugify
from .sampler import SamplePrompt, decode_latents, generate_latents_batch, make_grid, tensor_to_pil
from .sidecar import model_identity, write_sidecar



@dataclass
class GenerationSettings:
    """Everything one run of the generation command needs (validated on creation)."""

    model: str
    prompts: list[PromptSpec]
    out: Path
    adapters: list[AdapterSpec] = field(default_factory=list)
    merge: bool = False
    steps: int = 50
    seed: Optional[int] = None  # base seed; None draws one (recorded in every sidecar)
    batch_size: int = 1
    num_images_per_prompt: int = 1
    dtype: str = "fp32"
    device: str = "cpu"
    use_img_cfg: bool = True
    max_input_image_side: int = 1024
    grid: bool = True
    progress: bool = True
    expected_model: Optional[dict[str, Any]] = None  # identity a regeneration must find
    model_path: Optional[Path] = None  # the folder behind ``model`` (a named model resolved by the CLI)

    def __post_init__(self) -> None:
        self.out = Path(self.out).expanduser()
        if not self.prompts:
            raise GenerationError("no prompts: pass --prompt TEXT or --prompts FILE")
        for name in ("steps", "batch_size", "num_images_per_prompt"):
            if getattr(self, name) < 1:
                raise GenerationError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        try:
            resolve_dtype(self.dtype)
        except ValueError as err:
            raise GenerationError(f"--dtype: {err}") from None
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise GenerationError(f"--device {self.device}: CUDA is not available in this torch build; "
                                  f"use --device cpu")
        if self.max_input_image_side < 16:
            raise GenerationError(f"--max-input-image-side must be >= 16, got {self.max_input_image_side}")
        if self.seed is None:
            self.seed = secrets.randbelow(2**31)


@dataclass
class Job:
    """One image: its global index, output file stem and prompt (seed resolved)."""

    index: int
    stem: str
    prompt: PromptSpec


def plan_jobs(settings: GenerationSettings) -> list[Job]:
    """Expand prompts x images-per-prompt into jobs; image i gets seed (base + i) unless its prompt has one
    (then prompt seed + copy number)."""
    total = len(settings.prompts) * settings.num_images_per_prompt
    width = max(3, len(str(total - 1)))
    jobs = []
    for p, spec in enumerate(settings.prompts):
        for copy in range(settings.num_images_per_prompt):
            index = len(jobs)
            seed = spec.seed + copy if spec.seed is not None else settings.seed + index
            jobs.append(Job(index, f"{index:0{width}d}_{slugify(spec.instruction)}", replace(spec, seed=seed)))
    return jobs


def batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Same-size groups in first-appearance order, each cut into batches."""
    groups: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.prompt.height, job.prompt.width), []).append(job)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def _input_record(spec: PromptSpec) -> list[dict[str, str]]:
    return [{"path": str(p.resolve()), "sha256": file_sha256(p)} for p in spec.input_images]


def sidecar_record(settings: GenerationSettings, job: Job, model: dict, adapters: list, batch: list[Job],
             argv: Optional[list[str]]) -> dict[str, Any]:
    import diffusers

    p = job.prompt
    return {
        "file": f"{job.stem}.png", "index": job.index, "deft_omni_version": deft_omni.__version__,
        "torch_version": torch.__version__, "diffusers_version": diffusers.__version__,
        "python_version": platform.python_version(),
        "prompt": {"instruction": p.instruction, "input_images": _input_record(p),
                   "negative_prompt": p.negative_prompt or CFG_INSTRUCTION, "source": p.source},
        "seed": p.seed, "base_seed": settings.seed, "height": p.height, "width": p.width, "steps": settings.steps,
        "guidance_scale": p.guidance_scale, "img_guidance_scale": p.img_guidance_scale,
        "use_img_cfg": settings.use_img_cfg, "max_input_image_side": settings.max_input_image_side,
        "dtype": settings.dtype, "device": settings.device, "merge": settings.merge,
        "batch": {"batch_size": settings.batch_size, "size": len(batch), "position": batch.index(job),
                  "indices": [j.index for j in batch]},
        "model": model, "adapters": adapters,
        "sampler": {"name": "euler", "timesteps": "linspace(0, 1, steps + 1), t=0 noise, t=1 data",
                    "guidance": "uncond + img_guidance_scale (img - uncond) + guidance_scale (cond - img)",
                    "noise": "torch.randn((1, C, H/8, W/8), generator=torch.Generator().manual_seed(seed)) on CPU"},
        "command": argv,
    }


def preflight(settings: GenerationSettings, jobs: list[Job]) -> None:
    """Input checks that need no model: adapter folders and input images."""
    for spec in settings.adapters:
        check_adapter_folder(spec)
    for job in jobs:
        job.prompt.check_images()


def run_generation(settings: GenerationSettings, jobs: Optional[list[Job]] = None,
                   argv: Optional[list[str]] = None) -> list[Path]:
    """Make the images; returns the PNG paths (in job order; ``grid.png`` not included)."""
    from ..model import load_omnigen

    jobs = plan_jobs(settings) if jobs is None else jobs
    preflight(settings, jobs)
    model_path = Path(settings.model_path or settings.model).expanduser()
    if not model_path.is_dir():
        raise GenerationError(f"--model {settings.model}: no such folder; give an OmniGen folder (diffusers or "
                              f"original layout) or a named model (tiny, world)")
    identity = {"name": settings.model, "named": settings.model_path is not None, **model_identity(model_path)}
    if settings.expected_model and identity["quick_sha256"] != settings.expected_model.get("quick_sha256"):
        recorded = settings.expected_model
        raise GenerationError(f"--model {model_path} is not the model that made this image (identity "
                              f"{identity['quick_sha256'][:12]} vs {str(recorded.get('quick_sha256'))[:12]} "
                              f"recorded, from {recorded.get('path')}); pass --model with that model")
    try:
        parts = load_omnigen(model_path, torch_dtype=resolve_dtype(settings.dtype), device=settings.device)
    except FileNotFoundError as err:
        raise GenerationError(f"--model {settings.model}: {err}") from None
    transformer = parts.transformer.eval()
    identity["layout"] = parts.layout
    adapters = apply_adapters(transformer, settings.adapters, settings.merge, model_path)
    processor = OmniGenTrainProcessor(parts.tokenizer, max_image_side=settings.max_input_image_side, cfg_dropout=0.0)
    settings.out.mkdir(parents=True, exist_ok=True)
    written: dict[int, Path] = {}
    rows = []
    bar = tqdm(total=len(jobs), desc="images", unit="img", disable=not settings.progress)
    for batch in batches(jobs, settings.batch_size):
        prompts = [SamplePrompt(instruction=j.prompt.instruction, input_images=list(j.prompt.input_images),
                                height=j.prompt.height, width=j.prompt.width, seed=int(j.prompt.seed),
                                guidance_scale=j.prompt.guidance_scale,
                                img_guidance_scale=j.prompt.img_guidance_scale,
                                negative_prompt=j.prompt.negative_prompt) for j in batch]
        latents = generate_latents_batch(transformer, parts.vae, processor, prompts, settings.steps,
                                         use_img_cfg=settings.use_img_cfg, progress=settings.progress)
        for k, job in enumerate(batch):
            # One image per decode: the VAE's output then does not depend on the batch either.
            image = tensor_to_pil(decode_latents(parts.vae, latents[k:k + 1])[0])
            written[job.index] = write_image(settings, job, image,
                                             sidecar_record(settings, job, identity, adapters, batch, argv))
            if settings.grid:
                inputs = [tensor_to_pil(processor.prepare_image(_open_rgb(p))) for p in job.prompt.input_images]
                rows.append((job.index, [*inputs, image], job.prompt.instruction))
            bar.update()
    bar.close()
    write_grid(settings, rows)
    return [written[j.index] for j in jobs]


def write_image(settings: GenerationSettings, job: Job, image: Any, sidecar: dict[str, Any]) -> Path:
    """``<out>/<stem>.png`` and its ``.json`` sidecar, each written atomically."""
    png = settings.out / f"{job.stem}.png"
    with atomic_path(png) as tmp:
        image.save(tmp, format="PNG")
    write_sidecar(png.with_suffix(".json"), sidecar)
    return png


def write_grid(settings: GenerationSettings, rows: list[tuple[int, list, str]]) -> None:
    """``grid.png``: one row per image (index, [inputs..., image], caption), in index order."""
    if settings.grid and rows:
        rows = sorted(rows, key=lambda r: r[0])
        with atomic_path(settings.out / "grid.png") as tmp:
            make_grid([r[1] for r in rows], [r[2] for r in rows]).save(tmp, format="PNG")


def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")
