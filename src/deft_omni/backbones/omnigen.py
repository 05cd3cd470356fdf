"""OmniGen as a backbone: the transformer trains, the VAE is frozen, the loss is rectified flow."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..data import OmniGenTrainProcessor
from ..generation.sampler import SamplePrompt, generate_image, load_input_image, tensor_to_pil
from ..model import detect_layout, ensure_tiny_omnigen, load_omnigen
from ..model.latents import LatentEncoder, input_image_cache_keys, omnigen_condition, vae_downsampling
from .base import Backbone
from .named import world_base_folder
from .objective import FlowLossOutput, LossConfig, flow_matching_loss, sample_t, validation_flow_loss
from .registry import register_backbone


def _pos_embed_side_original(path: Path) -> int:
    """Patches per side of the original layout's position table, from the weights' header only."""
    weights = path / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            if "pos_embed" in fh.keys():
                return int(round(fh.get_slice("pos_embed").get_shape()[1] ** 0.5))
    return 192  # OmniGen-v1's


@register_backbone
class OmniGenBackbone(Backbone):
    """OmniGen-v1 (diffusers' ``OmniGenTransformer2DModel`` + SDXL's ``AutoencoderKL``)."""

    family = "omnigen"
    named_models = {"tiny": ensure_tiny_omnigen, "world": world_base_folder}

    def __init__(self, parts: Any, cache_latents: bool = False) -> None:
        self.parts = parts
        self.path = str(parts.path)
        self.denoiser: nn.Module = parts.transformer
        self.vae = parts.vae.requires_grad_(False).eval()
        self.tokenizer = parts.tokenizer
        self.scheduler = parts.scheduler
        self.latent_encoder = LatentEncoder(cache=cache_latents)

    # ----------------------------------------------------------------------- loading
    @classmethod
    def recognises(cls, path: Path) -> bool:
        index = path / "model_index.json"
        if index.is_file():
            try:
                return json.loads(index.read_text()).get("_class_name") == "OmniGenPipeline"
            except ValueError:
                return False
        return detect_layout(path) is not None

    @classmethod
    def load(cls, path: str, *, torch_dtype: torch.dtype, gradient_checkpointing: bool = False,
             cache_latents: bool = False) -> "OmniGenBackbone":
        backbone = cls(load_omnigen(path, torch_dtype=torch_dtype), cache_latents=cache_latents)
        if gradient_checkpointing:
            backbone.denoiser.enable_gradient_checkpointing()
        return backbone

    @classmethod
    def max_image_side(cls, path: str) -> int:
        folder = Path(path)
        if detect_layout(folder) == "original":
            side, patch = _pos_embed_side_original(folder), 2
        else:
            config = json.loads((folder / "transformer" / "config.json").read_text())
            side, patch = int(config["pos_embed_max_size"]), int(config.get("patch_size", 2))
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return side * patch * 2 ** (len(vae["block_out_channels"]) - 1)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    # ------------------------------------------------------------------------- data
    def make_processor(self, *, max_image_side: int, cfg_dropout: float = 0.0, seed: int = 0,
                       prior_loss_weight: float = 1.0, bucket_sizes: Optional[Sequence] = None,
                       conditioners: Sequence[Any] = ()) -> OmniGenTrainProcessor:
        return OmniGenTrainProcessor(self.tokenizer, max_image_side=max_image_side, cfg_dropout=cfg_dropout,
                                     seed=seed, prior_loss_weight=prior_loss_weight, bucket_sizes=bucket_sizes,
                                     conditioners=conditioners)

    def batch_size_and_tokens(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        bsz = int(batch["output_images"].shape[0])
        return bsz, bsz * (int(batch["input_ids"].shape[1]) + 1 + int(batch["num_output_tokens"]))

    # ------------------------------------------------------------------------- loss
    def encode_batch(self, batch: Mapping[str, Any], mode: str, generator: Optional[torch.Generator] = None
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(target latents (B,4,h,w), input-image latents [(1,4,h,w)...]) in fp32 on the VAE's device."""
        device = next(self.vae.parameters()).device
        enc = self.latent_encoder
        x1 = enc.encode(self.vae, batch["output_images"].to(device), mode, generator,
                        cache_keys=[(k, "output") for k in batch["keys"]])
        inputs = [enc.encode(self.vae, img.to(device), mode, generator, cache_keys=[key])
                  for img, key in zip(batch["input_images"], input_image_cache_keys(batch))]
        return x1, inputs

    def _condition(self, batch: Mapping[str, Any], inputs: list[torch.Tensor], device: torch.device) -> dict:
        cond = omnigen_condition(batch, inputs)
        for key in ("input_ids", "attention_mask", "position_ids"):
            cond[key] = cond[key].to(device)
        return cond

    def training_loss(self, batch: Mapping[str, Any], cfg: LossConfig,
                      generator: Optional[torch.Generator]) -> FlowLossOutput:
        if cfg.ddpm_only():
            raise ValueError(f"{', '.join(cfg.ddpm_only())}: DDPM settings (sd15, sdxl); OmniGen trains rectified "
                             "flow: remove them")
        device = next(self.vae.parameters()).device
        t = sample_t(int(batch["output_images"].shape[0]), cfg, generator, device)
        x1, inputs = self.encode_batch(batch, cfg.latent_mode, generator)
        noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        return flow_matching_loss(self.denoiser, x1, self._condition(batch, inputs, device), noise=noise, t=t,
                                  loss_weight=batch["loss_weight"].to(device))

    @torch.no_grad()
    def validation_loss(self, batch: Mapping[str, Any], cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.vae.parameters()).device
        x1, inputs = self.encode_batch(batch, "mean")
        return validation_flow_loss(self.denoiser, x1, self._condition(batch, inputs, device), batch["keys"],
                                    cfg.val_t_grid, cfg.val_seed, loss_weight=batch["loss_weight"].to(device))

    # --------------------------------------------------------------------- sampling
    @torch.no_grad()
    def render_rows(self, prompts: Sequence[SamplePrompt], num_steps: int, max_image_side: int) -> list[list[Any]]:
        processor = self.make_processor(max_image_side=max_image_side)
        rows = []
        for prompt in prompts:
            img = generate_image(self.denoiser, self.vae, processor, prompt, num_steps)
            inputs = [tensor_to_pil(load_input_image(im, processor, f"input_{i + 1}"))
                      for i, im in enumerate(prompt.input_images)]
            rows.append([*inputs, tensor_to_pil(img)])
        return rows

    def latent_factor(self) -> int:
        return vae_downsampling(self.vae)
