"""OmniGen as a backbone: the transformer trains, the VAE is frozen, the loss is rectified flow.

Batches come as pixels (the VAE encodes them on the training device, as OmniGen's train.py does)
or as cached posteriors (``deft_omni.data.cached_latents``): then the VAE never runs in training
and never leaves the CPU, where the sample grids use it.  Both paths draw the posterior noise in
the same order from the step's generator, so they give the same loss."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..data import OmniGenTrainProcessor
from ..generation.sampler import SamplePrompt, generate_image, load_input_image, tensor_to_pil
from ..model import detect_layout, ensure_tiny_omnigen, load_omnigen, transformer_config_from_original
from ..model.latents import (
    LatentEncoder,
    draw_latent,
    input_image_cache_keys,
    omnigen_condition,
    scale_latents,
    vae_downsampling,
)
from ..model.vae_identity import vae_fingerprint
from .base import Backbone
from .named import world_base_folder
from .objective import (
    FlowLossOutput,
    LossConfig,
    flow_matching_loss,
    latent_weights,
    sample_t,
    validation_flow_loss,
)
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
        self._fingerprint: Optional[str] = None

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
             cache_latents: bool = False, quantize: str = "none") -> "OmniGenBackbone":
        from ..model.quantize import quantize_linears

        backbone = cls(load_omnigen(path, torch_dtype=torch_dtype), cache_latents=cache_latents)
        # On the loading device (CPU), before any adapter reads W0; the VAE is not touched.
        quantize_linears(backbone.denoiser, quantize)
        if gradient_checkpointing:
            backbone.denoiser.enable_gradient_checkpointing()
        return backbone

    @classmethod
    def load_vae(cls, path: str) -> nn.Module:
        from diffusers import AutoencoderKL

        folder = Path(path) / "vae"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder / 'config.json'} is missing: {path} holds no OmniGen VAE (SDXL's "
                                    "AutoencoderKL in vae/)")
        vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
        return vae.requires_grad_(False).eval()

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

    @classmethod
    def generation_defaults(cls, path: str) -> dict[str, Any]:
        """OmniGen's (1024 px capped to the model, 50 steps, guidance 2.5), or the sampler a
        model trained here stored beside its weights (``world.json``: the world base's 96 px, 16
        steps)."""
        defaults = super().generation_defaults(path)
        info = Path(path) / "world.json"
        if info.is_file():
            sampler = json.loads(info.read_text()).get("sampler", {})
            defaults.update({k: sampler[k] for k in ("height", "width", "guidance_scale", "steps") if k in sampler})
        return defaults

    @classmethod
    def meta_denoiser(cls, path: str) -> Optional[nn.Module]:
        from diffusers import OmniGenTransformer2DModel

        folder = Path(path)
        if detect_layout(folder) == "original":
            config = transformer_config_from_original(json.loads((folder / "config.json").read_text()))
        else:
            config = OmniGenTransformer2DModel.load_config(folder / "transformer")
        with torch.device("meta"):
            return OmniGenTransformer2DModel.from_config(config)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def move_frozen(self, device: torch.device) -> None:
        """Nothing moves here: the VAE follows the denoiser to the training device with the first
        batch of pixels (:meth:`encode_batch`), so a run on cached latents leaves it on the CPU."""

    def _device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    # ------------------------------------------------------------------------- data
    def make_processor(self, *, max_image_side: int, cfg_dropout: float = 0.0, seed: int = 0,
                       prior_loss_weight: float = 1.0, bucket_sizes: Optional[Sequence] = None,
                       conditioners: Sequence[Any] = ()) -> OmniGenTrainProcessor:
        return OmniGenTrainProcessor(self.tokenizer, max_image_side=max_image_side, cfg_dropout=cfg_dropout,
                                     seed=seed, prior_loss_weight=prior_loss_weight, bucket_sizes=bucket_sizes,
                                     conditioners=conditioners)

    def batch_size_and_tokens(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        bsz = len(batch["keys"])
        return bsz, bsz * (int(batch["input_ids"].shape[1]) + 1 + int(batch["num_output_tokens"]))

    # ------------------------------------------------------------------------- loss
    def encode_batch(self, batch: Mapping[str, Any], mode: str, generator: Optional[torch.Generator] = None
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(target latents (B,4,h,w), input-image latents [(1,4,h,w)...]) in fp32 on the training device:
        ``mean + std * eps`` (``mode="sample"``, eps from ``generator``: the output's, then each input's)
        or the mean, of the batch's cached posteriors or of the VAE's on its pixels."""
        device = self._device()
        if "output_latents" in batch:
            self._check_cached(batch)

            def draw(posterior: torch.Tensor) -> torch.Tensor:
                posterior = posterior.to(device=device, dtype=torch.float32)
                return scale_latents(self.vae, draw_latent(posterior[:, 0], posterior[:, 1], mode, generator))

            return draw(batch["output_latents"]), [draw(p) for p in batch["input_latents"]]
        Backbone.move_frozen(self, device)
        enc = self.latent_encoder
        x1 = enc.encode(self.vae, batch["output_images"].to(device), mode, generator,
                        cache_keys=[(k, "output") for k in batch["keys"]])
        inputs = [enc.encode(self.vae, img.to(device), mode, generator, cache_keys=[key])
                  for img, key in zip(batch["input_images"], input_image_cache_keys(batch))]
        return x1, inputs

    def _check_cached(self, batch: Mapping[str, Any]) -> None:
        """Latents of another VAE would train on the wrong targets without an error: refuse them."""
        if self._fingerprint is None:
            self._fingerprint = vae_fingerprint(self.vae)
        foreign = [v for v in batch["latents_vae"] if v != self._fingerprint]
        if foreign:
            raise ValueError(f"the batch of {list(batch['keys'])} carries latents cached with the VAE "
                             f"{foreign[0][:16]}, but this model's ({self.path}) VAE is {self._fingerprint[:16]}: "
                             "re-encode the shards with python -m deft_omni.encode_latents --model "
                             f"{self.path}, or train on the pixel shards")

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
        device = self._device()
        t = sample_t(len(batch["keys"]), cfg, generator, device)
        x1, inputs = self.encode_batch(batch, cfg.latent_mode, generator)
        noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        return flow_matching_loss(self.denoiser, x1, self._condition(batch, inputs, device), noise=noise, t=t,
                                  loss_weight=batch["loss_weight"].to(device),
                                  pixel_weights=self._pixel_weights(batch, cfg, device))

    @torch.no_grad()
    def validation_loss(self, batch: Mapping[str, Any], cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
        device = self._device()
        x1, inputs = self.encode_batch(batch, "mean")
        return validation_flow_loss(self.denoiser, x1, self._condition(batch, inputs, device), batch["keys"],
                                    cfg.val_t_grid, cfg.val_seed, loss_weight=batch["loss_weight"].to(device),
                                    pixel_weights=self._pixel_weights(batch, cfg, device))

    def _pixel_weights(self, batch: Mapping[str, Any], cfg: LossConfig, device: torch.device
                       ) -> Optional[torch.Tensor]:
        """Latent-grid loss weights from the batch's output masks (None: the plain loss)."""
        if not cfg.masked or "output_masks" not in batch:
            return None
        return latent_weights(batch["output_masks"].to(device), vae_downsampling(self.vae), cfg.background_weight,
                              cfg.mask_dilate)

    # --------------------------------------------------------------------- sampling
    @torch.no_grad()
    def render_rows(self, prompts: Sequence[SamplePrompt], num_steps: int, max_image_side: int) -> list[list[Any]]:
        processor = self.make_processor(max_image_side=max_image_side)
        rows = []
        for prompt in prompts:
            img = generate_image(self.denoiser, self.vae, processor, prompt, num_steps)
            inputs = [tensor_to_pil(load_input_image(im, processor, f"input_{i + 1}"))
                      for i, im in enumerate(prompt.input_images)]
            reference = [prompt.reference] if prompt.reference is not None else []
            rows.append([*inputs, tensor_to_pil(img), *reference])
        return rows

    def latent_factor(self) -> int:
        return vae_downsampling(self.vae)
