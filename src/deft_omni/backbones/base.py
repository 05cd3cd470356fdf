"""The backbone seam: what a family of diffusion models supplies to training and generation.

The training module holds one :class:`Backbone` and never asks which family it is.  A backbone
owns: loading (a local folder, or a named model such as ``tiny``), the trainable network
(``denoiser``: OmniGen's transformer, a UNet), the frozen parts (VAE, text encoders), how a batch
becomes conditions, the noise/target/loss, the deterministic validation loss, and the sampler
used for progress grids.  docs/backbones.md shows how to add one.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from .objective import FlowLossOutput, LossConfig


class Backbone(abc.ABC):
    """One loaded model family instance.  Subclasses register with :func:`register_backbone`."""

    #: registry name, also the value of ``model.family``
    family: ClassVar[str]
    #: names accepted in place of a folder (``model.path=tiny``) -> a function returning the folder
    named_models: ClassVar[Mapping[str, Callable[[], Path]]] = {}

    path: str  # the folder the weights came from
    denoiser: nn.Module  # trains (adapters are injected into it); the module registers it
    tokenizer: Any

    # ----------------------------------------------------------------------- loading
    @classmethod
    @abc.abstractmethod
    def recognises(cls, path: Path) -> bool:
        """Whether a local folder holds this family (from its config files only)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: str, *, torch_dtype: torch.dtype, gradient_checkpointing: bool = False,
             cache_latents: bool = False, quantize: str = "none") -> "Backbone":
        """Load from a resolved local folder; nothing is downloaded.  ``quantize``: the frozen
        base's weight storage (``model.quantize``; see :mod:`deft_omni.model.quantize`)."""

    @classmethod
    @abc.abstractmethod
    def max_image_side(cls, path: str) -> int:
        """The largest image side (pixels) the network takes, read from config files only, so
        settings can be checked before any weights load."""

    @classmethod
    def meta_denoiser(cls, path: str) -> Optional[nn.Module]:
        """The trainable network built on the meta device from config files (no memory, no
        weights), so adapter settings can be checked against its layers before anything loads;
        None when the family cannot (the check is then skipped)."""
        return None

    @classmethod
    def load_vae(cls, path: str) -> nn.Module:
        """The folder's frozen fp32 VAE alone (eval mode, on the CPU): what
        ``python -m deft_omni.encode_latents`` encodes with and what cached latents are checked
        against.  Families without one cannot cache latents."""
        raise NotImplementedError(f"model family {cls.family!r} has no VAE to cache latents with")
    # ------------------------------------------------------------------- commands
    #: ``python -m deft_omni.export``'s default layout (see :func:`deft_omni.interop.export_lora`)
    default_export_layout: ClassVar[str] = "diffusers"

    @classmethod
    def generation_defaults(cls, path: str) -> dict[str, Any]:
        """``python -m deft_omni.generate``'s defaults for this family (size, guidance, steps): the
        model's largest image side, at most 1024 px."""
        side = min(1024, cls.max_image_side(path) or 1024)
        return {"height": side, "width": side, "guidance_scale": 2.5, "steps": 50}

    @classmethod
    def run_generation(cls, settings: Any, jobs: Any = None, argv: Optional[list[str]] = None) -> list[Path]:
        """Make the images of a :class:`deft_omni.generation.runner.GenerationSettings` (PNG +
        sidecar each); the default is deft_omni's own OmniGen sampler."""
        from ..generation.runner import run_generation

        return run_generation(settings, jobs, argv=argv)

    # --------------------------------------------------------------------- the parts
    @abc.abstractmethod
    def frozen_modules(self) -> dict[str, nn.Module]:
        """Frozen, unregistered parts (never cast by precision plugins, never checkpointed)."""

    def move_frozen(self, device: torch.device) -> None:
        for module in self.frozen_modules().values():
            param = next(module.parameters(), None)
            if param is not None and param.device != device:
                module.to(device)

    # ------------------------------------------------------------------------- data
    @abc.abstractmethod
    def make_processor(self, *, max_image_side: int, cfg_dropout: float = 0.0, seed: int = 0,
                       prior_loss_weight: float = 1.0, bucket_sizes: Optional[Sequence] = None,
                       conditioners: Sequence[Any] = ()) -> Any:
        """The per-sample processor + collate the loaders use (``conditioners``: extension hooks)."""

    @abc.abstractmethod
    def batch_size_and_tokens(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        """(samples, sequence tokens) of a batch, for throughput logging."""

    # ------------------------------------------------------------------------- loss
    @abc.abstractmethod
    def training_loss(self, batch: Mapping[str, Any], cfg: LossConfig,
                      generator: Optional[torch.Generator]) -> FlowLossOutput:
        """The stochastic training loss of one batch; every draw from ``generator``."""

    @abc.abstractmethod
    def validation_loss(self, batch: Mapping[str, Any], cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, per-t) deterministic loss of one batch (no grad, eval-mode caller)."""

    # --------------------------------------------------------------------- sampling
    @abc.abstractmethod
    def render_rows(self, prompts: Sequence[Any], num_steps: int, max_image_side: int) -> list[list[Any]]:
        """One row of PIL images per prompt (its input images, then the sample), for grids."""
