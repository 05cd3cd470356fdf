"""What trains: one adapter injected into the denoiser (the usual case), or every weight of it
(``adapter=full``: from-scratch or full fine-tuning, e.g. the world base).

A target knows its parameters, their optimizer groups, how to check that nothing else trains,
what a resume checkpoint must agree on, and how to write its weights into a folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..adapters import AdapterConfig, adapter_parameters, inject_adapter, param_groups
from ..adapters.io import stage_adapter
from ..core.seeding import derive_seed

FULL = "full"
RESUME_FIELDS = ("method", "rank", "decomposition", "alpha", "fused_groups")


class AdapterTarget:
    """One adapter (DEFT, PaRa or LoRA); only its parameters train."""

    kind = "adapter"

    def __init__(self, cfg: AdapterConfig, name: str = "default", init_seed: int = 0) -> None:
        self.cfg, self.name, self.init_seed = cfg, name, int(init_seed)
        self.report: Any = None

    def attach(self, denoiser: nn.Module) -> str:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.init_seed, "adapter-init", self.name))
            self.report = inject_adapter(denoiser, self.cfg, self.name)
        return str(self.report)

    def parameters(self, denoiser: nn.Module) -> dict[str, nn.Parameter]:
        return dict(adapter_parameters(denoiser, self.name))

    def param_groups(self, denoiser: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        return param_groups(denoiser, lr, adapter_name=self.name, weight_decay=weight_decay)

    def counts(self, denoiser: nn.Module) -> tuple[int, int]:
        return int(self.report.trainable_params), int(self.report.total_params)

    def stage(self, denoiser: nn.Module, folder: Path, extra: Optional[dict] = None) -> None:
        stage_adapter(denoiser, folder, self.name, extra=extra)

    def config_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def check_resume(self, saved: Mapping[str, Any]) -> None:
        if saved.get("method") == FULL:
            raise ValueError("the checkpoint trained every weight (adapter=full) but this run trains an adapter")
        saved_cfg = AdapterConfig.from_dict(dict(saved), source="checkpoint adapter_config")
        for field in RESUME_FIELDS:
            if getattr(saved_cfg, field) != getattr(self.cfg, field):
                raise ValueError(f"checkpoint adapter {field}={getattr(saved_cfg, field)!r} but this run has "
                                 f"{getattr(self.cfg, field)!r}: resume with the same adapter settings")


class FullTarget:
    """Every parameter of the denoiser trains (AdamW without decay on biases and norms)."""

    kind = FULL
    name = "full"

    def attach(self, denoiser: nn.Module) -> str:
        denoiser.requires_grad_(True)
        n = sum(p.numel() for p in denoiser.parameters())
        return f"full training: all {n:,} parameters of the {type(denoiser).__name__} train"

    def parameters(self, denoiser: nn.Module) -> dict[str, nn.Parameter]:
        return dict(denoiser.named_parameters())

    def param_groups(self, denoiser: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        decay = [p for p in denoiser.parameters() if p.dim() >= 2]
        rest = [p for p in denoiser.parameters() if p.dim() < 2]
        return [{"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "weights"},
                {"params": rest, "lr": lr, "weight_decay": 0.0, "name": "biases_norms"}]

    def counts(self, denoiser: nn.Module) -> tuple[int, int]:
        n = sum(p.numel() for p in denoiser.parameters())
        return n, n

    def stage(self, denoiser: nn.Module, folder: Path, extra: Optional[dict] = None) -> None:
        # save_pretrained writes the network's own folder (config.json + safetensors).
        denoiser.save_pretrained(str(folder), safe_serialization=True)

    def config_dict(self) -> dict[str, Any]:
        return {"method": FULL}

    def check_resume(self, saved: Mapping[str, Any]) -> None:
        if saved.get("method") != FULL:
            raise ValueError("the checkpoint trained an adapter but this run trains every weight (adapter=full)")


def make_target(adapter: Any, name: str = "default", init_seed: int = 0):
    """An :class:`AdapterTarget` from an AdapterConfig or mapping; :class:`FullTarget` for
    ``{"method": "full"}`` (other keys, such as a targets preset, are ignored)."""
    from .settings import plain

    adapter = plain(adapter)
    if adapter is None:
        raise ValueError("DeftOmniModule needs an adapter config (AdapterConfig or a mapping), or "
                         "adapter={'method': 'full'} to train every weight")
    if isinstance(adapter, Mapping) and adapter.get("method") == FULL:
        return FullTarget()
    if not isinstance(adapter, AdapterConfig):
        adapter = AdapterConfig.from_dict(dict(adapter), source="adapter settings")
    return AdapterTarget(adapter, name, init_seed)
