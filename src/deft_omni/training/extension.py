"""The extension seam: features that add to a training run without living in the module.

An extension (the camera, cached latents, the world judge, ...) subclasses
:class:`TrainingExtension` and overrides only what it contributes.  The module calls every hook
of every extension, in order, and imports no extension itself: dependencies run one way,
extension -> training.  docs/extensions.md shows how to add one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from lightning.pytorch.callbacks import Callback


class TrainingExtension:
    """No-op defaults for every hook; ``name`` keys its checkpoint metadata and modules."""

    name: str = "extension"

    def setup(self, module: Any) -> None:
        """Called once with the DeftOmniModule, after its backbone is loaded and its target attached
        (hooks, token ids)."""

    def modules(self) -> dict[str, nn.Module]:
        """Trainable modules of the extension: registered on the LightningModule (so they move with
        it), trained, checkpointed and averaged by EMA with the target's parameters."""
        return {}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups for :meth:`modules` (default: none, i.e. they get no optimizer)."""
        return []

    def conditioner(self) -> Optional[Any]:
        """A :class:`deft_omni.data.conditioning.SampleConditioner` for the processor, or None."""
        return None

    def batch_scope(self, batch: Mapping[str, Any]) -> contextlib.AbstractContextManager:
        """Entered around every forward of a batch (training, validation)."""
        return contextlib.nullcontext()

    def checkpoint_meta(self) -> dict[str, Any]:
        """Plain data saved in resume checkpoints (weights_only-safe)."""
        return {}

    def check_resume(self, meta: Mapping[str, Any]) -> None:
        """Refuse (ValueError) a checkpoint written with incompatible settings; ``meta`` is what
        :meth:`checkpoint_meta` returned then ({} when the extension was absent)."""

    def write_files(self, folder: Path) -> None:
        """Write the extension's files into a staged adapter folder (and its ema/ copy)."""

    def callbacks(self, out_dir: Path) -> list["Callback"]:
        return []

    def summary(self) -> Optional[dict[str, Any]]:
        """Plain data added to the run's ``summary.json`` under the extension's name (None: nothing)."""
        return None

    def config_dict(self) -> dict[str, Any]:
        """Settings logged with the run's hyper-parameters."""
        return {}

    def describe(self) -> str:
        """One line for the start-of-fit log (empty: nothing to say)."""
        return ""
