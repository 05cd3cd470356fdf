"""`AdapterLinear`: a Linear wrapped with any number of named adapter branches."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from .branches import Branch, DeftBranch
from .functional import DeftActivationFn


class AdapterLinear(nn.Module):
    """Wraps `base_layer` (an `nn.Linear`) and adds  sum_a lambda_a * dW_a x  to its output.

    A branch may be shared by several wrappers (a fused group): the wrapper of the group's
    first member owns it (it is registered there and saved under that name); the others hold
    a plain reference and read their row block of B.
    """

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"AdapterLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.owned = nn.ModuleDict()
        # name -> (branch, member index); plain dict so shared branches are registered once.
        self.branch_refs: dict[str, tuple[Branch, int]] = {}
        self.scales: dict[str, float] = {}
        self.active: list[str] = []
        # Identity of W0 for adapter files while something is merged into it (see merge_adapters).
        self.base_fingerprint = None

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self):
        return self.base_layer.bias

    def add_branch(self, name: str, branch: Branch, member_index: int, owner: bool) -> None:
        if name in self.branch_refs:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        if owner:
            self.owned[name] = branch
        self.branch_refs[name] = (branch, member_index)
        self.scales[name] = 1.0
        self.active.append(name)

    def remove_branch(self, name: str) -> None:
        branch, _ = self.branch_refs.pop(name)
        if branch.merged_scale is not None:
            raise RuntimeError(f"adapter {name!r} is merged; unmerge it before deleting")
        if name in self.owned:
            del self.owned[name]
        self.scales.pop(name)
        if name in self.active:
            self.active.remove(name)

    def live_branches(self) -> Iterator[tuple[Branch, int, float]]:
        for name in self.active:
            branch, idx = self.branch_refs[name]
            scale = self.scales[name]
            if branch.merged_scale is None and scale != 0.0:
                yield branch, idx, scale

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        live = list(self.live_branches())
        if not live:
            return self.base_layer(x, *args, **kwargs)
        lead = x.shape[:-1]
        # The base layer reads the same 2-D view as the branches: both input gradients then
        # meet in one buffer and add in place.  Fed `x` itself, the base gradient and the view's
        # gradient reach x through different nodes and their sum needs a third N x in buffer.
        x2 = x.reshape(-1, x.shape[-1])
        y = self.base_layer(x2, *args, **kwargs)
        # Adapter math runs outside autocast: dtypes are chosen explicitly below.
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self._use_activation_path(live, x2, y):
                branch = live[0][0]
                B, right = branch.basis()
                x_d = branch.dropout(x2) if branch.training and branch.config.dropout > 0 else None
                y = DeftActivationFn.apply(
                    x2, x_d, y, self.base_layer.weight, self.base_layer.bias, B, right,
                    branch.R * branch.scaling,
                )
            else:
                for branch, idx, scale in live:
                    h, B = branch.down(x2, y.dtype, ident=x)
                    y = torch.addmm(y, h, B[branch.rows(idx)].transpose(0, 1), alpha=scale)
        return y.reshape(*lead, y.shape[-1]).to(x.dtype)

    def _use_activation_path(self, live, x2: torch.Tensor, y: torch.Tensor) -> bool:
        """Work on the activations when that is cheaper and exact (full precision).

        Activation association: 3*T*out*r extra flops per step; factored: 2*r*out*in.

        In half precision the factored form is used instead: s R - right^T W0 is formed in
        fp32 so removal and injection cancel exactly at init.
        """
        if len(live) != 1:
            return False
        branch, _, scale = live[0]
        return (
            isinstance(branch, DeftBranch)
            and branch.R is not None
            and not branch.fused
            and scale == 1.0
            and torch.is_grad_enabled()
            and x2.dtype in (torch.float32, torch.float64)
            and y.dtype == x2.dtype == self.base_layer.weight.dtype == branch.P.dtype
            and not self.base_layer.weight.requires_grad
            and 3 * x2.shape[0] < 2 * self.in_features
        )

    def extra_repr(self) -> str:
        names = ", ".join(
            f"{n}({type(b).__name__}, r={b.r}{', fused' if b.fused else ''})" for n, (b, _) in self.branch_refs.items()
        )
        return f"adapters=[{names}]"
