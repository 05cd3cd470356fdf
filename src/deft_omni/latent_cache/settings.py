"""The settings of one latent-encoding run (``python -m deft_omni.encode_latents``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..core.dtypes import dtype_name
from ..data.cached_latents import STORAGE_DTYPES, THUMBNAIL_SIDE, fit_settings

PARTIAL_SUFFIX = ".partial"


@dataclass
class EncodeSettings:
    """Field help is the documentation (the CLI shows it)."""

    model: str = field(metadata={"help": "The model whose VAE encodes: a folder (diffusers or original OmniGen "
                                         "layout) or a named model (tiny, world). Train with the same one."})
    input: str = field(metadata={"help": "The pixel shard folder (with manifest.json) to encode."})
    output: str = field(metadata={
        "help": f"The shard folder to write: the input's samples plus latents.safetensors each. Written into "
                f"OUTPUT{PARTIAL_SUFFIX}/ shard by shard (a rerun resumes there) and renamed into place at the end."})
    family: Optional[str] = field(default=None, metadata={"help": "model.family; None: detected from the folder."})
    dtype: str = field(default="float16", metadata={
        "help": "Storage dtype of the posterior mean and std: float16 (default; the loss matches pixels to 1e-3) "
                "or bfloat16 (1e-2); float32 doubles the size."})
    max_image_side: Optional[int] = field(default=None, metadata={
        "help": "data.max_image_side of the runs that will read the set (the images are fitted as the processor "
                "fits them); None: the model's largest side, at most 1024 px, as train.py resolves a null one."})
    bucket_sizes: Optional[list[tuple[int, int]]] = field(default=None, metadata={
        "help": "data.bucket_sizes of those runs, (height, width) pairs; outputs only, as in training."})
    size_multiple: int = field(default=16, metadata={"help": "The processor's size multiple (16 for OmniGen)."})
    drop_pixels: bool = field(default=False, metadata={
        "help": "Keep only thumbnails (at most --thumbnail-side px) of the images, and any output mask: grids "
                "and data_prep.summary show the thumbnails."})
    thumbnail_side: int = field(default=THUMBNAIL_SIDE, metadata={
        "help": f"Longer side of the --drop-pixels thumbnails, 16..{THUMBNAIL_SIDE} px."})
    workers: int = field(default=1, metadata={
        "help": "Processes encoding shards at once, each with its own VAE copy and cores / N threads "
                "(0: one per core). Shards come out the same for any N."})
    batch_size: int = field(default=8, metadata={"help": "Images of one size per VAE call."})
    device: str = field(default="cpu", metadata={"help": "Where the VAE runs: cpu, cuda, cuda:1 ..."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace a finished OUTPUT (kept until the new one is complete), or a partial one made with "
                "other settings."})
    quiet: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self) -> None:
        try:
            self.dtype = dtype_name(self.dtype)
        except ValueError as err:
            raise ValueError(f"dtype: {err}") from None
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: cached latents are stored as one of {STORAGE_DTYPES}")
        if self.size_multiple <= 0 or self.size_multiple % 16:
            raise ValueError(f"size_multiple {self.size_multiple} must be a positive multiple of 16 (VAE 8x times "
                             "2x2 patches)")
        if self.max_image_side is not None and self.max_image_side < self.size_multiple:
            raise ValueError(f"max_image_side {self.max_image_side} is below the size multiple {self.size_multiple}")
        if self.bucket_sizes:
            self.bucket_sizes = [(int(h), int(w)) for h, w in self.bucket_sizes]
            bad = [s for s in self.bucket_sizes if min(s) <= 0 or s[0] % self.size_multiple or s[1] % self.size_multiple]
            if bad:
                raise ValueError(f"bucket sizes {bad} are not positive multiples of {self.size_multiple}")
        if not 16 <= self.thumbnail_side <= THUMBNAIL_SIDE:
            raise ValueError(f"thumbnail_side {self.thumbnail_side} must lie in 16..{THUMBNAIL_SIDE} px")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: one per core), got {self.workers}")

    def fit(self, max_image_side: int) -> dict:
        """The manifest's ``fitting`` for the resolved ``max_image_side``."""
        return fit_settings(max_image_side, self.bucket_sizes, self.size_multiple)


__all__ = ["EncodeSettings", "PARTIAL_SUFFIX"]
