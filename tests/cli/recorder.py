"""A callback the subprocess tests add through Hydra: what each rank saw and ended with."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from safetensors.torch import save_file


class RankRecorder(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.keys: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys.append(list(batch["keys"]))

    def on_train_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        (self.out / f"rank{rank}.json").write_text(json.dumps({"keys": self.keys}))
        weights = {n: p.detach().cpu().contiguous() for n, p in pl_module.named_parameters() if p.requires_grad}
        save_file(weights, str(self.out / f"rank{rank}.safetensors"))
