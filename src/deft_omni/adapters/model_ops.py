"""Model-level operations: which adapters are active and how strong, merge/unmerge, param groups."""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Optional, Union

import torch
from torch import nn

from .branches import Branch, DeftBranch
from .config import AdapterConfig
from .fingerprint import weight_fingerprint
from .inject import CONFIGS_ATTR
from .layer import AdapterLinear


def adapter_configs(model: nn.Module) -> dict[str, AdapterConfig]:
    return getattr(model, CONFIGS_ATTR, {})


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, AdapterLinear):
            yield name, module


def adapter_branches(model: nn.Module, adapter_name: str) -> Iterator[tuple[list[str], Branch]]:
    """(member module names, branch) for every unit of `adapter_name`, each branch once.  The names
    come in the branch's member order (``branch.rows(i)`` is names[i]'s block), which need not be the
    order the model defines the layers in (CLIP defines k_proj, v_proj, q_proj)."""
    seen: dict[int, tuple[list[tuple[int, str]], Branch]] = {}
    for name, layer in adapter_layers(model):
        if adapter_name in layer.branch_refs:
            branch, index = layer.branch_refs[adapter_name]
            seen.setdefault(id(branch), ([], branch))[0].append((index, name))
    for members, branch in seen.values():
        yield [name for _, name in sorted(members)], branch


def _require(model: nn.Module, names: Iterable[str]) -> None:
    known = adapter_configs(model)
    missing = [n for n in names if n not in known]
    if missing:
        raise KeyError(f"no adapter named {missing} on this model; it has {sorted(known)}")


def set_active_adapters(model: nn.Module, adapters: Union[str, Iterable[str], Mapping[str, float]]) -> None:
    """Choose the adapters that apply, optionally with weights: {'style': 1.0, 'subject': 0.6}.

    Several active adapters add their updates: W' = W0 + sum_a lambda_a dW_a.
    """
    if isinstance(adapters, str):
        adapters = {adapters: 1.0}
    elif not isinstance(adapters, Mapping):
        adapters = {a: 1.0 for a in adapters}
    _require(model, adapters)
    for _, layer in adapter_layers(model):
        layer.active = [a for a in adapters if a in layer.branch_refs]
        for a, scale in adapters.items():
            if a in layer.scales:
                layer.scales[a] = float(scale)


def set_adapter_scale(model: nn.Module, adapter_name: str, scale: float) -> None:
    """Inference strength lambda: dW -> lambda dW for one adapter (live adapters only)."""
    _require(model, [adapter_name])
    for _, layer in adapter_layers(model):
        if adapter_name in layer.scales:
            branch, _ = layer.branch_refs[adapter_name]
            if branch.merged_scale is not None:
                raise RuntimeError(f"adapter {adapter_name!r} is merged; unmerge it before rescaling")
            layer.scales[adapter_name] = float(scale)


def _active_scales(model: nn.Module) -> dict[str, float]:
    scales: dict[str, float] = {}
    for _, layer in adapter_layers(model):
        for a in layer.active:
            scales[a] = layer.scales[a]
    return scales


@torch.no_grad()
def merge_adapters(model: nn.Module, adapter_names: Optional[Iterable[str]] = None) -> list[str]:
    """Fold the (active, scaled) adapters into the base weights; returns the merged names.

    Every factor is computed from the unmerged weights before any weight changes, so merging
    several adapters equals their live weighted sum.  Unmerge restores W0 from the cached
    r x in factors.  A quantised base is refused (`QuantizedMergeError`) before anything changes.
    """
    scales = _active_scales(model)
    names = list(scales) if adapter_names is None else list(adapter_names)
    _require(model, names)
    todo = []
    for a in names:
        for modules, branch in adapter_branches(model, a):
            if branch.merged_scale is None:
                branch.refuse_quantized_merge(modules)
                todo.append((branch, scales.get(a, 1.0)))
    for _, layer in adapter_layers(model):
        if not any(b.merged_scale is not None for b, _ in layer.branch_refs.values()):
            layer.base_fingerprint = weight_fingerprint(layer.base_layer.weight)
    factors = [branch._factors() for branch, _ in todo]
    for (branch, scale), fac in zip(todo, factors):
        branch.merge(scale, fac)
    return names


@torch.no_grad()
def unmerge_adapters(model: nn.Module) -> None:
    """Undo every merge (last merged first) so the base weights are W0 again."""
    for a in reversed(list(adapter_configs(model))):
        for _, branch in adapter_branches(model, a):
            branch.unmerge()


def _owned_branches(model: nn.Module, adapter_name: Optional[str] = None) -> Iterator[tuple[str, str, Branch]]:
    """(module path of the branch, adapter name, branch) for every branch, each once."""
    for layer_name, layer in adapter_layers(model):
        for name, branch in layer.owned.items():
            if adapter_name is None or name == adapter_name:
                yield f"{layer_name}.owned.{name}" if layer_name else f"owned.{name}", name, branch


def adapter_parameters(model: nn.Module, adapter_name: Optional[str] = None) -> Iterator[tuple[str, nn.Parameter]]:
    """(name in ``model.named_parameters()``, parameter) of the adapters' own tensors.

    Found through the module types (the branches the adapter layers own), so a base model
    whose own modules happen to be named like ours is never mistaken for an adapter.
    """
    for path, _, branch in _owned_branches(model, adapter_name):
        yield from branch.named_parameters(prefix=path)


def adapter_parameter_ids(model: nn.Module) -> set[int]:
    """``id()`` of every adapter parameter (of every adapter) in `model`."""
    return {id(p) for m in model.modules() if isinstance(m, Branch) for p in m.parameters()}


def base_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) of the model's own weights: everything but the adapters'.

    Adapter parameters are fp32 masters whatever the base dtype, so e.g. the base's dtype is
    the dtype of the first floating parameter found here.
    """
    skip = adapter_parameter_ids(model)
    for name, param in model.named_parameters():
        if id(param) not in skip:
            yield name, param


def param_groups(model: nn.Module, lr: float, adapter_name: Optional[str] = None,
                 p_lr_ratio: Optional[float] = None, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups: R / LoRA matrices at `lr`, DEFT's P at `p_lr_ratio * lr` (authors: 0.1).

    Only trainable adapter parameters are returned; `p_lr_ratio` defaults to the adapter
    config's.
    """
    configs = adapter_configs(model)
    main, proj = [], []
    for _, _, branch in _owned_branches(model, adapter_name):
        projections = {id(branch.P)} if isinstance(branch, DeftBranch) else set()
        for param in branch.parameters():
            if param.requires_grad:
                (proj if id(param) in projections else main).append(param)
    if not main and not proj:
        raise ValueError("no trainable adapter parameters: inject an adapter first")
    if p_lr_ratio is None:
        ratios = {c.p_lr_ratio for n, c in configs.items() if adapter_name in (None, n)}
        p_lr_ratio = ratios.pop() if len(ratios) == 1 else 0.1
    groups = []
    if main:
        groups.append({"params": main, "lr": lr, "weight_decay": weight_decay, "name": "adapter_R"})
    if proj:
        groups.append({"params": proj, "lr": lr * p_lr_ratio, "weight_decay": weight_decay, "name": "adapter_P"})
    return groups


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter; layers left without any adapter get their plain Linear back."""
    _require(model, [adapter_name])
    for name, layer in list(adapter_layers(model)):
        if adapter_name in layer.branch_refs:
            layer.remove_branch(adapter_name)
        if not layer.branch_refs:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.base_layer)
    del adapter_configs(model)[adapter_name]


def base_fingerprints(model: nn.Module, module_names: Iterable[str]) -> dict[str, Optional[dict]]:
    """Fingerprints of the named wrapped layers' W0 (as before any merge into them)."""
    out = {}
    for name in module_names:
        layer = model.get_submodule(name)
        merged = any(b.merged_scale is not None for b, _ in layer.branch_refs.values())
        out[name] = layer.base_fingerprint if merged else weight_fingerprint(layer.base_layer.weight)
    return out
