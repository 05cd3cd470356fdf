"""OmniGen model plumbing: loading (diffusers or original layout), checkpoint
conversion, a tiny offline model for tests, and module-name presets."""

from .convert import convert_original_state_dict, original_key_map, transformer_config_from_original
from .loading import (
    HUB_DIFFUSERS,
    HUB_ORIGINAL,
    OmniGenParts,
    OmniGenWeightsNotFound,
    default_omnigen_scheduler,
    detect_layout,
    load_omnigen,
    missing_files,
)
from .presets import ALL_BLOCK_LINEARS, ATTN_OUT, ATTN_QKV, MLP
from .tiny import (
    TINY_TRANSFORMER_CONFIG,
    TINY_VAE_CONFIG,
    TINY_VERSION,
    build_tiny_transformer,
    build_tiny_vae,
    default_cache_dir,
    ensure_tiny_omnigen,
    save_tiny_omnigen,
)
from .tiny_tokenizer import build_tiny_tokenizer

__all__ = [
    "ALL_BLOCK_LINEARS",
    "ATTN_OUT",
    "ATTN_QKV",
    "HUB_DIFFUSERS",
    "HUB_ORIGINAL",
    "MLP",
    "OmniGenParts",
    "OmniGenWeightsNotFound",
    "TINY_TRANSFORMER_CONFIG",
    "TINY_VAE_CONFIG",
    "TINY_VERSION",
    "build_tiny_tokenizer",
    "build_tiny_transformer",
    "build_tiny_vae",
    "convert_original_state_dict",
    "default_cache_dir",
    "default_omnigen_scheduler",
    "detect_layout",
    "ensure_tiny_omnigen",
    "load_omnigen",
    "missing_files",
    "original_key_map",
    "save_tiny_omnigen",
    "transformer_config_from_original",
]
