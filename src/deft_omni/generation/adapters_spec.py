"""``--adapter DIR[:WEIGHT]``: parse, load onto the transformer, and describe for the sidecar.

Several adapters are combined as a weighted sum of their updates, W' = W0 + sum_a w_a dW_a
(``set_active_adapters``); ``merge=True`` folds that sum into the base weights, which gives the
same images and a faster forward.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from ..adapters import AdapterLoadError, load_adapter, merge_adapters, read_adapter_config, set_active_adapters
from ..adapters.io import WEIGHTS_NAME
from .errors import GenerationError


@dataclass
class AdapterSpec:
    """One adapter folder and its weight w in the sum W0 + sum_a w_a dW_a."""

    path: Path
    weight: float = 1.0
    name: Optional[str] = None  # the adapter's name on the model; from the folder name when None

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser()
        self.weight = float(self.weight)
        if self.weight != self.weight:  # NaN
            raise GenerationError(f"--adapter {self.path}: the weight is NaN; give a number, e.g. {self.path}:0.8")


def parse_adapter_arg(text: str) -> AdapterSpec:
    """``DIR`` or ``DIR:WEIGHT``; a suffix that is not a number belongs to the path."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return AdapterSpec(Path(head), float(tail))
        except ValueError:
            pass
    return AdapterSpec(Path(text), 1.0)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _unique_names(specs: list[AdapterSpec]) -> list[str]:
    names: list[str] = []
    for i, spec in enumerate(specs):
        # Adapter names become nn.ModuleDict keys: no dots.
        base = spec.name or re.sub(r"[^A-Za-z0-9_]", "_", spec.path.resolve().name) or f"adapter{i}"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def describe_adapter(spec: AdapterSpec, name: str) -> dict[str, Any]:
    """Identity of an adapter folder for the sidecar: config, sha256 of the weights, provenance."""
    config, meta = read_adapter_config(spec.path)
    info: dict[str, Any] = {
        "path": str(spec.path.resolve()), "name": name, "weight": spec.weight, "method": config.method,
        "decomposition": config.decomposition if config.method != "lora" else None, "rank": config.rank,
        "alpha": config.alpha, "sha256": file_sha256(spec.path / WEIGHTS_NAME),
    }
    if "exported_from" in meta:
        info["exported_from"] = meta["exported_from"]
    return info


def check_adapter_folder(spec: AdapterSpec) -> None:
    """Fail before loading the model when the folder or its weights file is missing."""
    if not spec.path.is_dir():
        raise GenerationError(f"--adapter {spec.path}: no such folder; give the folder that holds "
                              f"{WEIGHTS_NAME} and deft_omni.json (or adapter_config.json)")
    if not (spec.path / WEIGHTS_NAME).is_file():
        raise GenerationError(f"--adapter {spec.path}: {WEIGHTS_NAME} is missing; is this an adapter folder?")
    try:
        read_adapter_config(spec.path)
    except AdapterLoadError as err:
        raise GenerationError(f"--adapter {spec.path}: {err}") from None


def apply_adapters(transformer: nn.Module, specs: list[AdapterSpec], merge: bool = False,
                   model_path: Optional[Path] = None) -> list[dict[str, Any]]:
    """Load every adapter, activate their weighted sum, optionally merge; returns their identities."""
    if not specs:
        return []
    names = _unique_names(specs)
    identities = []
    for spec, name in zip(specs, names):
        check_adapter_folder(spec)
        try:
            load_adapter(transformer, spec.path, adapter_name=name)
        except AdapterLoadError as err:
            base = f"--model {model_path}" if model_path else "the given model"
            raise GenerationError(f"--adapter {spec.path} does not fit {base}: {err} "
                                  f"Pass --model with the base model this adapter was trained on.") from None
        identities.append(describe_adapter(spec, name))
    set_active_adapters(transformer, {name: spec.weight for spec, name in zip(specs, names)})
    if merge:
        merge_adapters(transformer)
    return identities
