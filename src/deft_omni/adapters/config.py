"""The one config shape shared by DEFT, PaRa and LoRA adapters."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Union

METHODS = ("deft", "para", "lora")
DECOMPOSITIONS = ("qr", "relu", "relaxed", "relu2", "tsvd", "lrmf", "eigen", "nmf")
# Bases peft's DeftConfig also implements (same B and right): the oracle set.
PEFT_DECOMPOSITIONS = ("qr", "relu")
# Bases with right = B orthonormal: B right^T projects onto span(P), so at rank = out (P full
# rank) it is the identity and PaRa's W' = W0 - B right^T W0 is exactly 0.
PROJECTOR_DECOMPOSITIONS = ("qr", "tsvd", "eigen")


@dataclass
class AdapterConfig:
    """Configuration of one adapter (DEFT, PaRa or LoRA) over a model's Linear layers.

    The field help is the documentation; ``docs/adapters.md`` gives the formulas.
    """

    method: str = field(
        default="deft",
        metadata={"help": "'deft': W' = W0 - B right^T W0 + s B R; 'para': W' = W0 - B right^T W0 (no R); "
                          "'lora': W' = W0 + s B A."},
    )
    rank: int = field(default=8, metadata={"help": "r: columns of P (out x r) and rows of R (r x in)."})
    alpha: Optional[float] = field(
        default=None,
        metadata={"help": "Injection scale s = alpha / rank; None means s = 1 (peft's DEFT default; for LoRA "
                          "alpha = rank)."},
    )
    decomposition: str = field(
        default="qr",
        metadata={"help": "How B and right are derived from P: " + ", ".join(DECOMPOSITIONS)
                          + ". Ignored by LoRA."},
    )
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the injection term's input only (as peft)."}
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Exact module names or name suffixes (list), a regex matched against the full name "
                          "(str), or 'all-linear'."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Names/suffixes (list) or a regex (str) never wrapped."}
    )
    fused_groups: list[list[str]] = field(
        default_factory=list,
        metadata={"help": "Sibling Linear layers (by child name, e.g. ['to_q', 'to_k', 'to_v']) that read one "
                          "input and form one logical weight: one adapter spans their joint output space."},
    )
    init_identity: bool = field(
        default=True,
        metadata={"help": "DEFT: R = right^T W0 / s so the adapter is exactly the identity at init. False gives "
                          "the authors' random R ~ N(0, 0.02 * init_scale)."},
    )
    init_scale: float = field(default=1.0, metadata={"help": "Std multiplier of the random R init."})
    nmf_iters: int = field(default=5, metadata={"help": "Unrolled multiplicative updates of the 'nmf' basis."})
    p_lr_ratio: float = field(
        default=0.1, metadata={"help": "Learning rate of P relative to R (the authors use 0.1)."}
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"AdapterConfig.method={self.method!r} is unknown; choose one of {METHODS}.")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"AdapterConfig.rank must be a positive integer, got {self.rank!r}.")
        if self.decomposition not in DECOMPOSITIONS:
            raise ValueError(
                f"AdapterConfig.decomposition={self.decomposition!r} is unknown; choose one of {DECOMPOSITIONS}."
            )
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"AdapterConfig.alpha must be positive or None, got {self.alpha!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"AdapterConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        if self.nmf_iters < 1:
            raise ValueError(f"AdapterConfig.nmf_iters must be >= 1, got {self.nmf_iters!r}.")
        if self.p_lr_ratio <= 0:
            raise ValueError(f"AdapterConfig.p_lr_ratio must be positive, got {self.p_lr_ratio!r}.")
        if self.target_modules is None:
            raise ValueError("AdapterConfig.target_modules is required: names, suffixes, a regex or 'all-linear'.")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if isinstance(self.exclude_modules, tuple):
            self.exclude_modules = list(self.exclude_modules)
        self.fused_groups = [list(g) for g in self.fused_groups]
        for group in self.fused_groups:
            if len(group) < 2 or len(set(group)) != len(group):
                raise ValueError(f"AdapterConfig.fused_groups entry {group!r} needs two or more distinct names.")

    @property
    def scaling(self) -> float:
        """s = alpha / rank (1 when alpha is unset)."""
        return float(self.alpha) / self.rank if self.alpha else 1.0

    @property
    def has_r(self) -> bool:
        return self.method == "deft"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown adapter config field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
