"""Load the metric models (CLIP, DINO, DINOv2, a depth model) from a local folder or a hub id.

A local folder is read with ``local_files_only=True`` so a typo never turns into a
download attempt; anything else is treated as a hub id and goes through transformers'
usual resolution (it works for a user with internet or a filled cache). Image
processors are the PIL/numpy ones (``backend="pil"``): the torchvision-backed "fast"
processors cannot run where torchvision does not import.

Typical sources: CLIP ViT-L/14 ``openai/clip-vit-large-patch14`` (CLIP-I, CLIP-T and
the LAION aesthetic head), DINOv1 ``facebook/dino-vits16`` (a ``ViTModel``), DINOv2
``facebook/dinov2-base``, depth ``depth-anything/Depth-Anything-V2-Small-hf`` or
``Intel/dpt-large``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


class MetricModelError(RuntimeError):
    """A metric model could not be loaded; the message names the flag, the path and the fix."""


@dataclass
class LoadedModel:
    model: Any
    image_processor: Any
    tokenizer: Any | None
    source: str


def _check_source(source: str, flag: str, example: str) -> tuple[str, bool]:
    """(resolved source, local_files_only). A path that looks local but is missing fails here."""
    if not source:
        raise MetricModelError(f"{flag}: empty model path; pass a local folder or a hub id such as {example}")
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise MetricModelError(f"{flag} {source!r}: the folder has no config.json; pass the folder written by "
                                   f"save_pretrained (or snapshot_download of {example})")
        return expanded, True
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise MetricModelError(f"{flag} {source!r}: no such folder; pass a local folder holding config.json + "
                               f"weights, or a hub id such as {example} (needs internet or the HF cache)")
    return source, False


def _wrap_load(flag: str, source: str, example: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, KeyError) as exn:
        raise MetricModelError(f"{flag} {source!r}: cannot load it ({type(exn).__name__}: {exn}); pass a local "
                               f"folder from save_pretrained / snapshot_download of {example}, or a hub id "
                               "reachable from here") from exn


def _image_processor(path: str, local: bool, flag: str, example: str):
    from transformers import AutoImageProcessor

    return _wrap_load(flag, path, example, AutoImageProcessor.from_pretrained, path, local_files_only=local,
                      backend="pil")


def _finish(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    model.eval().requires_grad_(False)
    return model.to(device)


def load_clip(source: str, device: str | torch.device = "cpu", flag: str = "--clip") -> LoadedModel:
    """A transformers ``CLIPModel`` with its tokenizer and (PIL) image processor."""
    from transformers import AutoTokenizer, CLIPModel

    example = "openai/clip-vit-large-patch14"
    path, local = _check_source(source, flag, example)
    model = _wrap_load(flag, source, example, CLIPModel.from_pretrained, path, local_files_only=local)
    tokenizer = _wrap_load(flag, source, example, AutoTokenizer.from_pretrained, path, local_files_only=local)
    proc = _image_processor(path, local, flag, example)
    return LoadedModel(_finish(model, device), proc, tokenizer, source)


def load_vision_backbone(source: str, device: str | torch.device = "cpu", flag: str = "--dino") -> LoadedModel:
    """A ViT-style backbone (DINOv1 ``ViTModel``, ``Dinov2Model``) whose CLS token is the embedding."""
    from transformers import AutoConfig, AutoModel, ViTModel

    example = "facebook/dinov2-base" if "v2" in flag else "facebook/dino-vits16"
    path, local = _check_source(source, flag, example)
    config = _wrap_load(flag, source, example, AutoConfig.from_pretrained, path, local_files_only=local)
    model_type = getattr(config, "model_type", "?")
    if model_type == "vit":  # DINOv1 checkpoints carry no pooler; only the CLS token is used anyway
        model = _wrap_load(flag, source, example, ViTModel.from_pretrained, path, local_files_only=local,
                           add_pooling_layer=False)
    elif model_type in ("dinov2", "dinov2_with_registers"):
        model = _wrap_load(flag, source, example, AutoModel.from_pretrained, path, local_files_only=local)
    else:
        raise MetricModelError(f"{flag} {source!r}: expected a ViTModel (DINOv1) or Dinov2Model checkpoint, got "
                               f"model_type {model_type!r}")
    proc = _image_processor(path, local, flag, example)
    return LoadedModel(_finish(model, device), proc, None, source)


def load_depth_model(source: str, device: str | torch.device = "cpu", flag: str = "--depth-model") -> LoadedModel:
    """A transformers depth estimator (DPT, Depth Anything, ...) predicting relative depth/disparity."""
    from transformers import AutoModelForDepthEstimation

    example = "depth-anything/Depth-Anything-V2-Small-hf"
    path, local = _check_source(source, flag, example)
    model = _wrap_load(flag, source, example, AutoModelForDepthEstimation.from_pretrained, path,
                       local_files_only=local)
    proc = _image_processor(path, local, flag, example)
    return LoadedModel(_finish(model, device), proc, None, source)
