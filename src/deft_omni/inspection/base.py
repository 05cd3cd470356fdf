"""Finding and loading the base model an adapter folder belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class InspectError(ValueError):
    """Bad input to the inspection CLI (names the file or option and the fix)."""


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InspectError(f"--dtype {name!r} is unknown; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def base_from_run(adapter_dir: Path) -> Optional[str]:
    """model.path of the training run that wrote `adapter_dir` (<run>/adapters/<name>), if any."""
    for folder in [adapter_dir, *list(adapter_dir.parents)[:3]]:
        config = folder / "config.yaml"
        if config.is_file():
            try:
                path = OmegaConf.select(OmegaConf.load(config), "model.path")
            except Exception:  # noqa: BLE001 -- a foreign config.yaml is simply not ours
                continue
            if path is not None and str(path) not in ("???", ""):
                return str(path)
    return None


def resolve_base(adapter_dir: Path, base: Optional[str]) -> Path:
    """The OmniGen folder: --base, else the run's model.path; 'tiny' is the cached test model."""
    chosen = base if base is not None else base_from_run(adapter_dir)
    if chosen is None:
        raise InspectError(f"{adapter_dir}: no --base given and no run config.yaml with model.path above the "
                           f"adapter folder; pass --base /path/to/OmniGen-v1 (or --base tiny).")
    if chosen == "tiny":
        from ..model import ensure_tiny_omnigen

        return ensure_tiny_omnigen()
    return Path(chosen).expanduser()


def load_base_transformer(path: Path, dtype: torch.dtype):
    """The transformer alone, frozen, in eval mode (VAE and tokenizer are not needed here)."""
    from ..model import load_omnigen

    transformer = load_omnigen(path, torch_dtype=dtype).transformer
    return transformer.requires_grad_(False).eval()
