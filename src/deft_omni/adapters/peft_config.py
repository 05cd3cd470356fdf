"""peft's `adapter_config.json`: writing it, reading it, and checking it against deft_omni.json.

A folder holds both files when peft can represent the adapter: peft reads only
`adapter_config.json`, deft_omni reads `deft_omni.json` first.  If the two disagree the folder
behaves differently in the two libraries, so a load refuses it and names both files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .config import PEFT_DECOMPOSITIONS, AdapterConfig
from .errors import AdapterLoadError

PEFT_CONFIG_NAME = "adapter_config.json"


def peft_config_dict(config: AdapterConfig, modules: list[str]) -> dict:
    if config.method == "lora":
        return {
            "peft_type": "LORA", "r": config.rank, "lora_alpha": config.alpha or config.rank,
            "lora_dropout": config.dropout, "target_modules": modules, "bias": "none",
            "fan_in_fan_out": False, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
            "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
        }
    alpha = config.alpha
    if alpha is not None and float(alpha).is_integer():
        alpha = int(alpha)
    return {
        "peft_type": "DEFT", "r": config.rank, "alpha": alpha, "decomposition_method": config.decomposition,
        "para": config.method == "para", "deft_dropout": config.dropout, "target_modules": modules,
        "init_scale": config.init_scale, "init_weights": config.init_identity, "bias": "none",
        "fan_in_fan_out": False, "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
    }


def peft_representable(config: AdapterConfig) -> bool:
    if config.fused_groups:
        return False
    return config.method == "lora" or config.decomposition in PEFT_DECOMPOSITIONS


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`, or AdapterLoadError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterLoadError(f"{path}: not valid JSON ({err}); re-save the adapter or fix the file.") from None
    if not isinstance(data, dict):
        raise AdapterLoadError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    return data


def _required(data: dict, name: str, source: Path) -> Any:
    if name not in data:
        raise AdapterLoadError(f"{source}: field {name!r} is missing; every {data.get('peft_type')} adapter "
                               f"config needs it.")
    return data[name]


def config_from_peft(data: dict, source: Path) -> AdapterConfig:
    """deft_omni's AdapterConfig for a peft DEFT or LORA config (read from `source`)."""
    kind = data.get("peft_type")
    if kind not in ("LORA", "DEFT"):
        raise AdapterLoadError(f"{source}: field 'peft_type'={kind!r} is not an adapter method deft_omni knows "
                               f"(DEFT or LORA).")
    rank, targets = _required(data, "r", source), _required(data, "target_modules", source)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise AdapterLoadError(f"{source}: field 'r' must be a positive integer, got {rank!r}.")
    if kind == "LORA" and (data.get("use_rslora") or data.get("use_dora")):
        raise AdapterLoadError(f"{source}: rsLoRA/DoRA adapters are not supported; use plain LoRA.")
    try:
        if kind == "LORA":
            return AdapterConfig(method="lora", rank=rank, alpha=data.get("lora_alpha"),
                                 dropout=data.get("lora_dropout", 0.0), target_modules=targets,
                                 exclude_modules=data.get("exclude_modules"))
        return AdapterConfig(method="para" if data.get("para") else "deft", rank=rank, alpha=data.get("alpha"),
                             decomposition=data.get("decomposition_method", "relu"),
                             dropout=data.get("deft_dropout", 0.0), target_modules=targets,
                             exclude_modules=data.get("exclude_modules"), init_identity=False,
                             init_scale=data.get("init_scale", 1.0))
    except (TypeError, ValueError) as err:
        raise AdapterLoadError(f"{source}: {err}") from None


def _targets_cover(spec: Any, modules: list[str]) -> bool:
    """Whether peft's `target_modules` selects exactly `modules` (as far as a folder can tell)."""
    if isinstance(spec, str):
        return all(re.fullmatch(spec, m) for m in modules)
    names = set(spec or [])
    return all(m in names or any(m.endswith("." + n) for n in names) for m in modules) and \
        all(any(m == n or m.endswith("." + n) for m in modules) for n in names)


def config_disagreements(ours: AdapterConfig, meta: dict, theirs: AdapterConfig, raw: dict) -> list[str]:
    """What peft would read differently from deft_omni in a folder holding both configs."""
    if not peft_representable(ours):
        reason = "fused groups" if ours.fused_groups else f"the {ours.decomposition!r} basis"
        return [f"the adapter uses {reason}, which peft cannot represent, yet a peft config is present"]
    out = []
    if theirs.method != ours.method:
        out.append(f"method {ours.method!r} vs {theirs.method!r} (peft_type/para)")
    if theirs.rank != ours.rank:
        out.append(f"r {ours.rank} vs {theirs.rank}")
    if not math.isclose(theirs.scaling, ours.scaling, rel_tol=1e-9):
        out.append(f"alpha {ours.alpha} vs {theirs.alpha} (scaling {ours.scaling:g} vs {theirs.scaling:g})")
    if ours.method != "lora" and theirs.method != "lora" and theirs.decomposition != ours.decomposition:
        out.append(f"decomposition {ours.decomposition!r} vs {theirs.decomposition!r} (decomposition_method)")
    if not math.isclose(theirs.dropout, ours.dropout):
        out.append(f"dropout {ours.dropout} vs {theirs.dropout}")
    modules = [m for u in meta.get("units", []) for m in u["modules"]]
    if modules and not _targets_cover(raw.get("target_modules"), modules):
        out.append(f"target_modules {modules} vs {raw.get('target_modules')!r}")
    return out


def check_agreement(ours: AdapterConfig, meta: dict, ours_file: Path, theirs_file: Path) -> None:
    """Refuse a folder whose peft config says something else than deft_omni.json."""
    raw = read_json_object(theirs_file)
    theirs = config_from_peft(raw, theirs_file)
    problems = config_disagreements(ours, meta, theirs, raw)
    if problems:
        raise AdapterLoadError(
            f"{ours_file} and {theirs_file} disagree: {'; '.join(problems)}. deft_omni reads the first, peft the "
            f"second, so the folder would load differently in each. Re-save it with save_adapter, or delete "
            f"the file that is wrong.")
