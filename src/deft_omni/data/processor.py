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

A sample with cached latents (``Sample.latents``, see :mod:`.cached_latents`) becomes its stored
posteriors instead of pixel tensors, after a check that they were made with this fitting; the
token counts come from the fitted sizes they record, and no pixel is decoded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.seeding import derive_seed
# The batch side (ProcessedSample, collate): importers of the processor find it here too.
from .batch import PIXELS_PER_TOKEN, ProcessedSample, build_attention_mask, collate_processed, num_image_tokens  # noqa: F401
# Image fitting: importers of the processor find it here too.
from .cached_latents import check_record_fitting
from .fitting import fit_geometry, fit_image  # noqa: F401
from .schema import Sample, SampleError, check_image_tags

PROMPT_PREFIX = "<|user|>\nGenerate an image according to the following instructions\n"
PROMPT_SUFFIX = "<|end|>\n<|assistant|>\n<|diffusion|>"
CFG_INSTRUCTION = "<cfg>"
_SPLIT_RE = re.compile(r"<\|image_\d+\|>")


def prompt_for(instruction: str) -> str:
    """OmniGen's chat template around an instruction (concatenation: instructions may hold braces)."""
    return PROMPT_PREFIX + instruction + PROMPT_SUFFIX


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [-1, 1] (numpy only: no torchvision)."""
    arr = np.asarray(img, dtype=np.uint8).astype(np.float32)
    arr = arr / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


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
        record = getattr(sample, "latents", None)
        latents: dict[str, Any] = {}
        if record is not None:  # the VAE's posteriors of exactly the fitted images: no pixel is decoded
            check_record_fitting(record, self.max_image_side, self.size_multiple, buckets, key=key, url=url)
            slots = [record.slots[f"input_{k}"] for k in range(1, len(inputs) + 1)]
            input_tensors, output = [], None
            input_sizes = [slot.pixel_size for slot in slots]
            latents = {"output_latent": record.slots["output"].posterior(), "latent_vae": record.vae,
                       "input_latents": [slot.posterior() for slot in slots],
                       "latent_pixel_size": record.slots["output"].pixel_size}
        else:
            input_tensors = [self.prepare_image(img, key=key, url=url, name=f"input_{k}")
                             for k, img in enumerate(inputs, start=1)]
            input_sizes = [tuple(t.shape[-2:]) for t in input_tensors]
            output = self.prepare_image(sample.output, bucket_sizes=buckets, key=key, url=url, name="output")
        ids, spans = self.tokenize(instruction, input_sizes, key=key, url=url)
        mask = None
        if getattr(sample, "output_mask", None) is not None:
            fitted = fit_image(sample.output_mask, self.max_image_side, self.size_multiple, buckets, mask=True)
            mask = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0).unsqueeze(0)
        prior = sample.is_prior if is_prior is None else bool(is_prior)
        return ProcessedSample(key=key, input_ids=ids, image_spans=spans, input_images=input_tensors,
                               output_image=output, task=sample.task,
                               loss_weight=self.prior_loss_weight if prior else 1.0, is_prior=prior,
                               cfg_dropped=dropped, url=url, meta=dict(sample.meta), extras=extras,
                               output_mask=mask, **latents)

    # ---------------------------------------------------------------------- batch

    def collate(self, items: Sequence[ProcessedSample]) -> dict[str, Any]:
        """Batch samples of one output size; see :func:`collate_processed`."""
        return collate_processed(items, pad_id=self.pad_id, mask_dtype=self.mask_dtype)
