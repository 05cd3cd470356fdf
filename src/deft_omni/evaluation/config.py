"""Settings of one evaluation run (what ``python -m deft_omni.evaluate`` parses into)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .depth import ALIGNMENTS
from .images import EvaluationInputError

METRICS = ("clip_i", "clip_t", "dino", "dinov2", "aesthetic", "sharpness", "ssim", "canny_f1", "depth_rmse")
CONDITION_TYPES = ("canny", "depth")


@dataclass
class EvalConfig:
    generated: str
    out: str
    references: str | None = None  # eval_prompts.json or a folder (one sub-folder / file stem per subject)
    subjects: str | None = None  # eval_prompts.json used only to map prompts to subjects
    reference_root: str | None = None  # overrides eval_prompts.json's "root"
    targets: str | None = None  # folder of target images matched by key
    conditions: str | None = None  # folder of condition images matched by key, or "sidecar"
    condition_type: str | None = None
    condition_index: int = 0  # which sidecar input image is the condition
    key_pattern: str | None = None  # regex; its first group (or whole match) of a file stem is the key
    clip: str | None = None
    dino: str | None = None
    dinov2: str | None = None
    aesthetic_head: str | None = None
    aesthetic_clip: str | None = None  # CLIP for the aesthetic head; default: --clip
    depth_model: str | None = None
    metrics: tuple[str, ...] | None = None  # None: every metric whose inputs and models are given
    strip_token: str | None = None  # word removed from prompts before CLIP-T (e.g. the unique token "sks")
    batch_size: int = 16
    device: str = "cpu"
    canny_low: float = 100.0
    canny_high: float = 200.0
    edge_tolerance: int = 0
    depth_align: str = "minmax"
    depth_invert: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.batch_size < 1:
            raise EvaluationInputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.metrics is not None:
            unknown = [m for m in self.metrics if m not in METRICS]
            if unknown or not self.metrics:
                raise EvaluationInputError(f"--metrics: unknown {unknown or 'empty list'}; choose from "
                                           f"{', '.join(METRICS)}")
        if self.condition_type is not None and self.condition_type not in CONDITION_TYPES:
            raise EvaluationInputError(f"--condition-type must be one of {CONDITION_TYPES}, got "
                                       f"{self.condition_type!r}")
        if self.conditions and not self.condition_type:
            raise EvaluationInputError("--conditions needs --condition-type canny|depth (which metric to compute)")
        if self.depth_align not in ALIGNMENTS:
            raise EvaluationInputError(f"--depth-align must be one of {ALIGNMENTS}, got {self.depth_align!r}")
        if self.edge_tolerance < 0:
            raise EvaluationInputError(f"--edge-tolerance must be >= 0 pixels, got {self.edge_tolerance}")
        if not 0 <= self.canny_low <= self.canny_high:
            raise EvaluationInputError(f"--canny-low/--canny-high must satisfy 0 <= low <= high, got "
                                       f"{self.canny_low}, {self.canny_high}")
        if self.condition_index < 0:
            raise EvaluationInputError(f"--condition-index must be >= 0, got {self.condition_index}")
        if self.key_pattern is not None:
            try:
                re.compile(self.key_pattern)
            except re.error as exn:
                raise EvaluationInputError(f"--key-pattern {self.key_pattern!r} is not a regex ({exn})") from exn

    @property
    def aesthetic_clip_source(self) -> str | None:
        return self.aesthetic_clip or self.clip
