"""Adapter branches: the trainable part of one adapter over one (possibly fused) weight.

A branch spans the joint output space of its members (one Linear, or a fused group such as
to_q/to_k/to_v) and exposes its update as a rank-r product  dW = B @ A  (B: out x r, A: r x in):

* DEFT:  B = basis(P),  A = s R - right^T W0
* PaRa:  B = basis(P),  A = - right^T W0
* LoRA:  B = lora_B,    A = s lora_A

Parameters are fp32 masters whatever dtype the base is moved to (see `_apply`).
"""

from __future__ import annotations

import math
import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .bases import compute_basis
from .config import AdapterConfig
from .dense import inner_tensors, is_quantized
from .errors import QuantizedMergeError
from .functional import removal_factor


class _Fp32Master(nn.Module):
    """Keeps parameters fp32 through `model.to(dtype)` / `.half()`; device moves still apply."""

    def _apply(self, fn, recurse=True):
        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))
            # Upcasts (e.g. .double() for reference checks) apply; downcasts do not.
            dtype = probe.dtype if probe.dtype == torch.float64 else t.dtype
            return t.to(device=probe.device, dtype=dtype)

        out = super()._apply(keep_dtype, recurse)
        self._moved(keep_dtype)
        return out

    def _moved(self, fn) -> None:
        """Called after every `.to()`/`.double()`/`.cuda()`: move or drop derived tensors."""


def _storage_key(t: torch.Tensor) -> tuple:
    """All that identifies a tensor's values short of reading them.

    `.data = other` and `vector_to_parameters` rebind the storage (data_ptr) but keep the
    version; `.to()` changes dtype or device; in-place ops under no_grad bump the version.
    A quantised weight is identified by the tensors that hold its integers and scales.
    """
    if is_quantized(t):
        return tuple(_storage_key(part) for part in inner_tensors(t))
    return (t.data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device, t._version)


def _same_values(saved: list[torch.Tensor], live: list[torch.Tensor]) -> bool:
    # Meta tensors hold no values to compare; their storage key already matched.
    return all(s.is_meta or torch.equal(s, t) for s, t in zip(saved, live))


class Branch(_Fp32Master):
    """Common state: members (the wrapped base Linear layers, not owned), scaling, merge state."""

    def __init__(self, config: AdapterConfig, members: list[nn.Linear]) -> None:
        super().__init__()
        in_features = {m.in_features for m in members}
        if len(in_features) != 1:
            raise ValueError(f"fused members must share in_features, got {sorted(in_features)}")
        self.config = config
        self.r = config.rank
        self.in_features = members[0].in_features
        self.splits = [m.out_features for m in members]
        self.out_features = sum(self.splits)
        self.scaling = config.scaling
        # Not registered: the wrapper modules own the base layers.
        self._members = list(members)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged_scale: Optional[float] = None
        self._merge_A: Optional[torch.Tensor] = None
        self._h_cache: Optional[tuple] = None
        self._eval_cache: Optional[tuple] = None

    # -- geometry ---------------------------------------------------------------------------
    @property
    def fused(self) -> bool:
        return len(self._members) > 1

    def rows(self, idx: int) -> slice:
        start = sum(self.splits[:idx])
        return slice(start, start + self.splits[idx])

    def member_weights(self) -> list[torch.Tensor]:
        return [m.weight for m in self._members]

    # -- the update -------------------------------------------------------------------------
    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) in fp32 with dW_joint = B @ A; cached while nothing can change them.

        The cache (no-grad, or frozen adapter) is reused only while every parameter and member
        weight has the same storage, version, dtype and device, and the adapter's own small
        tensors hold the same values: an in-place `p.data.copy_()` changes nothing else, so
        they are compared against a snapshot (r x (in + out) values, one device sync each).
        A `.data` write in place into a base weight (not a rebinding) is not seen: call
        `clear_cache()` after one.  `.to()` drops the cache (`_moved`).
        """
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self._factors()
        own = list(self.parameters())
        key = tuple(_storage_key(t) for t in [*own, *self.member_weights()])
        cache = self._eval_cache
        if cache is None or cache[0] != key or not _same_values(cache[1], own):
            B, A = self._factors()
            self._eval_cache = cache = (key, [p.detach().clone() for p in own], B, A)
        return cache[2], cache[3]

    def clear_cache(self) -> None:
        """Forget the inference factors and the shared fused-group activation."""
        self._eval_cache = None
        self._h_cache = None

    def _moved(self, fn) -> None:
        self.clear_cache()
        if self._merge_A is not None:  # unmerge must run on the weights' new device/dtype
            self._merge_A = fn(self._merge_A)

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def down(self, x: torch.Tensor, cdt: torch.dtype, ident: Optional[torch.Tensor] = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, B): h = A x (with dropout on the injection input), in dtype `cdt`.

        For fused groups the result is shared by the members' calls on the same input: it is
        computed by the first call and handed to the others, so one step does the r-sized
        work once.  The cache is keyed on the input tensor itself (`ident`: the caller's tensor,
        of which `x` may be a fresh reshaped view), so gradient checkpointing's recomputation (a
        new input tensor) recomputes it in the same order as the first pass.
        """
        if not torch.is_grad_enabled() and not (self.training and self.config.dropout > 0):
            B, A = self.factors()  # inference: cached until a parameter or weight changes
            return F.linear(x.to(cdt), A.to(cdt)), B.to(cdt)
        if not self.fused:
            return self._down(x, cdt)
        ident = x if ident is None else ident
        key = (ident._version, self.training, torch.is_grad_enabled(), cdt,
               tuple(p._version for p in self.parameters()))
        cache = self._h_cache
        if cache is not None and cache[0]() is ident and cache[1] == key:
            uses = cache[4] + 1
            self._h_cache = None if uses >= len(self._members) else (*cache[:4], uses)
            return cache[2], cache[3]
        h, B = self._down(x, cdt)
        self._h_cache = (weakref.ref(ident), key, h, B, 1)
        return h, B

    def _down(self, x: torch.Tensor, cdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # -- merge ------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, scale: float = 1.0, factors: Optional[tuple] = None) -> None:
        """W0_m += scale * B_m A for every member; A is cached so unmerge is exact.

        Pass `factors` computed before any branch on the same weights was merged (the removal
        term reads W0): `merge_adapters` does this for several adapters at once.
        """
        if self.merged_scale is not None:
            raise RuntimeError("adapter branch is already merged; unmerge first")
        self.refuse_quantized_merge()
        B, A = self._factors() if factors is None else factors
        self._apply_delta(B, A, scale)
        self._merge_A, self.merged_scale = A.detach(), float(scale)

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_scale is None:
            return
        B, _ = self._basis_only()
        self._apply_delta(B, self._merge_A, -self.merged_scale)
        self._merge_A, self.merged_scale = None, None

    def refuse_quantized_merge(self, modules: Optional[list[str]] = None) -> None:
        """Raise `QuantizedMergeError` when a member's base weight is stored quantised.

        Merging would mean requantising W0 + dW: a new rounding of up to half a quantisation
        step per entry, so the merged model would differ from the live one and unmerge could not
        give W0 back.
        """
        if not any(is_quantized(W) for W in self.member_weights()):
            return
        where = f"module(s) {modules}" if modules else "this adapter's base layers"
        raise QuantizedMergeError(
            f"cannot merge into {where}: the base weights are stored quantised (model.quantize=int8). "
            f"Merging would requantise W0 + dW, which changes it by up to half a quantisation step per "
            f"entry, so merged outputs would differ from live ones and unmerge could not restore W0. "
            f"Keep the adapter live on the quantised base, or load the base unquantised "
            f"(model.quantize=none) to merge; export_lora works on either.")

    def _apply_delta(self, B: torch.Tensor, A: torch.Tensor, scale: float) -> None:
        for i, W in enumerate(self.member_weights()):
            # One member's out_m x in delta at a time: the merged weight has that size anyway.
            delta = (B[self.rows(i)] @ A).mul_(scale)
            W.copy_((W.to(delta.dtype) + delta).to(W.dtype))

    def _basis_only(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError


class DeftBranch(Branch):
    """DEFT (method 'deft') or PaRa (method 'para', no R) over one weight or a fused group."""

    def __init__(self, config: AdapterConfig, members: list[nn.Linear]) -> None:
        super().__init__(config, members)
        if self.r > self.out_features:
            raise ValueError(
                f"rank {self.r} exceeds the output size {self.out_features} (weight {self.out_features}x"
                f"{self.in_features}): DEFT's projection has rank <= out_features. Lower adapter.rank or "
                f"exclude this module."
            )
        dev = members[0].weight.device
        self.P = nn.Parameter(torch.empty(self.out_features, self.r, device=dev, dtype=torch.float32))
        if config.has_r:
            self.R = nn.Parameter(torch.empty(self.r, self.in_features, device=dev, dtype=torch.float32))
        else:
            self.R = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Never zero: at P = 0 relu-type bases have zero gradient and QR/SVD backward divide by 0.
        nn.init.normal_(self.P, mean=0.0, std=0.02)
        if self.R is None or self.P.is_meta:
            return
        if self.config.init_identity:
            if any(w.is_meta for w in self.member_weights()):
                return  # values arrive with load_state_dict / load_adapter
            self.R.copy_(self.removal() / self.scaling)
        else:
            nn.init.normal_(self.R, mean=0.0, std=0.02 * self.config.init_scale)

    def basis(self) -> tuple[torch.Tensor, torch.Tensor]:
        return compute_basis(self.P, self.config.decomposition, self.config.nmf_iters)

    def removal(self, right: Optional[torch.Tensor] = None) -> torch.Tensor:
        """right^T W0_joint = sum_m right_m^T W0_m (r x in, fp32)."""
        if right is None:
            right = self.basis()[1]
        M = None
        for i, W in enumerate(self.member_weights()):
            part = removal_factor(right[self.rows(i)], W)
            M = part if M is None else M + part
        return M

    def _factors(self):
        B, right = self.basis()
        M = self.removal(right)
        A = -M if self.R is None else self.R * self.scaling - M
        return B, A

    def _basis_only(self):
        return self.basis()[0], None

    def _down(self, x, cdt):
        B, right = self.basis()
        M = self.removal(right)
        xc = x.to(cdt)
        if self.R is None:
            h = F.linear(xc, (-M).to(cdt))
        elif isinstance(self.dropout, nn.Identity) or not self.training:
            # s R - M formed in fp32 before any cast: at identity init it is exactly 0.
            h = F.linear(xc, (self.R * self.scaling - M).to(cdt))
        else:
            h = F.linear(self.dropout(xc), (self.R * self.scaling).to(cdt)) - F.linear(xc, M.to(cdt))
        return h, B.to(cdt)


class LoraBranch(Branch):
    """LoRA as peft: lora_A kaiming-uniform, lora_B zero; a fused group shares one A."""

    def __init__(self, config: AdapterConfig, members: list[nn.Linear]) -> None:
        super().__init__(config, members)
        dev = members[0].weight.device
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, device=dev, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, self.r, device=dev, dtype=torch.float32))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.lora_A.is_meta:
            return
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def _factors(self):
        return self.lora_B, self.lora_A * self.scaling

    def _basis_only(self):
        return self.lora_B, None

    def _down(self, x, cdt):
        h = F.linear(self.dropout(x.to(cdt)), (self.lora_A * self.scaling).to(cdt))
        return h, self.lora_B.to(cdt)


def make_branch(config: AdapterConfig, members: list[nn.Linear]) -> Branch:
    cls = LoraBranch if config.method == "lora" else DeftBranch
    return cls(config, members)
