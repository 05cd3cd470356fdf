"""Stable Diffusion 1.5 and XL folders: what each family holds, the checks, and loading the parts.

A folder is diffusers' layout (``model_index.json`` + ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``; SDXL adds ``text_encoder_2/`` and ``tokenizer_2/``), as
``huggingface-cli download <repo> --local-dir DIR`` writes it.  Nothing is downloaded; only
safetensors weights are read.  The trained network is :class:`SDNetworks`: the UNet and the text
encoders under the names diffusers' LoRA files use (``unet.``, ``text_encoder.``,
``text_encoder_2.``), so a text-encoder target is one regex away and an export maps one to one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"),
    "text_encoder": ("model.safetensors", "model.fp16.safetensors"),
    "text_encoder_2": ("model.safetensors", "model.fp16.safetensors"),
}


@dataclass(frozen=True)
class SDFamily:
    """What distinguishes SD1.5 from SDXL."""

    name: str
    pipeline_class: str  # diffusers' pipeline, also model_index.json's _class_name
    hub_repo: str
    text_encoders: tuple[str, ...]  # component names, in the pipeline's order
    tokenizers: tuple[str, ...]
    guidance_scale: float  # the pipeline's default
    micro_conditioning: bool  # SDXL's add_time_ids and pooled text embeds

    def pipeline_cls(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)


SD15 = SDFamily("sd15", "StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                ("text_encoder",), ("tokenizer",), 7.5, False)
SDXL = SDFamily("sdxl", "StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0",
                ("text_encoder", "text_encoder_2"), ("tokenizer", "tokenizer_2"), 5.0, True)


class SDWeightsNotFound(FileNotFoundError):
    """A Stable Diffusion folder lacks a file (the message names it and the hub repo)."""


def read_index(path: Path) -> Optional[dict]:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text())
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def missing_files(path: Path, family: SDFamily) -> list[str]:
    """Relative paths the folder lacks (a weights file counts when any of its variants is there)."""
    path = Path(path)
    missing = [] if (path / "model_index.json").is_file() else ["model_index.json"]
    for part in ("unet", "vae", *family.text_encoders):
        if not (path / part / "config.json").is_file():
            missing.append(f"{part}/config.json")
        if not any((path / part / name).is_file() for name in WEIGHT_FILES[part]):
            missing.append(f"{part}/{WEIGHT_FILES[part][0]}")
    for tok in family.tokenizers:
        folder = path / tok
        if not ((folder / "tokenizer.json").is_file() or
                ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
            missing.append(f"{tok}/vocab.json + merges.txt (or tokenizer.json)")
    if not (path / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    return missing


def check_folder(path: Path, family: SDFamily) -> None:
    missing = missing_files(path, family)
    if missing:
        raise SDWeightsNotFound(
            f"{family.name} folder {path} lacks {', '.join(missing)}. Download the diffusers layout with "
            f"`huggingface-cli download {family.hub_repo} --local-dir {path}` (safetensors files only are read; "
            f"nothing is downloaded here)")


def _variant(folder: Path, part: str) -> Optional[str]:
    """'fp16' when only the fp16 weights file of a part is present (hub snapshots often hold only it)."""
    plain, fp16 = WEIGHT_FILES[part]
    return "fp16" if not (folder / part / plain).is_file() and (folder / part / fp16).is_file() else None


class SDNetworks(nn.Module):
    """The UNet and the text encoders, as one module: adapters are injected here, and its child
    names are diffusers' LoRA-file prefixes (``unet``, ``text_encoder``, ``text_encoder_2``)."""

    def __init__(self, unet: nn.Module, text_encoders: dict[str, nn.Module]) -> None:
        super().__init__()
        self.unet = unet
        for name, module in text_encoders.items():
            self.add_module(name, module)
        self.text_encoder_names = tuple(text_encoders)

    @property
    def config(self):
        return self.unet.config

    def text_encoders(self) -> list[nn.Module]:
        return [getattr(self, n) for n in self.text_encoder_names]

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()


@dataclass
class SDParts:
    family: SDFamily
    path: Path
    networks: SDNetworks
    vae: nn.Module
    tokenizers: list[Any]
    scheduler_config: dict  # the folder's inference scheduler (class name in '_class_name')


def load_parts(path: Path, family: SDFamily, torch_dtype: torch.dtype = torch.float32,
               device: Optional[str] = None) -> SDParts:
    """Every part, from local files only; the VAE stays fp32 (SDXL's overflows in fp16)."""
    import diffusers
    import transformers

    path = Path(path)
    check_folder(path, family)
    index = read_index(path) or {}
    common = {"local_files_only": True, "use_safetensors": True}
    unet = diffusers.UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype,
                                                          variant=_variant(path, "unet"), **common)
    vae = diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32,
                                                  variant=_variant(path, "vae"), **common)
    encoders = {}
    for name in family.text_encoders:
        cls_name = (index.get(name) or [None, "CLIPTextModel"])[1]
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            raise SDWeightsNotFound(f"{path / 'model_index.json'}: {name} class {cls_name!r} is not in transformers")
        encoders[name] = cls.from_pretrained(path, subfolder=name, torch_dtype=torch_dtype,
                                             variant=_variant(path, name), **common)
    tokenizers = [transformers.CLIPTokenizer.from_pretrained(path, subfolder=t, local_files_only=True)
                  for t in family.tokenizers]
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    networks = SDNetworks(unet, encoders).eval().requires_grad_(False)
    vae = vae.eval().requires_grad_(False)
    if device is not None:
        networks.to(device)
        vae.to(device)
    return SDParts(family, path, networks, vae, tokenizers, scheduler)


def scheduler_from_config(config: dict, cls_name: Optional[str] = None):
    """A fresh scheduler (they are stateful) of ``cls_name`` (default: the config's own class)."""
    import diffusers

    name = cls_name or config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"scheduler class {name!r} (scheduler/scheduler_config.json) is not in diffusers")
    return cls.from_config(config)


def make_pipeline(parts_family: SDFamily, networks: SDNetworks, vae: nn.Module, tokenizers: list[Any],
                  scheduler: Any):
    """diffusers' own pipeline around these modules (no copies): what samples and encodes prompts."""
    kwargs: dict[str, Any] = {"vae": vae, "unet": networks.unet, "scheduler": scheduler}
    for name, tok in zip(parts_family.tokenizers, tokenizers):
        kwargs[name] = tok
    for name in parts_family.text_encoders:
        kwargs[name] = getattr(networks, name)
    if parts_family.micro_conditioning:
        kwargs["add_watermarker"] = False
    else:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = parts_family.pipeline_cls()(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
