"""Backbones: model families behind one seam (see :mod:`.base`): OmniGen, Stable Diffusion 1.5 and XL."""

from .base import Backbone
from .named import NamedModelError, world_base_folder
from .objective import (
    DEFAULT_VAL_T_GRID,
    FlowLossOutput,
    LossConfig,
    flow_matching_loss,
    interpolate,
    key_noise,
    per_sample_mse,
    sample_t,
    validation_flow_loss,
    weighted_batch_mean,
)
from .registry import (
    backbone_class,
    families,
    is_named_model,
    load_backbone,
    max_image_side,
    meta_denoiser,
    register_backbone,
    resolve_model,
)
from .omnigen import OmniGenBackbone  # noqa: E402 - registers itself (first: the default family)
from .stable_diffusion import SD15Backbone, SDXLBackbone, StableDiffusionBackbone  # noqa: E402

__all__ = [
    "DEFAULT_VAL_T_GRID",
    "Backbone",
    "FlowLossOutput",
    "LossConfig",
    "NamedModelError",
    "OmniGenBackbone",
    "SD15Backbone",
    "SDXLBackbone",
    "StableDiffusionBackbone",
    "backbone_class",
    "families",
    "flow_matching_loss",
    "interpolate",
    "is_named_model",
    "key_noise",
    "load_backbone",
    "max_image_side",
    "meta_denoiser",
    "per_sample_mse",
    "register_backbone",
    "resolve_model",
    "sample_t",
    "validation_flow_loss",
    "weighted_batch_mean",
    "world_base_folder",
]
