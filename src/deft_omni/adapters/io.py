"""Adapter folders: safetensors tensors + JSON config + a fingerprint of the base.

Layout (the tensor keys follow peft's, so DEFT relu/qr, PaRa and LoRA folders without fused
groups load with `peft.PeftModel.from_pretrained` on the same base):

    adapter_model.safetensors   base_model.model.<module>.deft_P / .deft_R, or .lora_A.weight /
                                .lora_B.weight; a fused group is one unit named
                                <parent>.<a>+<b>+<c>
    adapter_config.json         peft's config (only when peft can represent the adapter)
    deft_omni.json              our config, the units and the base fingerprint

Writing: `save_adapter` publishes a folder atomically (one rename of a staged sibling);
`extra_files` adds the caller's files to the same publish.  `stage_adapter` writes into a
folder the caller publishes (with ``core.atomic.atomic_dir``), for folders built from several
parts.  Adapter files are never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from safetensors.torch import load_file, save
from torch import nn

from ..core.atomic import atomic_dir
from .config import AdapterConfig
from .errors import AdapterLoadError
from .fingerprint import fingerprint_mismatch
from .inject import inject_adapter
from .model_ops import adapter_branches, adapter_configs, base_fingerprints, delete_adapter
from .peft_config import (
    PEFT_CONFIG_NAME,
    check_agreement,
    config_from_peft,
    peft_config_dict,
    peft_representable,
    read_json_object,
)

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "deft_omni.json"
FORMAT = "deft_omni.adapter"
FORMAT_VERSION = 1
PREFIX = "base_model.model."
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


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


# -- save -----------------------------------------------------------------------------------
ExtraFiles = Callable[[Path], None]


def _adapter_files(model: nn.Module, adapter_name: str, extra: Optional[dict]) -> tuple[dict, dict, Optional[dict]]:
    """(tensors, deft_omni.json content, adapter_config.json content or None) of one adapter."""
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
    return tensors, meta, peft_cfg


def stage_adapter(model: nn.Module, folder: Union[str, Path], adapter_name: str = "default",
                  extra: Optional[dict] = None) -> Path:
    """Write adapter `adapter_name`'s files into `folder` as it is, publishing nothing.

    For callers that assemble one folder from several parts and publish it once: inside
    ``deft_omni.core.atomic.atomic_dir(target)``, stage the adapter into the staging folder, an
    EMA copy into a sub-folder (``stage_adapter(model, staging / "ema", ...)``), and any other
    files beside them; the block's end publishes all of it with one rename.  `folder` is
    created if missing; files of the same names in it are overwritten.  `extra` is merged
    into deft_omni.json (e.g. ``{"training": {...}}``).
    """
    return write_adapter_files(folder, *_adapter_files(model, adapter_name, extra))


def save_adapter(model: nn.Module, path: Union[str, Path], adapter_name: str = "default",
                 extra: Optional[dict] = None, extra_files: Optional[ExtraFiles] = None) -> Path:
    """Write adapter `adapter_name` to folder `path`, atomically; returns `path`.

    The files are staged in a temporary sibling of `path` (``core.atomic.atomic_dir``: umask
    modes, fsync, a recognisable name) that replaces `path` with one rename, so a reader sees
    the old folder or the new one, never a mix.  ``extra_files(staging)``, when given, is
    called with the staging folder after the adapter files are in it, to add files (or
    sub-folders) that must appear in the same publish; if it raises, `path` is untouched.
    """
    tensors, meta, peft_cfg = _adapter_files(model, adapter_name, extra)
    return write_adapter_folder(path, tensors, meta, peft_cfg, extra_files)


def write_adapter_files(folder: Union[str, Path], tensors: dict, meta: dict, peft_cfg: Optional[dict]) -> Path:
    """The three files of an adapter folder, written into `folder` (no publish: see stage_adapter)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors' save_file makes its file 0600 whatever the umask: write its bytes ourselves.
    (folder / WEIGHTS_NAME).write_bytes(save(tensors, metadata={"format": "pt", "deft_omni": FORMAT}))
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    if peft_cfg is not None:
        (folder / PEFT_CONFIG_NAME).write_text(json.dumps(peft_cfg, indent=2))
    return folder


def write_adapter_folder(path: Union[str, Path], tensors: dict, meta: dict, peft_cfg: Optional[dict],
                         extra_files: Optional[ExtraFiles] = None,
                         extra_tensor_files: Optional[dict[str, dict]] = None) -> Path:
    """Stage the files (and `extra_files`; ``extra_tensor_files``: name -> tensors, e.g. another
    runtime's LoRA file) beside `path`, then publish them as `path` at once."""
    with atomic_dir(path) as staging:
        write_adapter_files(staging, tensors, meta, peft_cfg)
        for name, more in (extra_tensor_files or {}).items():
            (Path(staging) / name).write_bytes(save(more, metadata={"format": "pt"}))
        if extra_files is not None:
            extra_files(staging)
    return Path(path)


# -- load -----------------------------------------------------------------------------------
def read_adapter_config(path: Union[str, Path]) -> tuple[AdapterConfig, dict]:
    """(config, metadata) of an adapter folder made by deft_omni or by peft (DEFT/LoRA)."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterLoadError(f"adapter folder {path} does not exist")
    ours, theirs = path / CONFIG_NAME, path / PEFT_CONFIG_NAME
    if ours.exists():
        meta = read_json_object(ours)
        if meta.get("format") != FORMAT:
            raise AdapterLoadError(f"{ours}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        try:
            config = AdapterConfig.from_dict(meta["config"], source=str(ours))
        except (KeyError, TypeError, ValueError) as err:
            raise AdapterLoadError(f"{ours}: field 'config' is invalid: {err}") from None
        if theirs.exists():
            check_agreement(config, meta, ours, theirs)
        return config, meta
    if theirs.exists():
        return config_from_peft(read_json_object(theirs), theirs), {}
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
