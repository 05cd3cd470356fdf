"""Choosing target Linear layers (as peft does) and wrapping them with adapter branches."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

from torch import nn

from .branches import make_branch
from .config import PROJECTOR_DECOMPOSITIONS, AdapterConfig
from .layer import AdapterLinear

# Output layers 'all-linear' leaves alone (as peft leaves the LM head): they map to the
# output space, where a low-rank change is rarely what one wants.
ALL_LINEAR_EXCLUDED = ("lm_head", "proj_out")
CONFIGS_ATTR = "deft_adapter_configs"


@dataclass
class InjectionReport:
    """What `inject_adapter` wrapped, and the resulting parameter counts."""

    adapter_name: str
    method: str
    decomposition: Optional[str]
    wrapped: list[str] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)
    trainable_params: int = 0
    adapter_params: int = 0
    total_params: int = 0

    def __str__(self) -> str:
        kind = self.method if self.method == "lora" else f"{self.method}/{self.decomposition}"
        pct = 100.0 * self.trainable_params / max(self.total_params, 1)
        return (
            f"adapter {self.adapter_name!r} ({kind}): {len(self.wrapped)} Linear layers wrapped "
            f"({len(self.groups)} fused groups); trainable params: {self.trainable_params:,} of "
            f"{self.total_params:,} ({pct:.4f}%)"
        )


def _matches(name: str, spec: Union[list[str], str, None]) -> bool:
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def candidate_linears(model: nn.Module) -> dict[str, nn.Module]:
    """name -> Linear or AdapterLinear, skipping Linear layers already wrapped."""
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, AdapterLinear):
            out[name] = module
        elif isinstance(module, nn.Linear) and not name.endswith("base_layer"):
            out[name] = module
    return out


def select_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    linears = candidate_linears(model)
    if config.target_modules == "all-linear":
        chosen = [n for n in linears if n.rsplit(".", 1)[-1] not in ALL_LINEAR_EXCLUDED]
    else:
        chosen = [n for n in linears if _matches(n, config.target_modules)]
    chosen = [n for n in chosen if not _matches(n, config.exclude_modules)]
    if not chosen:
        sample = ", ".join(list(linears)[:8])
        raise ValueError(
            f"target_modules={config.target_modules!r} matched no Linear layer (exclude_modules="
            f"{config.exclude_modules!r}). Linear layers look like: {sample} ..."
        )
    return chosen


def _group_parents(chosen: list[str], group: list[str]) -> set[str]:
    """The modules under which ``group``'s members (name suffixes: ``to_q``, or ``attn1.to_q`` to
    fuse only under ``attn1``) hang, from the chosen names that end with a member."""
    parents = set()
    for name in chosen:
        for member in group:
            if name == member:
                parents.add("")
            elif name.endswith("." + member):
                parents.add(name[: -len(member) - 1])
    return parents


def plan_groups(chosen: list[str], fused_groups: list[list[str]]) -> list[list[str]]:
    """Split the chosen names into adapter units: fused sibling groups, then singletons."""
    chosen_set = set(chosen)
    units, used = [], set()
    for group in fused_groups:
        parents = _group_parents(chosen, group)
        for parent in sorted(parents):
            members = [f"{parent}.{child}" if parent else child for child in group]
            present = [m for m in members if m in chosen_set]
            twice = [m for m in present if m in used]
            if twice:
                raise ValueError(f"fused_groups: {twice[0]} belongs to two fused groups; give each layer one group")
            if len(present) == len(members):
                units.append(members)
                used.update(members)
            elif present:
                warnings.warn(
                    f"fused group {group} under {parent!r}: only {present} are targeted; they get "
                    f"separate adapters. Target all of {members} to fuse them.",
                    stacklevel=3,
                )
    units.extend([n] for n in chosen if n not in used)
    return units


def _wrap(model: nn.Module, name: str) -> AdapterLinear:
    module = model.get_submodule(name)
    if isinstance(module, AdapterLinear):
        return module
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    wrapper = AdapterLinear(module)
    setattr(parent, child, wrapper)
    return wrapper


def _warn_erased(model: nn.Module, config: AdapterConfig, units: list[list[str]]) -> None:
    """PaRa with a projector basis at rank = out width removes the whole weight: say so once."""
    if config.method != "para" or config.decomposition not in PROJECTOR_DECOMPOSITIONS:
        return
    erased = ["+".join(names) for names in units
              if sum(model.get_submodule(n).out_features for n in names) == config.rank]
    if erased:
        warnings.warn(
            f"PaRa with the {config.decomposition!r} basis at rank {config.rank} = the output width of "
            f"{len(erased)} module(s) {erased[:8]}{' ...' if len(erased) > 8 else ''}: B right^T is then the "
            f"identity, W' = W0 - B right^T W0 = 0, and these layers can only output their bias. Lower "
            f"adapter.rank below their output width, or exclude them.", UserWarning, stacklevel=3)


def inject_adapter(model: nn.Module, config: AdapterConfig, adapter_name: str = "default") -> InjectionReport:
    """Wrap the targeted Linear layers of `model` with a new adapter named `adapter_name`.

    Base parameters are frozen; the new adapter's parameters are trainable.  Returns a report
    of what was wrapped and the parameter counts.
    """
    if not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter name {adapter_name!r} must be non-empty and contain no '.'")
    configs = getattr(model, CONFIGS_ATTR, None)
    if configs is None:
        configs = {}
        object.__setattr__(model, CONFIGS_ATTR, configs)
    if adapter_name in configs:
        raise ValueError(f"model already has an adapter named {adapter_name!r}")

    units = plan_groups(select_targets(model, config), config.fused_groups)
    _warn_erased(model, config, units)
    for p in model.parameters():
        p.requires_grad_(False)
    report = InjectionReport(adapter_name, config.method, None if config.method == "lora" else config.decomposition)
    for names in units:
        wrappers = [_wrap(model, n) for n in names]
        try:
            branch = make_branch(config, [w.base_layer for w in wrappers])
        except ValueError as err:
            raise ValueError(f"{'+'.join(names)}: {err}") from None
        # New modules start in training mode; an adapter put into an eval-mode model (generation)
        # must not apply its dropout there.
        branch.train(wrappers[0].base_layer.training)
        for i, w in enumerate(wrappers):
            w.train(w.base_layer.training)
            w.add_branch(adapter_name, branch, i, owner=(i == 0))
        report.wrapped.extend(names)
        if len(names) > 1:
            report.groups.append(names)
        report.adapter_params += sum(p.numel() for p in branch.parameters())
    configs[adapter_name] = config
    # Other adapters stay frozen: the new one is the one being trained.
    report.trainable_params = report.adapter_params
    report.total_params = sum(p.numel() for p in model.parameters())
    return report
