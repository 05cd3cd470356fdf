"""Stable Diffusion 1.5 and XL as backbones (families ``sd15`` and ``sdxl``): DreamBooth-style
training of adapters on the UNet (and optionally the text encoders), as diffusers'
``train_dreambooth_lora(_sdxl).py`` does, inside deft_omni's one training loop.

* parts: :mod:`.sd_family` (local diffusers folder; the trained :class:`~.sd_family.SDNetworks`);
* data: :mod:`.sd_data` (prompt + centre crop + SDXL micro-conditioning);
* loss: :mod:`.sd_objective` (epsilon / v / sample targets, Min-SNR-gamma, noise offset);
* prompts: encoded by diffusers' own pipeline (``encode_prompt``: SDXL's penultimate hidden states
  of both encoders and the pooled projection), cached per prompt while the text encoders train
  nothing;
* samples: diffusers' own pipelines with the folder's scheduler (:meth:`render_rows`, and
  ``python -m deft_omni.generate`` through :mod:`.sd_generation`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from ..generation.sampler import decode_latents, tensor_to_pil
from ..model.latents import LatentEncoder, base_dtype, vae_downsampling
from .base import Backbone
from .objective import FlowLossOutput, LossConfig
from .registry import register_backbone
from .sd_data import SDTrainProcessor
from .sd_family import SD15, SDXL, SDFamily, load_parts, make_pipeline, read_index, scheduler_from_config
from .sd_objective import micro_conditions, training_ddpm_loss, validation_ddpm_loss
from .sd_tiny import ensure_tiny_sd15, ensure_tiny_sdxl

PROMPT_CACHE_SIZE = 4096


def _unet_config(path: str) -> dict:
    return json.loads((Path(path) / "unet" / "config.json").read_text())


def _vae_factor(path: str) -> int:
    return 2 ** (len(json.loads((Path(path) / "vae" / "config.json").read_text())["block_out_channels"]) - 1)


class StableDiffusionBackbone(Backbone):
    """Shared by SD1.5 and SDXL; a subclass names its :class:`~.sd_family.SDFamily`."""

    sd: ClassVar[SDFamily]
    default_export_layout = "pipeline"

    def __init__(self, parts: Any, cache_latents: bool = False) -> None:
        from diffusers import DDPMScheduler

        self.parts = parts
        self.path = str(parts.path)
        self.denoiser: nn.Module = parts.networks
        self.unet = parts.networks.unet
        self.vae = parts.vae.requires_grad_(False).eval()
        self.tokenizers = list(parts.tokenizers)
        self.tokenizer = self.tokenizers[0]
        # Training noise follows the DDPM schedule of the folder's scheduler config (as diffusers'
        # scripts: DDPMScheduler.from_pretrained(..., subfolder="scheduler")).
        self.noise_scheduler = DDPMScheduler.from_config(parts.scheduler_config)
        self.latent_encoder = LatentEncoder(cache=cache_latents)
        self._prompt_cache: dict[tuple, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self._pipe = None

    # ----------------------------------------------------------------------- loading
    @classmethod
    def recognises(cls, path: Path) -> bool:
        index = read_index(path)
        return bool(index) and index.get("_class_name") == cls.sd.pipeline_class

    @classmethod
    def load(cls, path: str, *, torch_dtype: torch.dtype, gradient_checkpointing: bool = False,
             cache_latents: bool = False, quantize: str = "none") -> "StableDiffusionBackbone":
        from ..model.quantize import quantize_linears

        backbone = cls(load_parts(Path(path), cls.sd, torch_dtype=torch_dtype), cache_latents=cache_latents)
        quantize_linears(backbone.denoiser, quantize)  # the UNet's frozen linears; convolutions stay as loaded
        if gradient_checkpointing:
            backbone.denoiser.enable_gradient_checkpointing()
        return backbone

    @classmethod
    def native_image_side(cls, path: str) -> int:
        return int(_unet_config(path)["sample_size"]) * _vae_factor(path)

    @classmethod
    def max_image_side(cls, path: str) -> int:
        # A UNet has no position table; twice its native side is where SD images fall apart.
        return 2 * cls.native_image_side(path)

    @classmethod
    def generation_defaults(cls, path: str) -> dict[str, Any]:
        side = cls.native_image_side(path)
        return {"height": side, "width": side, "guidance_scale": cls.sd.guidance_scale, "steps": 50}

    @classmethod
    def run_generation(cls, settings: Any, jobs: Any = None, argv: Optional[list[str]] = None) -> list[Path]:
        from .sd_generation import run_sd_generation

        return run_sd_generation(cls, settings, jobs, argv)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the UNet's downsampling."""
        return vae_downsampling(self.vae) * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def pipeline(self):
        """diffusers' pipeline around the trained modules (built once; a fresh scheduler per use)."""
        if self._pipe is None:
            self._pipe = make_pipeline(self.sd, self.denoiser, self.vae, self.tokenizers,
                                       scheduler_from_config(self.parts.scheduler_config))
        return self._pipe

    # ------------------------------------------------------------------------- data
    def make_processor(self, *, max_image_side: int, cfg_dropout: float = 0.0, seed: int = 0,
                       prior_loss_weight: float = 1.0, bucket_sizes: Optional[Sequence] = None,
                       conditioners: Sequence[Any] = ()) -> SDTrainProcessor:
        if conditioners:
            names = ", ".join(getattr(c, "name", type(c).__name__) for c in conditioners)
            raise ValueError(f"extension conditioner(s) {names} need OmniGen's token sequence; the {self.family} "
                             f"backbone takes none (camera=none)")
        return SDTrainProcessor(max_image_side, self.size_multiple, cfg_dropout=cfg_dropout, seed=seed,
                                prior_loss_weight=prior_loss_weight, bucket_sizes=bucket_sizes)

    def batch_size_and_tokens(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        bsz, _, height, width = batch["output_images"].shape
        down = vae_downsampling(self.vae)
        return int(bsz), int(bsz) * (height // down) * (width // down)

    # ------------------------------------------------------------------------ prompts
    def _text_encoders_train(self) -> bool:
        return any(p.requires_grad for te in self.denoiser.text_encoders() for p in te.parameters())

    def _encode(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        out = self.pipeline().encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                            do_classifier_free_guidance=False)
        return (out[0], out[2]) if self.sd.micro_conditioning else (out[0], None)

    def encode_prompts(self, prompts: Sequence[str], device: torch.device
                       ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, 77, D) text states and SDXL's (B, P) pooled embeds; cached per prompt unless a text
        encoder carries trainable weights."""
        prompts = list(prompts)
        if self._text_encoders_train():
            return self._encode(prompts, device)
        dtype = base_dtype(self.denoiser.text_encoders()[0])
        todo = sorted({p for p in prompts if (p, str(device), dtype) not in self._prompt_cache})
        if todo:
            if len(self._prompt_cache) + len(todo) > PROMPT_CACHE_SIZE:
                self._prompt_cache.clear()
            with torch.no_grad():
                states, pooled = self._encode(todo, device)
            for i, p in enumerate(todo):
                self._prompt_cache[(p, str(device), dtype)] = (states[i], None if pooled is None else pooled[i])
        rows = [self._prompt_cache[(p, str(device), dtype)] for p in prompts]
        states = torch.stack([r[0] for r in rows])
        return states, (torch.stack([r[1] for r in rows]) if self.sd.micro_conditioning else None)

    def _predictor(self, batch: Mapping[str, Any], device: torch.device):
        dtype = base_dtype(self.unet)
        states, pooled = self.encode_prompts(batch["prompts"], device)
        kwargs: dict[str, Any] = {"encoder_hidden_states": states.to(dtype)}
        if self.sd.micro_conditioning:
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(dtype),
                                           "time_ids": micro_conditions(batch).to(device=device, dtype=dtype)}

        def predict(noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            return self.unet(noisy.to(dtype), timesteps, return_dict=False, **kwargs)[0]

        return predict

    # ------------------------------------------------------------------------- loss
    def _latents(self, batch: Mapping[str, Any], mode: str, generator: Optional[torch.Generator]) -> torch.Tensor:
        device = next(self.vae.parameters()).device
        return self.latent_encoder.encode(self.vae, batch["output_images"].to(device), mode, generator,
                                          cache_keys=[(k, "output") for k in batch["keys"]])

    def training_loss(self, batch: Mapping[str, Any], cfg: LossConfig,
                      generator: Optional[torch.Generator]) -> FlowLossOutput:
        x0 = self._latents(batch, cfg.latent_mode, generator)
        return training_ddpm_loss(self._predictor(batch, x0.device), self.noise_scheduler, x0, cfg, generator,
                                  loss_weight=batch["loss_weight"].to(x0.device))

    @torch.no_grad()
    def validation_loss(self, batch: Mapping[str, Any], cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self._latents(batch, "mean", None)
        return validation_ddpm_loss(self._predictor(batch, x0.device), self.noise_scheduler, x0, batch["keys"], cfg,
                                    loss_weight=batch["loss_weight"].to(x0.device))

    # --------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, prompt: Any, num_steps: int):
        """One PIL image of a :class:`~deft_omni.generation.sampler.SamplePrompt` (text only)."""
        if prompt.input_images:
            raise ValueError(f"prompt {prompt.instruction!r} has input images; the {self.family} backbone is "
                             "text-to-image")
        pipe = self.pipeline()
        pipe.scheduler = scheduler_from_config(self.parts.scheduler_config)
        latents = pipe(prompt.instruction, height=prompt.height, width=prompt.width, num_inference_steps=num_steps,
                       guidance_scale=prompt.guidance_scale, negative_prompt=prompt.negative_prompt,
                       generator=torch.Generator().manual_seed(int(prompt.seed)), output_type="latent").images
        # The pipelines do not cast latents to the VAE's dtype: decode with the fp32 VAE here.
        return tensor_to_pil(decode_latents(self.vae, latents.float())[0])

    def render_rows(self, prompts: Sequence[Any], num_steps: int, max_image_side: int) -> list[list[Any]]:
        return [[self.sample(p, num_steps)] for p in prompts]


@register_backbone
class SD15Backbone(StableDiffusionBackbone):
    """Stable Diffusion 1.5 (``StableDiffusionPipeline``; one CLIP text encoder)."""

    family = "sd15"
    sd = SD15
    named_models = {"tiny": ensure_tiny_sd15, "tiny-sd15": ensure_tiny_sd15}


@register_backbone
class SDXLBackbone(StableDiffusionBackbone):
    """Stable Diffusion XL (``StableDiffusionXLPipeline``; two text encoders, micro-conditioning)."""

    family = "sdxl"
    sd = SDXL
    named_models = {"tiny": ensure_tiny_sdxl, "tiny-sdxl": ensure_tiny_sdxl}
