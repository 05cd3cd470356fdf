"""What a run must leave behind, written before anything optional runs, and optional work that
can never change a run's outcome.

Lightning calls checkpoint callbacks after all others at the end of training, so a failing
end-of-run sample grid used to abort the run before ``last.ckpt`` was written.
:class:`RunOutputs` (first in the callback list) writes the final resume checkpoint and the run
summary first, and removes stale temporaries at start and end; :class:`OptionalWork` wraps the
progress grids and the loss curve so that their failure is a warning."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from ..core.atomic import clean_stale, write_json
from ..data.read_counts import reduce_counts


class OptionalWork:
    """Mixin for callbacks whose output is nice to have: ``guarded(what, fn)`` turns any error into
    one warning naming the callback and what failed; training goes on and its outcome is unchanged."""

    def guarded(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - optional output must never stop a run
            rank_zero_warn(f"{type(self).__name__}: could not write {what} ({type(err).__name__}: {err}); "
                           "training goes on, nothing else is affected")
            return None


def data_counts(trainer: pl.Trainer) -> Optional[dict[str, float]]:
    """What the training loader read, used and skipped (by reason), summed over workers and ranks;
    None for a loader that does not count.  A collective: call it on every rank."""
    loader = trainer.train_dataloader
    if not hasattr(loader, "counts"):
        return None
    return reduce_counts(loader.counts)


class RunOutputs(Callback):
    """At the end of training: the resume checkpoint's final save, then ``summary.json``; at start
    and end: stale temporaries of earlier or interrupted runs removed from ``out_dir``."""

    def __init__(self, out_dir: Union[str, Path],
                 summary: Optional[Callable[..., dict]] = None) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)
        self.summary = summary
        self.started = time.time()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.time()
        if trainer.is_global_zero:
            self._clean(before=self.started)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                cb.on_train_end(trainer, pl_module)  # saves last.ckpt now; its own call later is a no-op
        counts = data_counts(trainer)  # a collective: every rank is here
        pl_module.data_counts = counts
        if self.summary is not None and trainer.is_global_zero:
            write_json(self.out_dir / "summary.json",
                       self.summary(trainer, pl_module, time.time() - self.started, counts))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._clean(before=self.started)

    def _clean(self, before: float) -> None:
        removed = clean_stale(self.out_dir, started_before=before, recursive=True)
        if removed:
            rank_zero_warn(f"removed {len(removed)} temporary file(s) left by an interrupted write: "
                           f"{[str(p) for p in removed[:3]]}{' ...' if len(removed) > 3 else ''}")
