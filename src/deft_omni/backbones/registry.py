"""Backbone registry: family names -> classes; model paths and names -> a loaded backbone.

Named models (``tiny``, ``world``) are resolved here, once, for every CLI and config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from ..core.dtypes import resolve_dtype
from ..model.quantize import check_mode
from .base import Backbone

_FAMILIES: dict[str, type[Backbone]] = {}


def register_backbone(cls: type[Backbone]) -> type[Backbone]:
    """Class decorator: make ``cls.family`` loadable by name."""
    _FAMILIES[cls.family] = cls
    return cls


def families() -> list[str]:
    return sorted(_FAMILIES)


def backbone_class(family: str) -> type[Backbone]:
    if family not in _FAMILIES:
        raise ValueError(f"model.family={family!r} is unknown; choose one of {families()}")
    return _FAMILIES[family]


def is_named_model(value: Optional[str], family: Optional[str] = None) -> bool:
    value = "tiny" if value in (None, "") else str(value)
    classes = [backbone_class(family)] if family else list(_FAMILIES.values())
    return any(value in cls.named_models for cls in classes)


def resolve_model(value: Optional[str], family: Optional[str] = None) -> tuple[type[Backbone], Path]:
    """(backbone class, local folder) for ``model.path`` (a folder or a named model) and an
    optional ``model.family`` (detected from the folder when None)."""
    value = "tiny" if value in (None, "") else str(value)
    if family is not None:
        cls = backbone_class(family)
        if value in cls.named_models:
            return cls, cls.named_models[value]()
        return cls, Path(value)
    for cls in _FAMILIES.values():
        if value in cls.named_models:
            return cls, cls.named_models[value]()
    path = Path(value)
    if not path.exists():
        names = sorted({n for c in _FAMILIES.values() for n in c.named_models})
        raise FileNotFoundError(f"model path {value!r} does not exist and is not a named model ({', '.join(names)})")
    for cls in _FAMILIES.values():
        if cls.recognises(path):
            return cls, path
    # An incomplete folder: let the default family's loader name the missing files.
    return _FAMILIES["omnigen"], path


def load_backbone(path: Optional[str] = None, family: Optional[str] = None,
                  torch_dtype: Union[str, torch.dtype] = "float32", gradient_checkpointing: bool = False,
                  cache_latents: bool = False, quantize: Optional[str] = None) -> Backbone:
    cls, folder = resolve_model(path, family)
    return cls.load(str(folder), torch_dtype=resolve_dtype(torch_dtype), gradient_checkpointing=gradient_checkpointing,
                    cache_latents=cache_latents, quantize=check_mode(quantize))


def meta_denoiser(path: Optional[str] = None, family: Optional[str] = None):
    cls, folder = resolve_model(path, family)
    return cls.meta_denoiser(str(folder))


def max_image_side(path: Optional[str] = None, family: Optional[str] = None) -> int:
    cls, folder = resolve_model(path, family)
    return cls.max_image_side(str(folder))
