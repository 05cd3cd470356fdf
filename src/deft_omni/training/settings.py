"""Every training setting in one place: the dataclasses behind the ``model``, ``optim``, ``loss``
and ``ema`` config blocks.  Their defaults are the only defaults: the Hydra config registers them
as structured configs (``deft_omni.train``), so the YAML files hold choices, not copies.  The field
help is the documentation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..backbones.objective import LossConfig
from ..core.dtypes import dtype_name
from ..model.quantize import check_mode


@dataclass
class ModelConfig:
    """Which model to load and how."""

    path: Optional[str] = field(default="tiny", metadata={
        "help": "A local model folder (OmniGen: diffusers or original layout), or a named model: 'tiny' "
                "(random 2-layer test model) or 'world' (the shipped shapes-world base)."})
    family: Optional[str] = field(default=None, metadata={
        "help": "Backbone family ('omnigen', ...); null: detected from the folder."})
    torch_dtype: str = field(default="float32", metadata={
        "help": "The trained network's dtype: fp32/float32, bf16/bfloat16, fp16/float16. The VAE stays fp32."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass: far less memory, ~30% more time."})
    quantize: str = field(default="none", metadata={
        "help": "Storage of the frozen base's Linear weights: 'none', or 'int8' (weight-only, per output row, "
                "through torchao: pip install 'deft_omni[quant]'); halves their memory against bf16. "
                "See docs/low_memory.md."})
    adapter_name: str = field(default="default", metadata={"help": "Name of the trained adapter in the model."})
    init_seed: int = field(default=0, metadata={
        "help": "Seeds the adapter's random init (DEFT's P, LoRA's A) and extension modules; the caller's "
                "RNG is untouched."})

    def __post_init__(self) -> None:
        self.torch_dtype = dtype_name(self.torch_dtype)
        self.quantize = check_mode(self.quantize)


@dataclass
class OptimConfig:
    """AdamW and its LambdaLR schedule (stepped every optimizer step)."""

    lr: float = field(default=1e-3, metadata={
        "help": "Learning rate of R (DEFT) and of LoRA's matrices; DEFT's P gets adapter.p_lr_ratio x lr."})
    betas: tuple[float, float] = field(default=(0.9, 0.99), metadata={"help": "AdamW betas (the DEFT authors')."})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up from lr/warmup_steps to lr."})
    schedule: str = field(default="constant", metadata={"help": "'constant' or 'cosine' after the warm-up."})
    total_steps: Optional[int] = field(default=None, metadata={
        "help": "Cosine horizon; null: the trainer's estimated stepping batches (max_steps)."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Cosine floor as a fraction of lr."})

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"optim.schedule={self.schedule!r}; choose 'constant' or 'cosine'")
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        self.betas = betas  # type: ignore[assignment]


@dataclass
class EMAConfig:
    """Exponential moving average of the trained weights (fp32 shadows, diffusers' EMAModel)."""

    enabled: bool = field(default=False, metadata={"help": "Keep EMA weights; saved as ema/ beside each adapter."})
    decay: float = field(default=0.999, metadata={"help": "The EMA decay."})
    warmup: bool = field(default=False, metadata={
        "help": "Effective decay min(decay, (1 + n) / (10 + n)) after n updates (diffusers' default curve)."})

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"ema.decay must lie in (0, 1), got {self.decay}")


def plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (dicts/lists), anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def coerce(cls, value: Any):
    """``cls`` from an instance, a mapping (unknown keys refused, naming the block) or None."""
    value = plain(value)
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")


def field_help(cls) -> dict[str, str]:
    """name -> help text of a settings dataclass (for docs and --help pages)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


__all__ = ["EMAConfig", "LossConfig", "ModelConfig", "OptimConfig", "coerce", "field_help", "plain"]
