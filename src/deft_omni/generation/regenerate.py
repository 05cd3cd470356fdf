"""``--from-sidecar``: rebuild the settings of one generated image from its JSON sidecar.

The adapter weights and input images are checked against the recorded sha256 and the base model
against its recorded identity, so a changed file is reported instead of giving another image.
The image is made alone (batch size 1); one made in a larger batch comes back equal up to the
float rounding of the batched matmuls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .adapters_spec import AdapterSpec, file_sha256
from .errors import GenerationError
from .prompts import PromptSpec
from .runner import GenerationSettings, Job
from .sidecar import read_sidecar


def _check_hash(path: Path, expected: str, what: str, sidecar: Path) -> None:
    if not path.is_file():
        raise GenerationError(f"{sidecar}: {what} {path} no longer exists")
    if file_sha256(path) != expected:
        raise GenerationError(f"{sidecar}: {what} {path} changed since the image was made (sha256 differs); "
                              f"restore the original file")


def settings_from_sidecar(path: Path, out: Path, model: Optional[str] = None, device: Optional[str] = None,
                          progress: bool = True) -> tuple[GenerationSettings, Job]:
    """(settings, the one job) that remake the image described by sidecar ``path`` into ``out``."""
    path = Path(path).expanduser()
    data: dict[str, Any] = read_sidecar(path)
    prompt = data["prompt"]
    images = [Path(rec["path"]) for rec in prompt["input_images"]]
    for rec, img in zip(prompt["input_images"], images):
        _check_hash(img, rec["sha256"], "input image", path)
    adapters = []
    for rec in data["adapters"]:
        spec = AdapterSpec(Path(rec["path"]), rec["weight"], rec["name"])
        _check_hash(spec.path / "adapter_model.safetensors", rec["sha256"], "adapter weights", path)
        adapters.append(spec)
    recorded = data["model"]
    # A named model (tiny, world) is asked for by name again: its cache folder may have moved.
    named = recorded.get("named", recorded.get("name") == "tiny")
    model_arg = model or (recorded["name"] if named else recorded["path"])
    spec = PromptSpec(instruction=prompt["instruction"], input_images=images, height=data["height"],
                      width=data["width"], seed=data["seed"], guidance_scale=data["guidance_scale"],
                      img_guidance_scale=data["img_guidance_scale"], negative_prompt=prompt["negative_prompt"],
                      source=str(path))
    settings = GenerationSettings(
        model=model_arg, prompts=[spec], out=out, adapters=adapters, merge=data["merge"], steps=data["steps"],
        seed=data["base_seed"], batch_size=1, dtype=data["dtype"], device=device or data["device"],
        use_img_cfg=data["use_img_cfg"], max_input_image_side=data["max_input_image_side"], grid=False,
        progress=progress, expected_model=recorded)
    return settings, Job(index=data["index"], stem=Path(data["file"]).stem, prompt=spec)
