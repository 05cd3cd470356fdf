"""Counting live tensor bytes: the CPU (and fake-tensor) analogue of ``torch.cuda.max_memory_allocated``.

:class:`LiveBytes` is a dispatch mode that sees every tensor an operator returns (forward,
backward, recomputation, optimizer) and counts each storage once while it is alive (a weak
reference to the storage says when it is freed).  Unlike the process RSS it does not depend on
the allocator (glibc on CPU, the caching allocator on a GPU), and it works the same on real and
fake tensors, so a 32-layer fake trace counts exactly what a real run of the same ops holds.

:class:`BlockProbe` reads the live count around each transformer block's first forward: the
increase is what the block leaves alive for the backward pass (its activations).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Optional

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[id(st)] = st.nbytes()
    return sum(seen.values())


class LiveBytes(TorchDispatchMode):
    """Current and peak bytes of the storages alive that the mode has seen.

    Tensors that exist before the mode starts count only once registered (:meth:`register`);
    register the model, optimizer state and inputs first, else a view of a weight would count
    the weight as new."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, weakref.ref] = {}

    def register(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self._track(t)

    def reset_peak(self) -> None:
        self.peak = self.current

    def _release(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._live.pop(key, None)

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        ref = self._live.get(key)
        if ref is not None and ref() is st:
            return
        nbytes = st.nbytes()
        self._live[key] = weakref.ref(st, lambda _r, key=key, n=nbytes: self._release(key, n))
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


class BlockProbe:
    """Live bytes before and after each block's first forward call (later calls are the
    checkpointing recomputation in the backward pass, which is not what a block keeps)."""

    def __init__(self, blocks: Iterable[torch.nn.Module], live: LiveBytes) -> None:
        self.live = live
        self.before: dict[int, int] = {}
        self.after: dict[int, int] = {}
        self._handles = []
        for i, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre(i)))
            self._handles.append(block.register_forward_hook(self._post(i)))

    def _pre(self, i: int):
        def hook(module, args):
            self.before.setdefault(i, self.live.current)
        return hook

    def _post(self, i: int):
        def hook(module, args, out):
            self.after.setdefault(i, self.live.current)
        return hook

    def kept(self) -> list[int]:
        """Bytes each block left alive, in block order."""
        return [self.after[i] - self.before[i] for i in sorted(self.after)]

    def per_layer(self) -> Optional[int]:
        """A representative block's bytes: the last one (the first also holds the inputs it
        converts, such as the cast mask, which every later block shares)."""
        kept = self.kept()
        return kept[-1] if kept else None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
