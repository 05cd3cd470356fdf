"""Embedding similarities of the DreamBooth / DreamBench++ protocol.

* CLIP-I: cosine of the CLIP image embeddings (``get_image_features``: the projected
  pooled output) of a generated image and a reference image;
* CLIP-T: cosine of the CLIP image embedding and the CLIP text embedding of the prompt;
* DINO (v1) and DINOv2: cosine of the CLS tokens of ``last_hidden_state`` (after the
  backbone's final layer norm; for Dinov2Model this is also its ``pooler_output``).

All are reported as plain cosines in [-1, 1] (DreamBooth's and the paper's Tables 4-5
convention), not CLIPScore's ``100 * max(cos, 0)``. With several reference images a
generated image's score is the mean of its cosines to each of them (DreamBooth averages
over all generated-real pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .models import LoadedModel


def _as_tensor(out) -> torch.Tensor:
    # transformers >= 5 returns a BaseModelOutputWithPooling from get_*_features; 4.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batched(items: Sequence, batch_size: int, desc: str, progress: bool):
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) < 2, leave=False):
        yield items[start:start + batch_size]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


@torch.no_grad()
def embed_images(loaded: LoadedModel, kind: str, paths: Sequence[str], load: Callable[[str], Image.Image],
                 batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) on the CPU; ``kind`` is "clip" or "cls"."""
    if kind not in ("clip", "cls"):
        raise ValueError(f"kind must be 'clip' or 'cls', got {kind!r}")
    model, proc = loaded.model, loaded.image_processor
    device = _device(model)
    rows = []
    for chunk in _batched(list(paths), batch_size, f"{kind} embeddings", progress):
        pixels = proc(images=[load(p) for p in chunk], return_tensors="pt")["pixel_values"].to(device)
        if kind == "clip":
            feats = _as_tensor(model.get_image_features(pixel_values=pixels))
        else:
            feats = model(pixel_values=pixels).last_hidden_state[:, 0]
        rows.append(_normalise(feats).cpu())
    if not rows:
        return torch.zeros(0, 0)
    return torch.cat(rows)


def clip_text_max_length(loaded: LoadedModel) -> int:
    limit = loaded.model.config.text_config.max_position_embeddings
    tok_limit = getattr(loaded.tokenizer, "model_max_length", limit) or limit
    return int(min(limit, tok_limit))


@torch.no_grad()
def embed_texts(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 16,
                progress: bool = False) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (N, D); prompts longer than CLIP's context are truncated."""
    model, tok = loaded.model, loaded.tokenizer
    device = _device(model)
    max_len = clip_text_max_length(loaded)
    rows = []
    for chunk in _batched(list(texts), batch_size, "text embeddings", progress):
        enc = tok(list(chunk), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        feats = _as_tensor(model.get_text_features(input_ids=enc["input_ids"].to(device),
                                                   attention_mask=enc["attention_mask"].to(device)))
        rows.append(_normalise(feats).cpu())
    if not rows:
        return torch.zeros(0, 0)
    return torch.cat(rows)


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two (N, D) stacks of unit vectors."""
    return (a * b).sum(-1)


def mean_reference_cosine(generated: torch.Tensor, references: torch.Tensor,
                          ref_rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """For image i, the mean cosine between ``generated[i]`` and ``references[ref_rows[i]]``."""
    out = torch.empty(len(ref_rows))
    for i, rows in enumerate(ref_rows):
        if not rows:
            raise ValueError(f"generated image {i} has no reference images")
        out[i] = (references[list(rows)] @ generated[i]).mean()
    return out
