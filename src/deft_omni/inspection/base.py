"""Finding and loading the base model an adapter folder belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from ..backbones import is_named_model, resolve_model
from ..core.dtypes import resolve_dtype



class InspectError(ValueError):
    """Bad input to the inspection CLI (names the file or option and the fix)."""


def parse_dtype(name: str) -> torch.dtype:
    try:
        return resolve_dtype(name)
    except ValueError as err:
        raise InspectError(f"--dtype: {err}") from None


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
    """The OmniGen folder: --base, else the run's model.path; named models (tiny, world) resolved."""
    chosen = base if base is not None else base_from_run(adapter_dir)
    if chosen is None:
        raise InspectError(f"{adapter_dir}: no --base given and no run config.yaml with model.path above the "
                           f"adapter folder; pass --base /path/to/OmniGen-v1 (or --base tiny).")
    if is_named_model(chosen, "omnigen"):
        return resolve_model(chosen, "omnigen")[1]
    return Path(chosen).expanduser()


def load_base_transformer(path: Path, dtype: torch.dtype):
    """The transformer alone, frozen, in eval mode (VAE and tokenizer are not needed here)."""
    from ..model import load_omnigen

    transformer = load_omnigen(path, torch_dtype=dtype).transformer
    return transformer.requires_grad_(False).eval()
