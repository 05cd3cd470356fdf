"""Training callbacks that watch a run: progress sample grids and the loss-curve plot.

* :class:`SampleGridCallback` renders a fixed set of prompts (text-only and image-conditioned)
  every N optimizer steps with the Euler sampler of :mod:`deft_omni.generation.sampler` into
  ``<out>/samples/step_000100.png`` (one row per prompt: input images, then the sample).
  Fixed seeds per prompt, so grids compare across steps and runs.
* :class:`LossCurveCallback` records the training loss of every step and ``val/loss`` after each
  validation, keeps them across resumes (callback state in the checkpoint) and plots
  ``<out>/loss_curve.png`` (raw + smoothed train loss, val points; matplotlib's Agg backend) at
  the end and optionally every N steps; the raw numbers also go to ``loss_history.json``.

Throughput (samples/s, tokens/s, step time) and peak memory are logged by ``DeftOmniModule``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from ..core.atomic import atomic_path, write_json
from ..generation.sampler import SamplePrompt, make_grid
from .checkpointing import step_dir_name
from .run_end import OptionalWork, RunOutputs


def _as_prompt(p: Any) -> SamplePrompt:
    if isinstance(p, SamplePrompt):
        return p
    if isinstance(p, str):
        return SamplePrompt(instruction=p)
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(p, DictConfig):
            p = OmegaConf.to_container(p, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return SamplePrompt(**dict(p))


class PeriodicGridCallback(OptionalWork, Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end with ``at_end``) write the image
    that :meth:`render` makes into ``dirpath/step_XXXXXX.png``, atomically, on rank zero only.
    A failure to render or write is a warning, never the end of the run."""

    def __init__(self, dirpath: Union[str, Path], every_n_steps: int = 500, at_start: bool = False,
                 at_end: bool = True) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.at_start, self.at_end = at_start, at_end
        self._last_step = -1
        self.written: list[Path] = []

    def render(self, pl_module: pl.LightningModule) -> Any:
        """The image (PIL) for the current weights."""
        raise NotImplementedError

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> Optional[Path]:
        if not trainer.is_global_zero:
            return None
        path = self.dirpath / f"{name}.png"

        def write() -> Path:
            image = self.render(pl_module)
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            self.written.append(path)
            return path

        return self.guarded(str(path), write)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_start:
            self.save(trainer, pl_module, step_dir_name(trainer.global_step))
            self._last_step = int(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self.save(trainer, pl_module, step_dir_name(step))
        self._last_step = step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end and int(trainer.global_step) != self._last_step:
            self.save(trainer, pl_module, step_dir_name(trainer.global_step))
            self._last_step = int(trainer.global_step)


class SampleGridCallback(PeriodicGridCallback):
    """Sample grids of ``prompts`` (:class:`SamplePrompt` objects, mappings of its fields, or plain
    instruction strings), one row per prompt with its input images.  The transformer is put in
    eval mode and restored afterwards."""

    def __init__(self, dirpath: Union[str, Path], prompts: Sequence[Any], every_n_steps: int = 500,
                 num_steps: int = 8, max_image_side: int = 1024, at_start: bool = False, at_end: bool = True,
                 cell: int = 96) -> None:
        super().__init__(dirpath, every_n_steps, at_start, at_end)
        self.prompts = [_as_prompt(p) for p in prompts]
        if not self.prompts:
            raise ValueError("SampleGridCallback needs at least one prompt")
        self.num_steps = int(num_steps)
        self.max_image_side = int(max_image_side)
        self.cell = int(cell)

    def render(self, pl_module: pl.LightningModule) -> Any:
        """The grid (a PIL image) for the current weights, from the backbone's own sampler."""
        denoiser = pl_module.denoiser
        was_training = denoiser.training
        denoiser.eval()
        try:
            with torch.no_grad(), torch.autocast(device_type=pl_module.device.type, enabled=False):
                rows = pl_module.backbone.render_rows(self.prompts, self.num_steps, self.max_image_side)
        finally:
            denoiser.train(was_training)
        return make_grid(rows, [p.instruction for p in self.prompts], cell=self.cell)


def smooth(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard-style smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


class LossCurveCallback(OptionalWork, Callback):
    """Collects (step, train loss) and (step, val loss); writes ``path`` (PNG) at the end and, with
    ``every_n_steps > 0``, every N steps.  The history is kept in checkpoints, so a resumed run
    plots its whole curve."""

    def __init__(self, path: Union[str, Path], every_n_steps: int = 0, smoothing: float = 0.9,
                 train_key: str = "train/loss", val_key: str = "val/loss") -> None:
        super().__init__()
        self.path = Path(path)
        self.every_n_steps, self.smoothing = int(every_n_steps), float(smoothing)
        self.train_key, self.val_key = train_key, val_key
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"train": [[int(s), float(v)] for s, v in self.train],
                "val": [[int(s), float(v)] for s, v in self.val]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [(int(s), float(v)) for s, v in state_dict.get("train", [])]
        self.val = [(int(s), float(v)) for s, v in state_dict.get("val", [])]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
        step = int(trainer.global_step)
        if self.train and self.train[-1][0] == step:  # gradient accumulation: keep the step's last
            self.train[-1] = (step, value)
        else:
            self.train.append((step, value))
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.guarded(str(self.path), self.plot)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.val_key)
        if value is not None:
            self.val.append((int(trainer.global_step), float(value)))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.guarded(str(self.path), self.plot)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # The curve up to the failure (e.g. a NaN loss) is what one wants to look at; never mask the error.
        if trainer.is_global_zero and self.train:
            self.guarded(str(self.path), self.plot)

    def plot(self) -> Path:
        """Write the PNG (and ``loss_history.json`` beside it) atomically; returns the PNG path."""
        # A bare Figure renders with the Agg canvas and leaves pyplot's global backend alone.
        from matplotlib.figure import Figure

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(7, 4), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        if self.train:
            steps, values = zip(*self.train)
            finite = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
            if finite:
                fs, fv = zip(*finite)
                ax.plot(fs, fv, color="tab:blue", alpha=0.3, linewidth=0.8, label="train loss")
                ax.plot(fs, smooth(fv, self.smoothing), color="tab:blue", linewidth=1.6,
                        label=f"train loss (EMA {self.smoothing:g})")
        if self.val:
            vs, vv = zip(*self.val)
            ax.plot(vs, vv, "o-", color="tab:orange", markersize=4, label="val loss (fixed t-grid)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("rectified-flow MSE")
        ax.grid(True, alpha=0.3)
        if self.train or self.val:
            ax.legend(loc="upper right")
        fig.tight_layout()
        with atomic_path(self.path) as tmp:
            fig.savefig(tmp, format="png")
        write_json(self.path.with_name("loss_history.json"), self.state_dict(), indent=None)
        return self.path


def standard_callbacks(out_dir: Union[str, Path], *, adapter_every_n_steps: int = 500, adapter_keep_last: int = 3,
                       resume_every_n_steps: int = 500, resume_keep_last: int = 2,
                       sample_prompts: Optional[Sequence[Any]] = None, sample_every_n_steps: int = 500,
                       sample_num_steps: int = 8, sample_max_image_side: int = 1024,
                       loss_curve_every_n_steps: int = 0, progress_refresh_rate: int = 1,
                       summary: Optional[Any] = None) -> list[Callback]:
    """The usual set for ``<out>``: what must be written first (:class:`RunOutputs`: the final
    resume checkpoint and ``summary.json`` from ``summary(trainer, module)``), adapter folders
    (``adapters/``), resume checkpoints (``checkpoints/``), then the optional outputs: sample grids
    (``samples/``, when prompts are given), ``loss_curve.png`` and Lightning's TQDM progress bar.
    Pass the Trainer ``plugins=[SafeCheckpointIO()]`` as well."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from .checkpointing import AdapterCheckpoint, resume_checkpoint_callback

    out = Path(out_dir)
    callbacks: list[Callback] = [
        AdapterCheckpoint(out / "adapters", every_n_steps=adapter_every_n_steps, keep_last=adapter_keep_last),
        RunOutputs(out, summary),
        resume_checkpoint_callback(out / "checkpoints", every_n_steps=resume_every_n_steps,
                                   keep_last=resume_keep_last),
        LossCurveCallback(out / "loss_curve.png", every_n_steps=loss_curve_every_n_steps),
    ]
    if progress_refresh_rate > 0:  # 0: no bar (then also pass Trainer(enable_progress_bar=False))
        callbacks.append(TQDMProgressBar(refresh_rate=progress_refresh_rate))
    if sample_prompts:
        callbacks.insert(3, SampleGridCallback(out / "samples", sample_prompts, every_n_steps=sample_every_n_steps,
                                               num_steps=sample_num_steps, max_image_side=sample_max_image_side))
    return callbacks
