"""EMA of the trained weights through diffusers' ``EMAModel``, with deft_omni's two curves.

``EMAModel`` keeps shadows in the parameters' dtype (our trained weights are fp32 masters, so the
shadows are fp32) and returns decay 0 at its first step, i.e. copies the weights: we create it at
the first optimizer step, so that copy is of the weights after step 1.  Its default curve,
``min(decay, (1 + n) / (10 + n))``, is ``ema.warmup=true``; a constant decay is ``min_decay =
decay``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import torch
from diffusers.training_utils import EMAModel

from .settings import EMAConfig


class AdapterEMA:
    """EMA over a fixed, named set of parameters (what trains)."""

    def __init__(self, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.names: list[str] = []
        self.model: Optional[EMAModel] = None

    def _new(self, params: list[torch.nn.Parameter]) -> EMAModel:
        return EMAModel(params, decay=self.cfg.decay, min_decay=0.0 if self.cfg.warmup else self.cfg.decay,
                        update_after_step=0, use_ema_warmup=False, foreach=False)

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.nn.Parameter]) -> None:
        if self.model is None:
            self.names = list(params)
            self.model = self._new(list(params.values()))
        self.model.step([params[n] for n in self.names])

    @property
    def updates(self) -> int:
        return 0 if self.model is None else int(self.model.optimization_step)

    def tensors(self) -> Optional[dict[str, torch.Tensor]]:
        """name -> EMA tensor (None before the first update)."""
        if self.model is None:
            return None
        return dict(zip(self.names, self.model.shadow_params))

    def state(self) -> Optional[dict[str, Any]]:
        if self.model is None:
            return None
        state = self.model.state_dict()
        state["shadow_params"] = [t.detach().cpu() for t in state["shadow_params"]]
        return {"names": list(self.names), "state": state}

    def load(self, saved: Mapping[str, Any], params: Mapping[str, torch.nn.Parameter]) -> None:
        names = list(saved["names"])
        if set(names) != set(params):
            raise ValueError("checkpoint EMA tensors do not match this run's trained parameters")
        self.names = names
        self.model = self._new([params[n] for n in names])
        self.model.load_state_dict(dict(saved["state"]))
        device = next(iter(params.values())).device
        self.model.to(device=device)

    @contextlib.contextmanager
    def swapped_in(self, params: Mapping[str, torch.nn.Parameter]) -> Iterator[None]:
        """Inside the block the parameters hold the EMA weights; restored on exit."""
        if self.model is None:
            raise RuntimeError("no EMA weights (EMA disabled or no optimizer step yet)")
        ordered = [params[n] for n in self.names]
        self.model.store(ordered)
        try:
            self.model.copy_to(ordered)
            yield
        finally:
            self.model.restore(ordered)
