"""DreamBooth class-prior images: given as shards, or generated once by the base model and cached.

``data.prior`` with a ``class_prompt`` asks for generation, as diffusers' DreamBooth scripts do with
``--with_prior_preservation --class_prompt ... --num_class_images N``:

    data.prior: {path: DIR, weight: 1.0, loss_weight: 1.0, class_prompt: "a photo of dog",
                 num_class_images: 100, steps: 50, guidance_scale: null}

If ``DIR`` holds a set this module wrote, for that prompt, with at least N images, it is used as
is; otherwise N images are sampled with the backbone's own sampler before training starts (image
i seeded by (seed, i), adapters at their identity init, so the base model's output) and written as
prior shards (``prior: true``), with one rename.  A shard set written by someone else (e.g.
``python -m data_prep.dreambooth priors``) is never replaced: it is used as given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_dir
from ..core.seeding import derive_seed
from ..data.schema import ShardSetWriter, make_sample, read_manifest
from ..generation.sampler import SamplePrompt

SOURCE = "deft_omni.class_images"
log = logging.getLogger(__name__)


def _reusable(path: Path, prompt: str, count: int) -> bool:
    if not (path / "manifest.json").is_file():
        return False
    manifest = read_manifest(str(path))
    ours = manifest.get("source") == SOURCE
    if not ours:
        if manifest["total"] < count:
            log.warning("data.prior.path=%s holds %d class images (< num_class_images=%d); it was not written "
                        "by deft_omni, so it is used as given", path, manifest["total"], count)
        return True
    return manifest["options"].get("class_prompt") == prompt and manifest["total"] >= count


@torch.no_grad()
def ensure_class_images(backbone: Any, prior: dict, size: int, seed: int = 0) -> Path:
    """Make ``prior['path']`` hold the class images ``prior`` asks for (see the module docstring)."""
    path, prompt = Path(prior["path"]), str(prior["class_prompt"])
    count = int(prior.get("num_class_images", 100))
    if _reusable(path, prompt, count):
        return path
    steps = int(prior.get("steps", 50))
    defaults = backbone.generation_defaults(backbone.path)
    guidance = float(prior.get("guidance_scale") or defaults["guidance_scale"])
    log.info("generating %d class images of %r with the base model into %s", count, prompt, path)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    denoiser = backbone.denoiser
    was_training, home = denoiser.training, next(denoiser.parameters()).device
    denoiser.eval().to(device)
    backbone.move_frozen(device)
    options = {"class_prompt": prompt, "steps": steps, "guidance_scale": guidance, "size": size, "seed": seed,
               "model_path": backbone.path}
    try:
        with atomic_dir(path) as staging, ShardSetWriter(str(staging), source=SOURCE, options=options) as writer:
            for i in range(count):
                image_seed = derive_seed(seed, "class-image", i) % 2**31
                spec = SamplePrompt(prompt, height=size, width=size, seed=image_seed, guidance_scale=guidance)
                image = backbone.render_rows([spec], steps, size)[0][-1]
                writer.write(make_sample(f"class_{i:05d}", prompt, image, task="dreambooth_prior", prior=True,
                                         meta={"class_prompt": prompt, "seed": image_seed}))
    finally:
        denoiser.train(was_training).to(home)
        backbone.move_frozen(home)
    return path
