"""Processed samples and their batches: what the processor makes of one sample, and the collated
batch ``OmniGenTransformer2DModel.forward`` takes (see :func:`collate_processed`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

PIXELS_PER_TOKEN = 16  # VAE 8x downsampling times the 2x2 latent patch.


def num_image_tokens(height: int, width: int) -> int:
    return (height // PIXELS_PER_TOKEN) * (width // PIXELS_PER_TOKEN)


@dataclass
class ProcessedSample:
    """One sample ready for :meth:`OmniGenTrainProcessor.collate` (unpadded)."""

    key: str
    input_ids: list[int]
    image_spans: list[tuple[int, int]]  # [start, end) of each placeholder run in input_ids
    input_images: list[torch.Tensor]  # (3, H, W) in [-1, 1], one per span, same order (none when cached)
    output_image: torch.Tensor | None  # (3, H, W) in [-1, 1]; None when the sample comes as cached latents
    task: str = ""
    loss_weight: float = 1.0
    is_prior: bool = False
    cfg_dropped: bool = False
    url: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # conditioner name -> vector (see .conditioning)
    output_mask: torch.Tensor | None = None  # (1, H, W) in [0, 1], 1 = foreground (the loss may ignore the rest)
    # Cached latents (deft_omni.data.cached_latents), in place of the pixel tensors above:
    output_latent: torch.Tensor | None = None  # (2, C, h, w): the posterior's mean and std, storage dtype
    input_latents: list[torch.Tensor] = field(default_factory=list)  # (2, C, h, w) per span, same order
    latent_vae: str | None = None  # fingerprint of the VAE that made them
    latent_pixel_size: tuple[int, int] | None = None  # (H, W) the output trains at

    @property
    def is_cached(self) -> bool:
        return self.output_latent is not None

    @property
    def output_size(self) -> tuple[int, int]:
        if self.output_image is None:
            assert self.latent_pixel_size is not None, "a cached sample needs latent_pixel_size"
            return self.latent_pixel_size
        return int(self.output_image.shape[-2]), int(self.output_image.shape[-1])



def build_attention_mask(padding: Sequence[int], spans: Sequence[Sequence[tuple[int, int]]],
                         text_len: int, n_out: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """The (B, S, S) 0/1 mask, S = text_len + 1 + n_out; ``spans`` in unpadded coordinates.

    Rows are queries, columns keys.  Text and time rows: causal over the non-pad text
    and the time token, blind to output-image columns.  Output-image rows: every non-pad
    column.  Each input-image span: a bidirectional block.  Pad columns: 0 for real rows.
    Pad rows see only themselves: a row of zeros would turn into a row of equal scores
    (fp32) or, where min+score overflows (fp16), -inf everywhere and NaN out of SDPA.
    """
    batch, seq = len(padding), text_len + 1 + n_out
    mask = torch.zeros(batch, seq, seq, dtype=dtype, device=device)
    for b, pad in enumerate(padding):
        n_causal = text_len + 1 - pad
        mask[b, pad:text_len + 1, pad:text_len + 1] = torch.tril(
            torch.ones(n_causal, n_causal, dtype=dtype, device=device))
        mask[b, text_len + 1:, pad:] = 1
        for start, end in spans[b]:
            mask[b, pad + start:pad + end, pad + start:pad + end] = 1
        idx = torch.arange(pad, device=device)
        mask[b, idx, idx] = 1
    return mask


def collate_processed(items: Sequence[ProcessedSample], pad_id: int = 0,
                      mask_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Batch processed samples for ``OmniGenTransformer2DModel.forward``.

    diffusers computes RoPE from sample 0's position ids only, so the batch is reordered
    longest text first: that sample has no padding, its positions are 0..S-1, and every
    other sample's real tokens are just shifted by a constant, which RoPE ignores.
    (One coupling remains in diffusers: it picks the long-context RoPE factors when the
    batch's largest position id reaches ``original_max_position_embeddings`` (4096), so a
    short sample batched with one longer than that is rotated with the long factors.)
    ``order[i]`` is the index in ``items`` of batch row i.

    Keys (B samples, L text tokens, S = L + 1 + N, N = (H/16)(W/16) output tokens):
    ``input_ids`` (B, L) long; ``attention_mask`` (B, S, S) 0/1; ``position_ids`` (B, S)
    long; ``input_images`` list of (1, 3, h, w) pixel tensors in batch order (encode each
    with the VAE to get diffusers' ``input_img_latents``); ``input_image_sizes``
    {b: [[start, end], ...]} in sequence coordinates, only for rows with images, in
    ascending b (diffusers consumes the flat list in that order); ``output_images``
    (B, 3, H, W).  A batch of cached samples has, in place of the pixels, ``output_latents``
    (B, 2, C, h, w) and ``input_latents`` [(1, 2, C, h, w)] (posterior mean and std, storage
    dtype) and ``latents_vae`` (the fingerprints of the VAEs that made them); ``loss_weight`` (B,) float; ``is_prior``, ``cfg_dropped`` (B,) bool;
    ``padding``, ``text_lengths`` (B,) long; ``order`` (B,) long; ``keys``, ``tasks`` lists;
    ``output_size`` (H, W); ``num_output_tokens`` N.  For each conditioner vector some item has
    (``extras``): ``<name>`` (B, width) float (zeros for rows without) and ``has_<name>`` (B,) bool.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    sizes = {it.output_size for it in items}
    if len(sizes) != 1:
        raise ValueError(f"a batch must share one output size (diffusers takes one latent tensor); "
                         f"got {sorted(sizes)} for keys {[it.key for it in items]}: bucket by size first")
    height, width = sizes.pop()
    kinds = {it.is_cached for it in items}
    if len(kinds) != 1:
        raise ValueError(f"a batch must be all pixels or all cached latents; keys {[it.key for it in items]} mix "
                         "them: bucket by kind first (the loaders do)")
    cached = kinds.pop()
    # Stable sort: equal lengths keep their incoming order, so collation is deterministic.
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids))
    ordered = [items[i] for i in order]
    text_len = max(len(it.input_ids) for it in ordered)
    n_out = num_image_tokens(height, width)
    seq = text_len + 1 + n_out
    padding = [text_len - len(it.input_ids) for it in ordered]

    input_ids = torch.full((len(ordered), text_len), pad_id, dtype=torch.long)
    position_ids = torch.zeros(len(ordered), seq, dtype=torch.long)
    input_images: list[torch.Tensor] = []
    input_image_sizes: dict[int, list[list[int]]] = {}
    for b, (it, pad) in enumerate(zip(ordered, padding)):
        input_ids[b, pad:] = torch.tensor(it.input_ids, dtype=torch.long)
        position_ids[b, pad:] = torch.arange(seq - pad)
        if it.image_spans:
            input_image_sizes[b] = [[pad + s, pad + e] for s, e in it.image_spans]
            input_images.extend(img.unsqueeze(0) for img in (it.input_latents if cached else it.input_images))
    batch = {
        "input_ids": input_ids,
        "attention_mask": build_attention_mask(padding, [it.image_spans for it in ordered], text_len,
                                               n_out, dtype=mask_dtype),
        "position_ids": position_ids,
        "input_latents" if cached else "input_images": input_images,
        "input_image_sizes": input_image_sizes,
        "loss_weight": torch.tensor([it.loss_weight for it in ordered], dtype=torch.float32),
        "is_prior": torch.tensor([it.is_prior for it in ordered], dtype=torch.bool),
        "cfg_dropped": torch.tensor([it.cfg_dropped for it in ordered], dtype=torch.bool),
        "padding": torch.tensor(padding, dtype=torch.long),
        "text_lengths": torch.tensor([len(it.input_ids) for it in ordered], dtype=torch.long),
        "order": torch.tensor(order, dtype=torch.long),
        "keys": [it.key for it in ordered],
        "tasks": [it.task for it in ordered],
        "output_size": (height, width),
        "num_output_tokens": n_out,
    }
    if cached:
        batch["output_latents"] = torch.stack([it.output_latent for it in ordered])
        batch["latents_vae"] = sorted({str(it.latent_vae) for it in ordered})
    else:
        batch["output_images"] = torch.stack([it.output_image for it in ordered])
    if any(it.output_mask is not None for it in ordered):
        # Rows without a mask weigh every pixel: an all-ones mask.
        batch["output_masks"] = torch.stack([it.output_mask if it.output_mask is not None else
                                             torch.ones(1, height, width) for it in ordered])
    for name in sorted({n for it in ordered for n in it.extras}):
        width = next(it.extras[name].numel() for it in ordered if name in it.extras)
        batch[name] = torch.stack([it.extras[name].float().reshape(width) if name in it.extras
                                   else torch.zeros(width) for it in ordered])
        batch[f"has_{name}"] = torch.tensor([name in it.extras for it in ordered], dtype=torch.bool)
    return batch
