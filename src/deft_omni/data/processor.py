"""Turn parsed samples into OmniGen training inputs, and batches into diffusers' forward args.

Sequence layout per sample (what ``OmniGenTransformer2DModel.forward`` concatenates):
``[left-padded text with image placeholder spans | 1 time token | output-image tokens]``.
The text row block is ``input_ids``; diffusers overwrites the placeholder rows listed in
``input_image_sizes`` with the input images' patch embeddings (offsets count from the
start of ``input_ids``, which is also the start of the full sequence).

Image sizes: the VAE downsamples 8x and the transformer patches 2x2 latents, so an
image of H x W pixels is (H/16)(W/16) tokens and its sides must be multiples of 16.
Images are first downscaled (never upscaled) so the longer side is at most
``max_image_side`` keeping the aspect ratio, then *centre-cropped* to the next lower
multiple of ``size_multiple`` (a crop loses < 16 px per side, a resize would distort the
aspect).  With ``bucket_sizes`` the output image instead goes to the listed (H, W) with
the closest aspect ratio: scaled to cover it, then centre-cropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.seeding import derive_seed
from .schema import Sample, SampleError, check_image_tags, to_rgb

PROMPT_PREFIX = "<|user|>\nGenerate an image according to the following instructions\n"
PROMPT_SUFFIX = "<|end|>\n<|assistant|>\n<|diffusion|>"
CFG_INSTRUCTION = "<cfg>"
PIXELS_PER_TOKEN = 16  # VAE 8x downsampling times the 2x2 latent patch.
_SPLIT_RE = re.compile(r"<\|image_\d+\|>")


def prompt_for(instruction: str) -> str:
    """OmniGen's chat template around an instruction (concatenation: instructions may hold braces)."""
    return PROMPT_PREFIX + instruction + PROMPT_SUFFIX


def num_image_tokens(height: int, width: int) -> int:
    return (height // PIXELS_PER_TOKEN) * (width // PIXELS_PER_TOKEN)


@dataclass
class ProcessedSample:
    """One sample ready for :meth:`OmniGenTrainProcessor.collate` (unpadded)."""

    key: str
    input_ids: list[int]
    image_spans: list[tuple[int, int]]  # [start, end) of each placeholder run in input_ids
    input_images: list[torch.Tensor]  # (3, H, W) in [-1, 1], one per span, same order
    output_image: torch.Tensor  # (3, H, W) in [-1, 1]
    task: str = ""
    loss_weight: float = 1.0
    is_prior: bool = False
    cfg_dropped: bool = False
    url: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # conditioner name -> vector (see .conditioning)
    output_mask: torch.Tensor | None = None  # (1, H, W) in [0, 1], 1 = foreground (the loss may ignore the rest)

    @property
    def output_size(self) -> tuple[int, int]:
        return int(self.output_image.shape[-2]), int(self.output_image.shape[-1])


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [-1, 1] (numpy only: no torchvision)."""
    arr = np.asarray(img, dtype=np.uint8).astype(np.float32)
    arr = arr / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _centre_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    left, top = (img.width - width) // 2, (img.height - height) // 2
    return img.crop((left, top, left + width, top + height))


def fit_geometry(width: int, height: int, max_side: int, multiple: int = 16,
                 bucket_sizes: Sequence[tuple[int, int]] | None = None
                 ) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """(size to resize to or None, (crop width, crop height)) of :func:`fit_image`, from sizes only."""
    w, h = width, height
    if bucket_sizes:
        aspect = math.log(w / h)
        bh, bw = min(bucket_sizes, key=lambda s: (abs(math.log(s[1] / s[0]) - aspect), -s[0] * s[1]))
        scale = max(bw / w, bh / h)
        size = (max(bw, math.ceil(w * scale)), max(bh, math.ceil(h * scale)))
        return (size if size != (w, h) else None), (bw, bh)
    resize = None
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        resize = (max(1, round(w * scale)), max(1, round(h * scale)))
        w, h = resize
    cw, ch = (w // multiple) * multiple, (h // multiple) * multiple
    if cw == 0 or ch == 0:
        raise ValueError(f"image of {w}x{h} px (after fitting to max side {max_side}) has a side "
                         f"below {multiple} px")
    return resize, (cw, ch)


def fit_image(img: Image.Image, max_side: int, multiple: int = 16,
              bucket_sizes: Sequence[tuple[int, int]] | None = None, *, mask: bool = False) -> Image.Image:
    """Resize/crop as described in the module docstring; returns an RGB image (``mask``: the same
    geometry for a single-channel mask, resized with box averaging so soft edges stay soft)."""
    img = img.convert("L") if mask else to_rgb(img)
    resize, (cw, ch) = fit_geometry(img.width, img.height, max_side, multiple, bucket_sizes)
    if resize is not None:
        img = img.resize(resize, Image.Resampling.BOX if mask else Image.Resampling.BICUBIC)
    return _centre_crop(img, cw, ch) if (cw, ch) != img.size else img


class OmniGenTrainProcessor:
    """Samples -> token ids, placeholder spans and image tensors; lists of those -> batches.

    ``tokenizer``: any Hugging Face tokenizer with ``bos_token_id`` whose ``__call__``
    prepends BOS (the Phi-3 tokenizer does).  ``placeholder_id``/``pad_id`` default to
    the tokenizer's pad id, else its unk id, else 0; both rows are never read as text
    (placeholders are overwritten by image embeddings, pads are masked out).
    ``cfg_dropout``: probability of replacing the instruction by ``<cfg>`` and dropping
    the input images (training only).  ``prior_loss_weight``: the ``loss_weight`` of
    DreamBooth class-prior samples.  ``mask_dtype``: dtype of the (B,S,S) mask.
    ``conditioners``: :class:`~deft_omni.data.conditioning.SampleConditioner` hooks of extensions
    (text suffix, a marker tokenized as one id, a per-sample vector); condition dropout drops them.
    """

    def __init__(self, tokenizer: Any, max_image_side: int = 1024, size_multiple: int = 16,
                 cfg_dropout: float = 0.1, seed: int = 0, placeholder_id: int | None = None,
                 pad_id: int | None = None, prior_loss_weight: float = 1.0,
                 bucket_sizes: Sequence[tuple[int, int]] | None = None,
                 mask_dtype: torch.dtype = torch.float32, conditioners: Sequence[Any] = ()):
        if size_multiple % PIXELS_PER_TOKEN:
            raise ValueError(f"size_multiple must be a multiple of {PIXELS_PER_TOKEN} "
                             "(VAE 8x times 2x2 patches)")
        if max_image_side < size_multiple:
            raise ValueError(f"max_image_side {max_image_side} < size_multiple {size_multiple}")
        if not 0.0 <= cfg_dropout <= 1.0:
            raise ValueError(f"cfg_dropout must lie in [0, 1], got {cfg_dropout}")
        self.bucket_sizes = self._check_buckets(bucket_sizes, size_multiple)
        self.tokenizer = tokenizer
        self.max_image_side, self.size_multiple = int(max_image_side), int(size_multiple)
        self.cfg_dropout, self.seed = float(cfg_dropout), int(seed)
        self.prior_loss_weight, self.mask_dtype = float(prior_loss_weight), mask_dtype
        self.bos_id = getattr(tokenizer, "bos_token_id", None)
        fallback = next((i for i in (getattr(tokenizer, "pad_token_id", None),
                                     getattr(tokenizer, "unk_token_id", None)) if i is not None), 0)
        self.placeholder_id = fallback if placeholder_id is None else int(placeholder_id)
        self.pad_id = fallback if pad_id is None else int(pad_id)
        self.conditioners = list(conditioners)
        markers = {c.marker: int(c.token_id) for c in self.conditioners if c.marker}
        self._marker_ids = markers
        self._marker_re = re.compile("(" + "|".join(re.escape(m) for m in markers) + ")") if markers else None

    @staticmethod
    def _check_buckets(buckets, multiple):
        if not buckets:
            return None
        out = [(int(h), int(w)) for h, w in buckets]
        bad = [s for s in out if s[0] % multiple or s[1] % multiple or min(s) <= 0]
        if bad:
            raise ValueError(f"bucket sizes {bad} are not positive multiples of {multiple}")
        return out

    # ------------------------------------------------------------------ one sample

    def tokenize(self, instruction: str, image_sizes: Sequence[tuple[int, int]], *,
                 key: str | None = None, url: str | None = None) -> tuple[list[int], list[tuple[int, int]]]:
        """Template the instruction, split at image tags, tokenize the chunks (BOS kept on the
        first only) and put (H/16)(W/16) placeholder ids for image k at tag k."""
        check_image_tags(instruction, len(image_sizes), key=key, url=url)
        chunks = _SPLIT_RE.split(prompt_for(instruction))
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for i, chunk in enumerate(chunks):
            # Markers come back from re.split at odd positions (the capturing group).
            pieces = self._marker_re.split(chunk) if self._marker_re is not None else [chunk]
            for j, piece in enumerate(pieces):
                if j % 2:
                    ids.append(self._marker_ids[piece])
                    continue
                toks = list(self.tokenizer(piece)["input_ids"])
                # Each chunk is tokenized as if it began a text, so the tokenizer prepends BOS;
                # only the prompt's real start keeps it (as OmniGen's own processor does).
                if (i > 0 or j > 0) and toks and self.bos_id is not None and toks[0] == self.bos_id:
                    toks = toks[1:]
                ids.extend(toks)
            if i < len(chunks) - 1:
                n = num_image_tokens(*image_sizes[i])
                spans.append((len(ids), len(ids) + n))
                ids.extend([self.placeholder_id] * n)
        return ids, spans

    def prepare_image(self, img: Image.Image, *, bucket_sizes=None, key: str | None = None,
                      url: str | None = None, name: str = "image") -> torch.Tensor:
        try:
            fitted = fit_image(img, self.max_image_side, self.size_multiple, bucket_sizes)
        except ValueError as exn:
            raise SampleError(str(exn), key=key, url=url, field=name,
                              fix="drop tiny images in the converter") from exn
        return image_to_tensor(fitted)

    def drops_condition(self, key: str, rng: np.random.Generator | None = None, epoch: int = 0) -> bool:
        """The condition-dropout draw: from ``rng`` if given, else seeded by (seed, epoch, key)."""
        if self.cfg_dropout <= 0.0:
            return False
        if rng is None:
            rng = np.random.default_rng(derive_seed(self.seed, "cfg", int(epoch), key))
        return bool(rng.random() < self.cfg_dropout)

    def __call__(self, sample: Sample, *, train: bool = True, rng: np.random.Generator | None = None,
                 epoch: int = 0, is_prior: bool | None = None,
                 bucket_sizes: Sequence[tuple[int, int]] | None = None) -> ProcessedSample:
        """Process one parsed sample.  ``train=False`` disables condition dropout."""
        key, url = sample.key, sample.url
        buckets = self._check_buckets(bucket_sizes, self.size_multiple) or self.bucket_sizes
        instruction, inputs = sample.instruction, list(sample.inputs)
        # Validate tags before the dropout draw so that a broken sample fails every time.
        check_image_tags(instruction, len(inputs), key=key, url=url)
        dropped = train and self.drops_condition(key, rng, epoch)
        if dropped:
            instruction, inputs = CFG_INSTRUCTION, []
        extras: dict[str, torch.Tensor] = {}
        for conditioner in self.conditioners if not dropped else ():
            suffix, vec = conditioner.condition(sample)
            instruction = instruction + suffix
            if vec is not None:
                extras[conditioner.name] = vec
        input_tensors = [self.prepare_image(img, key=key, url=url, name=f"input_{k}")
                         for k, img in enumerate(inputs, start=1)]
        ids, spans = self.tokenize(instruction, [tuple(t.shape[-2:]) for t in input_tensors], key=key, url=url)
        output = self.prepare_image(sample.output, bucket_sizes=buckets, key=key, url=url, name="output")
        mask = None
        if getattr(sample, "output_mask", None) is not None:
            fitted = fit_image(sample.output_mask, self.max_image_side, self.size_multiple, buckets, mask=True)
            mask = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0).unsqueeze(0)
        prior = sample.is_prior if is_prior is None else bool(is_prior)
        return ProcessedSample(key=key, input_ids=ids, image_spans=spans, input_images=input_tensors,
                               output_image=output, task=sample.task,
                               loss_weight=self.prior_loss_weight if prior else 1.0, is_prior=prior,
                               cfg_dropped=dropped, url=url, meta=dict(sample.meta), extras=extras,
                               output_mask=mask)

    # ---------------------------------------------------------------------- batch

    def collate(self, items: Sequence[ProcessedSample]) -> dict[str, Any]:
        """Batch samples of one output size; see :func:`collate_processed`."""
        return collate_processed(items, pad_id=self.pad_id, mask_dtype=self.mask_dtype)


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
    (B, 3, H, W); ``loss_weight`` (B,) float; ``is_prior``, ``cfg_dropped`` (B,) bool;
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
            input_images.extend(img.unsqueeze(0) for img in it.input_images)
    batch = {
        "input_ids": input_ids,
        "attention_mask": build_attention_mask(padding, [it.image_spans for it in ordered], text_len,
                                               n_out, dtype=mask_dtype),
        "position_ids": position_ids,
        "input_images": input_images,
        "input_image_sizes": input_image_sizes,
        "output_images": torch.stack([it.output_image for it in ordered]),
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
