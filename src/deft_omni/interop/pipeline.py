"""deft_omni adapters in diffusers' ``OmniGenPipeline``: one call to load, one to unload.

diffusers' OmniGen has no LoRA-loader mixin (``pipe.load_lora_weights`` cannot load anything), so
the adapters are put on ``pipe.transformer`` with deft_omni's own layers: every method (DEFT, PaRa,
LoRA), every basis, fused groups, exported LoRAs and peft folders, LoRAs on OmniGen's original
module names (converted exactly, :mod:`.original_import`), several adapters as a weighted
sum  W' = W0 + sum_a w_a dW_a, live or merged into the weights.  ``pipe(...)`` itself is unchanged.

* live: the base Linear layers are wrapped, never written; unloading puts the very same layers
  back, so the base is restored bit for bit.
* merged (``merge=True``): the touched base weights are copied (to CPU memory) before the merge and
  copied back on unload (bit for bit; an unmerge by subtraction would leave rounding behind).  All adapters of
  one pipeline share one mode: DEFT's update reads W0, so a live DEFT beside a merged adapter would
  see W0 + dW instead of W0.  Loading more merged adapters re-merges the whole set from W0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..adapters import delete_adapter, load_adapter, merge_adapters, set_active_adapters
from ..adapters.inject import CONFIGS_ATTR
from ..adapters.model_ops import adapter_branches, adapter_configs, adapter_layers
from .original_import import is_original_layout, load_original_lora

STATE_ATTR = "deft_omni_pipeline_adapters"
PathLike = Union[str, "os.PathLike[str]"]
AdaptersArg = Union[PathLike, Sequence[Union[PathLike, tuple[PathLike, float]]], Mapping[PathLike, float]]


@dataclass
class _Entry:
    name: str
    path: Path
    weight: float
    owner: "PipelineAdapters"


class _State:
    """What deft_omni put on one transformer (kept on it, so every pipeline sharing it agrees)."""

    def __init__(self, transformer: nn.Module) -> None:
        self.entries: list[_Entry] = []
        self.merged = False
        self.saved: dict[str, torch.Tensor] = {}  # module -> W0 copy (CPU) while merged
        self.requires_grad = {n: p.requires_grad for n, p in transformer.named_parameters()}

    def names(self) -> list[str]:
        return [e.name for e in self.entries]


class PipelineAdapters:
    """The adapters one :func:`load_into_pipeline` call loaded; ``.unload()`` removes them.

    Also a context manager: ``with load_into_pipeline(pipe, DIR): pipe(...)`` unloads on exit."""

    def __init__(self, transformer: nn.Module, merged: bool) -> None:
        self.transformer = transformer
        self.merged = merged
        self.names: list[str] = []
        self.paths: dict[str, Path] = {}
        self.weights: dict[str, float] = {}

    @property
    def loaded(self) -> bool:
        state = getattr(self.transformer, STATE_ATTR, None)
        return state is not None and any(e.owner is self for e in state.entries)

    def unload(self) -> None:
        """Remove this call's adapters (the others stay); a no-op when already unloaded."""
        if self.loaded:
            _remove(self.transformer, [e for e in getattr(self.transformer, STATE_ATTR).entries if e.owner is self])

    def __enter__(self) -> "PipelineAdapters":
        return self

    def __exit__(self, *exc) -> None:
        self.unload()

    def __repr__(self) -> str:
        mode = "merged" if self.merged else "live"
        status = "" if self.loaded else ", unloaded"
        return f"PipelineAdapters({self.weights}, {mode}{status})"


def _transformer_of(pipe) -> nn.Module:
    transformer = getattr(pipe, "transformer", pipe)
    if not isinstance(transformer, nn.Module):
        raise TypeError(f"load_into_pipeline takes a diffusers OmniGenPipeline (or its transformer), got "
                        f"{type(pipe).__name__}")
    return transformer


def _specs(adapters: AdaptersArg, weight: Union[float, Sequence[float]]) -> list[tuple[Path, float]]:
    """(folder, weight) pairs from a folder, a list of folders or (folder, weight) pairs, or a mapping."""
    if isinstance(adapters, Mapping):
        return [(Path(p), float(w)) for p, w in adapters.items()]
    items = [adapters] if isinstance(adapters, (str, os.PathLike)) else list(adapters)
    if isinstance(weight, (int, float)):
        weights = [float(weight)] * len(items)
    else:
        weights = [float(w) for w in weight]
        if len(weights) != len(items):
            raise ValueError(f"load_into_pipeline: {len(items)} adapters but {len(weights)} weights; give one "
                             f"weight per adapter (or one number for all)")
    out = []
    for item, w in zip(items, weights):
        if isinstance(item, tuple):
            path, w = item
            out.append((Path(path), float(w)))
        else:
            out.append((Path(item), w))
    if not out:
        raise ValueError("load_into_pipeline: no adapter folder given")
    for path, w in out:
        if w != w:  # NaN
            raise ValueError(f"load_into_pipeline: the weight of {path} is NaN; give a number")
    return out


def _unique_name(transformer: nn.Module, path: Path) -> str:
    # Adapter names become nn.ModuleDict keys: no dots.
    base = re.sub(r"[^A-Za-z0-9_]", "_", path.expanduser().resolve().name) or "adapter"
    taken = set(adapter_configs(transformer))
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


@torch.no_grad()
def _unmerge(transformer: nn.Module, state: _State) -> None:
    """Back to W0: undo the merges, then copy the saved weights over (exact, whatever rounding did)."""
    if not state.saved:
        return
    for name in state.names():
        for _, branch in adapter_branches(transformer, name):
            branch.unmerge()
    for module, weight in state.saved.items():
        transformer.get_submodule(module).base_layer.weight.copy_(weight)
    state.saved.clear()


@torch.no_grad()
def _apply(transformer: nn.Module, state: _State) -> None:
    """Activate our adapters with their weights (others keep theirs); merge them if asked."""
    ours = {e.name: e.weight for e in state.entries}
    scales: dict[str, float] = {}
    for _, layer in adapter_layers(transformer):
        for a in layer.active:
            if a not in ours:
                scales[a] = layer.scales[a]
    set_active_adapters(transformer, {**scales, **ours})
    if state.merged and ours:
        for module, layer in adapter_layers(transformer):
            if any(n in layer.branch_refs for n in ours):
                # In host memory: on a GPU, a second copy of every touched weight would not fit.
                state.saved[module] = layer.base_layer.weight.detach().to("cpu", copy=True)
        merge_adapters(transformer, list(ours))


def _forget(transformer: nn.Module, state: _State) -> None:
    """Nothing of ours is left: the base parameters get their requires_grad flags back."""
    for name, param in transformer.named_parameters():
        if name in state.requires_grad:
            param.requires_grad_(state.requires_grad[name])
    transformer.__dict__.pop(STATE_ATTR, None)
    if not adapter_configs(transformer):
        transformer.__dict__.pop(CONFIGS_ATTR, None)


def _remove(transformer: nn.Module, entries: list[_Entry]) -> None:
    state: _State = getattr(transformer, STATE_ATTR)
    _unmerge(transformer, state)
    for entry in entries:
        delete_adapter(transformer, entry.name)
        state.entries.remove(entry)
    if state.entries:
        _apply(transformer, state)
    else:
        _forget(transformer, state)


def load_into_pipeline(pipe, adapters: AdaptersArg, weight: Union[float, Sequence[float]] = 1.0, *,
                       merge: bool = False, check_base: bool = True) -> PipelineAdapters:
    """Load deft_omni adapter folders into a diffusers ``OmniGenPipeline`` (or its transformer).

    ``adapters``: a folder (``save_adapter``, a training run's ``adapters/final``, an ``export_lora``
    folder of either layout, a peft DEFT/LoRA folder, a LoRA from OmniGen's own train.py), a list of
    folders or ``(folder, weight)`` pairs, or a mapping ``{folder: weight}``.  ``weight``: the
    strength w in  W0 + sum_a w_a dW_a  (one number for all, or one per folder).  ``merge``: fold the
    sum into the weights (same images, faster steps).  ``check_base``: refuse a folder made for
    another base model (weight checksums).  The new layers take the transformer's train/eval mode.

    Calls add up: adapters already loaded stay.  Returns a :class:`PipelineAdapters` handle whose
    ``.unload()`` removes this call's adapters; :func:`unload_from_pipeline` removes all of them.
    Errors (:class:`deft_omni.adapters.AdapterLoadError`) name the folder; nothing stays loaded
    from a call that failed.
    """
    transformer = _transformer_of(pipe)
    specs = _specs(adapters, weight)
    state: Optional[_State] = getattr(transformer, STATE_ATTR, None)
    if state is not None and state.entries and state.merged != bool(merge):
        mode = "merged" if state.merged else "live"
        raise ValueError(f"this pipeline already has adapters loaded {mode} ({state.names()}); load more with "
                         f"merge={state.merged}, or unload_from_pipeline(pipe) first")
    if state is None:
        state = _State(transformer)
        object.__setattr__(transformer, STATE_ATTR, state)
    _unmerge(transformer, state)
    state.merged = bool(merge)
    handle = PipelineAdapters(transformer, state.merged)
    added: list[_Entry] = []
    try:
        for path, w in specs:
            name = _unique_name(transformer, path)
            if is_original_layout(path):
                names = load_original_lora(transformer, path, adapter_name=name, check_base=check_base)
            else:
                load_adapter(transformer, path, adapter_name=name, check_base=check_base)
                names = [name]
            for name in names:
                added.append(_Entry(name, path, w, handle))
                handle.names.append(name)
                handle.paths[name], handle.weights[name] = path, w
    except BaseException:
        for entry in added:
            delete_adapter(transformer, entry.name)
        if state.entries:
            _apply(transformer, state)
        else:
            _forget(transformer, state)
        raise
    state.entries.extend(added)
    # New layers are built in training mode; in an eval-mode pipeline an adapter trained with
    # dropout would otherwise drop activations at inference.
    for _, layer in adapter_layers(transformer):
        if any(e.name in layer.branch_refs for e in added):
            layer.train(transformer.training)
    _apply(transformer, state)
    return handle


def unload_from_pipeline(pipe) -> list[str]:
    """Remove every adapter :func:`load_into_pipeline` put on this pipeline; returns their names.

    The base weights are the original ones again, bit for bit (live and merged alike)."""
    transformer = _transformer_of(pipe)
    state: Optional[_State] = getattr(transformer, STATE_ATTR, None)
    if state is None:
        return []
    names = state.names()
    _remove(transformer, list(state.entries))
    return names
