"""Helpers shared by the training tests (a uniquely named module: several test folders have a
conftest.py, so ``import conftest`` would be ambiguous)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from deft_omni.data import OmniGenTrainProcessor, build_train_loader, build_val_loader
from deft_omni.training import DeftOmniModule

# The paper's OmniGen layout: one fused adapter over q/k/v and one on the output projection.
PAPER_TARGETS = r"layers\.\d+\.self_attn\.(to_q|to_k|to_v|to_out\.0)"


def adapter_cfg(**overrides) -> dict:
    cfg = dict(method="deft", rank=4, decomposition="qr", target_modules=PAPER_TARGETS,
               fused_groups=[["to_q", "to_k", "to_v"]])
    cfg.update(overrides)
    return cfg


def make_module(model_dir, cls=DeftOmniModule, adapter=None, optim=None, **kwargs) -> DeftOmniModule:
    return cls(model={"path": str(model_dir)}, adapter=adapter or adapter_cfg(),
               optim=optim or {"lr": 1e-3}, verbose=False, **kwargs)


def processor(module, cfg_dropout: float = 0.0) -> OmniGenTrainProcessor:
    return OmniGenTrainProcessor(module.tokenizer, max_image_side=32, cfg_dropout=cfg_dropout, seed=0)


def train_loader(module, shards, epoch_length: int = 3, cfg_dropout: float = 0.0, seed: int = 0):
    return build_train_loader(shards["train"], processor(module, cfg_dropout), batch_size=2, num_workers=0,
                              epoch_length_batches=epoch_length, seed=seed, shuffle_buffer=8)


def val_loader(module, shards):
    return build_val_loader(shards["val"], processor(module), batch_size=2)


def trainer(root, max_steps: int, callbacks=(), plugins=(), **kwargs) -> pl.Trainer:
    opts = dict(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=str(root), deterministic=False, limit_val_batches=0)
    opts.update(kwargs)
    if any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks):
        opts["enable_checkpointing"] = True
    return pl.Trainer(callbacks=list(callbacks), plugins=list(plugins), **opts)


def base_tensors(module) -> dict[str, torch.Tensor]:
    """Every transformer and VAE tensor that is not an adapter parameter (cloned)."""
    adapter = {f"{n}" for n in module.adapter_state()}
    out = {f"transformer.{n}": t.detach().clone() for n, t in module.transformer.state_dict().items()
           if n not in adapter}
    out.update({f"vae.{n}": t.detach().clone() for n, t in module.vae.state_dict().items()})
    return out


def adapter_tensors(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.adapter_state().items()}


class KeyRecorder(pl.Callback):
    """Records (global step after the batch, batch keys) for every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append((int(trainer.global_step), tuple(batch["keys"])))


class Repeat:
    """The same batch ``n`` times (a fixed batch to overfit)."""

    def __init__(self, batch, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch
