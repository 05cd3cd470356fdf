"""Checkpoints of a training run: adapter folders for use, Lightning checkpoints for resume.

Two kinds, two purposes:

* :class:`AdapterCheckpoint` writes adapter-only folders in the adapter library's format
  (safetensors + JSON; ``load_adapter`` reads them) every N optimizer steps and at the end:
  ``<out>/adapters/step_000100/``, ``<out>/adapters/final/`` (+ ``ema/`` inside each when EMA is
  on), keeping the last K step folders.  Each folder appears atomically (written beside, then
  renamed).  Nothing is written after a non-finite loss, nor at the end of a failed run.
* :func:`resume_checkpoint_callback` configures Lightning's ``ModelCheckpoint`` for resume
  checkpoints (``<out>/checkpoints/step_000100.ckpt`` + ``last.ckpt``, every N steps, last K
  kept).  ``DeftOmniModule.on_save_checkpoint`` reduces them to adapter tensors (+ EMA),
  optimizer, scheduler, loop and loader state — no base weights.

:class:`SafeCheckpointIO` is the checkpoint plugin to pass to the Trainer: it *loads* with
``torch.load(weights_only=True)`` whatever the caller asks (every value in our checkpoints is a
tensor or plain data), and *saves* through the atomic writer (:mod:`deft_omni.core.atomic`).  Lightning's own ``TorchCheckpointIO`` goes through fsspec's
local transaction, which writes the temporary file into the system temp folder and
``shutil.move``-s it: a copy, not an atomic rename, whenever /tmp is another filesystem.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ..core.atomic import atomic_file

STEP_DIR_RE = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{int(step):06d}"


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic local saves; loads always with ``weights_only=True`` (see module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("SafeCheckpointIO.save_checkpoint takes no storage_options")
        with atomic_file(path, "wb") as fh:
            torch.save(checkpoint, fh)

    def load_checkpoint(self, path: _PATH, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_resume_checkpoint(path, map_location)


class UnsafeCheckpointError(ValueError):
    """A resume checkpoint holds something other than tensors and plain data."""


def load_resume_checkpoint(path: _PATH, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``, always: a resume checkpoint holds tensors and plain
    data only, so anything else (pickled code) is refused with deft_omni's own words."""
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # torch's own message tells how to load it unsafely: never relay that for a file one did not write.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it asks to run {found.group(1)})" if found else ""
        raise UnsafeCheckpointError(
            f"{path} holds objects that are not tensors or plain data{what}, which deft_omni never writes: it "
            f"may have been tampered with, or written by another program, and it is not loaded. Resume from "
            f"another checkpoint of the run, or start again.") from None


def resume_checkpoint_callback(dirpath: Union[str, Path], every_n_steps: int = 500, keep_last: int = 2,
                               save_last: bool = True) -> ModelCheckpoint:
    """Lightning ``ModelCheckpoint`` for resume: ``step_XXXXXX.ckpt`` every N optimizer steps, the
    ``keep_last`` most recent kept, and ``last.ckpt`` (so ``trainer.fit(ckpt_path="last")`` works)."""
    if every_n_steps < 1:
        raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
    return ModelCheckpoint(
        dirpath=str(dirpath), filename="step_{step:06.0f}", auto_insert_metric_name=False,
        monitor="step", mode="max", save_top_k=max(1, int(keep_last)), every_n_train_steps=int(every_n_steps),
        save_last=save_last, save_on_train_epoch_end=False, enable_version_counter=False,
    )


def recorded_step(path: Path) -> Optional[int]:
    """The ``global_step`` a checkpoint records, or None when it cannot be read (a truncated or
    half-written file is not a checkpoint to resume from).  Tensors are memory-mapped, not read."""
    try:
        ckpt = load_resume_checkpoint(path, map_location="cpu", mmap=True)
    except Exception:  # noqa: BLE001 - unreadable means incomplete here
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return int(step) if isinstance(step, int) else None


def find_last_checkpoint(dirpath: Union[str, Path]) -> Optional[Path]:
    """The complete checkpoint of the highest recorded step among ``last.ckpt`` and
    ``step_*.ckpt`` (``last.ckpt`` on a tie).  A kill while ``last.ckpt`` was rewritten can leave it
    older than the newest step checkpoint; it is then not the one to resume from."""
    dirpath = Path(dirpath)
    found = []
    for p in sorted(dirpath.glob("*.ckpt")):
        if p.name == "last.ckpt" or re.match(r"^step_(\d+)\.ckpt$", p.name):
            step = recorded_step(p)
            if step is not None:
                found.append((step, p.name == "last.ckpt", p))
    return max(found)[2] if found else None


class AdapterCheckpoint(Callback):
    """Adapter-only folders every ``every_n_steps`` optimizer steps and at the end of training.

    ``dirpath/step_000100/`` ... (the ``keep_last`` newest kept; 0 keeps all) and
    ``dirpath/final/``.  Rank zero writes; all ranks hold identical adapters.
    """

    def __init__(self, dirpath: Union[str, Path], every_n_steps: int = 500, keep_last: int = 3,
                 save_final: bool = True) -> None:
        super().__init__()
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0: only the final folder), got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps, self.keep_last, self.save_final = int(every_n_steps), int(keep_last), save_final
        self._last_saved_step = -1

    @property
    def state_key(self) -> str:
        return f"AdapterCheckpoint[{self.dirpath}]"

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_step": int(self._last_saved_step)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_saved_step = int(state_dict.get("last_saved_step", -1))

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> Optional[Path]:
        if getattr(pl_module, "training_failed", False):
            return None
        path = None
        if trainer.is_global_zero:
            path = pl_module.save_adapter_folder(self.dirpath / name)
        trainer.strategy.barrier("deft_omni_adapter_checkpoint")
        return path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._last_saved_step:
            return
        self._save(trainer, pl_module, step_dir_name(step))
        self._last_saved_step = step
        if trainer.is_global_zero:
            self.prune()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_final:
            self._save(trainer, pl_module, "final")

    def step_folders(self) -> list[tuple[int, Path]]:
        if not self.dirpath.is_dir():
            return []
        out = []
        for p in self.dirpath.iterdir():
            m = STEP_DIR_RE.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def prune(self) -> None:
        if self.keep_last <= 0:
            return
        folders = self.step_folders()
        for _, path in folders[: max(0, len(folders) - self.keep_last)]:
            shutil.rmtree(path, ignore_errors=True)
