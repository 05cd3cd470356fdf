"""Adapter folders: safetensors tensors + JSON config + a fingerprint of the base.

Layout (the tensor keys follow peft's, so DEFT relu/qr, PaRa and LoRA folders without fused
groups load with `peft.PeftModel.from_pretrained` on the same base):

    adapter_model.safetensors   base_model.model.<module>.deft_P / .deft_R, or .lora_A.weight /
                                .lora_B.weight; a fused group is one unit named
                                <parent>.<a>+<b>+<c>
    adapter_config.json         peft's config (only when peft can represent the adapter)
    deft_omni.json              our config, the units and the base fingerprint

Adapter files are never unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import PEFT_DECOMPOSITIONS, AdapterConfig
from .fingerprint import fingerprint_mismatch
from .inject import inject_adapter
from .model_ops import adapter_branches, adapter_configs, base_fingerprints, delete_adapter

WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
CONFIG_NAME = "deft_omni.json"
FORMAT = "deft_omni.adapter"
FORMAT_VERSION = 1
PREFIX = "base_model.model."
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class AdapterLoadError(ValueError):
    """An adapter folder that cannot be applied to this model (names the file and the fix)."""


def unit_key(modules: list[str]) -> str:
    if len(modules) == 1:
        return modules[0]
    parent = modules[0].rpartition(".")[0]
    children = "+".join(m.rpartition(".")[2] for m in modules)
    return f"{parent}.{children}" if parent else children


def _tensor_names(config: AdapterConfig) -> tuple[str, ...]:
    if config.method == "lora":
        return ("lora_A.weight", "lora_B.weight")
    return ("deft_P", "deft_R") if config.has_r else ("deft_P",)


def _branch_tensors(branch, config: AdapterConfig) -> tuple[torch.Tensor, ...]:
    if config.method == "lora":
        return (branch.lora_A, branch.lora_B)
    return (branch.P, branch.R) if config.has_r else (branch.P,)


# -- peft config ----------------------------------------------------------------------------
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


# -- save -----------------------------------------------------------------------------------
def _atomic_dir(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))


def _publish(tmp: Path, path: Path) -> None:
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, old / "x")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def save_adapter(model: nn.Module, path: Union[str, Path], adapter_name: str = "default",
                 extra: Optional[dict] = None) -> Path:
    """Write adapter `adapter_name` to folder `path` (atomically: a temp folder, then rename)."""
    configs = adapter_configs(model)
    if adapter_name not in configs:
        raise KeyError(f"no adapter named {adapter_name!r}; the model has {sorted(configs)}")
    config = configs[adapter_name]
    tensors, units, modules = {}, [], []
    for names, branch in adapter_branches(model, adapter_name):
        key = unit_key(names)
        for tname, tensor in zip(_tensor_names(config), _branch_tensors(branch, config)):
            tensors[f"{PREFIX}{key}.{tname}"] = tensor.detach().to(torch.float32).contiguous().cpu()
        units.append({"key": key, "modules": names, "out_splits": branch.splits, "in_features": branch.in_features})
        modules.extend(names)
    fingerprint = base_fingerprints(model, modules)
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "adapter_name": adapter_name,
        "config": config.to_dict(), "units": units, "base_fingerprint": fingerprint,
        "peft_compatible": peft_representable(config), **(extra or {}),
    }
    peft_cfg = peft_config_dict(config, modules) if peft_representable(config) else None
    return write_adapter_folder(path, tensors, meta, peft_cfg)


def write_adapter_folder(path: Union[str, Path], tensors: dict, meta: dict, peft_cfg: Optional[dict],
                         extra_tensor_files: Optional[dict[str, dict]] = None) -> Path:
    """Write the three files (and ``extra_tensor_files``: name -> tensors, e.g. another runtime's
    LoRA file) into a temp folder beside `path`, then move it into place."""
    path = Path(path)
    tmp = _atomic_dir(path)
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "deft_omni": FORMAT})
        for name, extra in (extra_tensor_files or {}).items():
            save_file(extra, str(tmp / name), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        if peft_cfg is not None:
            (tmp / PEFT_CONFIG_NAME).write_text(json.dumps(peft_cfg, indent=2))
        _publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# -- load -----------------------------------------------------------------------------------
def _config_from_peft(data: dict, source: Path) -> AdapterConfig:
    kind = data.get("peft_type")
    targets = data.get("target_modules")
    if kind == "LORA":
        if data.get("use_rslora") or data.get("use_dora"):
            raise AdapterLoadError(f"{source}: rsLoRA/DoRA adapters are not supported; use plain LoRA.")
        return AdapterConfig(method="lora", rank=data["r"], alpha=data.get("lora_alpha"),
                             dropout=data.get("lora_dropout", 0.0), target_modules=targets,
                             exclude_modules=data.get("exclude_modules"))
    if kind == "DEFT":
        return AdapterConfig(method="para" if data.get("para") else "deft", rank=data["r"],
                             alpha=data.get("alpha"), decomposition=data.get("decomposition_method", "relu"),
                             dropout=data.get("deft_dropout", 0.0), target_modules=targets,
                             exclude_modules=data.get("exclude_modules"), init_identity=False,
                             init_scale=data.get("init_scale", 1.0))
    raise AdapterLoadError(f"{source}: field 'peft_type'={kind!r} is not an adapter method deft_omni knows "
                           f"(DEFT or LORA).")


def read_adapter_config(path: Union[str, Path]) -> tuple[AdapterConfig, dict]:
    """(config, metadata) of an adapter folder made by deft_omni or by peft (DEFT/LoRA)."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterLoadError(f"adapter folder {path} does not exist")
    ours, theirs = path / CONFIG_NAME, path / PEFT_CONFIG_NAME
    if ours.exists():
        try:
            meta = json.loads(ours.read_text())
        except json.JSONDecodeError as err:
            raise AdapterLoadError(f"{ours}: not valid JSON ({err})") from None
        if meta.get("format") != FORMAT:
            raise AdapterLoadError(f"{ours}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        try:
            config = AdapterConfig.from_dict(meta["config"], source=str(ours))
        except (KeyError, TypeError, ValueError) as err:
            raise AdapterLoadError(f"{ours}: field 'config' is invalid: {err}") from None
        return config, meta
    if theirs.exists():
        return _config_from_peft(json.loads(theirs.read_text()), theirs), {}
    raise AdapterLoadError(f"{path}: neither {CONFIG_NAME} nor {PEFT_CONFIG_NAME} found; is this an adapter folder?")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    weights = path / WEIGHTS_NAME
    if not weights.exists():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = f" Found {pickles}: pickled files are never loaded (they can run code); convert them to " \
               f"safetensors." if pickles else ""
        raise AdapterLoadError(f"{weights} is missing.{hint}")
    try:
        return load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types
        raise AdapterLoadError(f"{weights}: not a readable safetensors file ({err})") from None


def load_adapter(model: nn.Module, path: Union[str, Path], adapter_name: str = "default",
                 is_trainable: bool = False, check_base: bool = True) -> AdapterConfig:
    """Inject and fill adapter `adapter_name` from folder `path`; returns its config.

    Refuses (AdapterLoadError) a folder made for another base (shapes or weight checksums), a
    missing or unexpected tensor, a wrong shape, an unknown method or a pickled file.
    """
    path = Path(path)
    config, meta = read_adapter_config(path)
    tensors = _read_tensors(path)
    if "units" in meta:
        config.target_modules = [m for u in meta["units"] for m in u["modules"]]
        config.exclude_modules = None
    try:
        inject_adapter(model, config, adapter_name)
    except ValueError as err:
        raise AdapterLoadError(f"{path}: cannot place the adapter on this model: {err}") from None
    try:
        _fill(model, path, config, meta, tensors, adapter_name, check_base)
    except AdapterLoadError:
        delete_adapter(model, adapter_name)
        raise
    for _, branch in adapter_branches(model, adapter_name):
        for p in branch.parameters():
            p.requires_grad_(is_trainable)
    return config


def _fill(model, path, config, meta, tensors, adapter_name, check_base) -> None:
    saved = meta.get("base_fingerprint", {})
    expected = set()
    for names, branch in adapter_branches(model, adapter_name):
        key = unit_key(names)
        current = base_fingerprints(model, names) if check_base else {}
        for i, n in enumerate(names):
            if n not in saved:
                continue
            shape = list(branch.member_weights()[i].shape)
            problem = fingerprint_mismatch(saved[n], current.get(n), shape)
            if problem:
                raise AdapterLoadError(f"{path}: module {n}: {problem}. This adapter was made for another "
                                       f"base model; load the base it was trained on (or pass "
                                       f"check_base=False if you are sure).")
        for tname, param in zip(_tensor_names(config), _branch_tensors(branch, config)):
            full = f"{PREFIX}{key}.{tname}"
            expected.add(full)
            if full not in tensors:
                raise AdapterLoadError(f"{path / WEIGHTS_NAME}: tensor {full!r} for module {key} is missing.")
            t = tensors[full]
            if tuple(t.shape) != tuple(param.shape):
                raise AdapterLoadError(f"{path / WEIGHTS_NAME}: tensor {full!r} has shape {tuple(t.shape)}, but "
                                       f"module {key} needs {tuple(param.shape)}: another base model or rank.")
            with torch.no_grad():
                param.copy_(t.to(param.dtype))
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise AdapterLoadError(f"{path / WEIGHTS_NAME}: unexpected tensors {unexpected[:5]}"
                               f"{' ...' if len(unexpected) > 5 else ''}: the folder and its config disagree.")
