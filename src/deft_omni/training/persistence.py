"""What a training run keeps: resume checkpoints (the trained tensors, EMA, extension metadata;
never the base weights) and adapter folders (the trained weights + EMA copy + extension files,
published as one folder).  A mixin of :class:`~deft_omni.training.module.DeftOmniModule`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from lightning.pytorch.utilities import rank_zero_warn

from ..core.atomic import atomic_dir

CHECKPOINT_FORMAT = "deft_omni.training"
CHECKPOINT_VERSION = 2
EMA_FOLDER = "ema"


class PersistenceMixin:
    """Lightning's checkpoint hooks and the adapter-folder writer (uses the module's target,
    backbone, extensions and EMA)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        keys = self._checkpoint_keys()
        missing = [k for k in keys if k not in state]
        if missing:
            raise RuntimeError(f"trained tensors missing from the module state_dict: {missing[:5]}")
        checkpoint["state_dict"] = {k: state[k] for k in keys}
        checkpoint["deft_omni"] = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "adapter_name": self.target.name,
            "adapter_config": self.target.config_dict(), "model_path": self.backbone.path,
            "ema": self.ema.state(), "extensions": {ext.name: ext.checkpoint_meta() for ext in self.extensions},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("deft_omni")
        if not isinstance(meta, Mapping) or meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("this checkpoint was not written by DeftOmniModule (no 'deft_omni' entry)")
        if int(meta.get("version", 1)) != CHECKPOINT_VERSION:
            raise ValueError(f"this checkpoint has format version {meta.get('version', 1)}; this deft_omni reads "
                             f"version {CHECKPOINT_VERSION}: resume it with the deft_omni that wrote it")
        self.target.check_resume(meta["adapter_config"])
        saved_ext = meta.get("extensions") or {}
        for ext in self.extensions:
            ext.check_resume(saved_ext.get(ext.name) or {})
        unknown = sorted(set(saved_ext) - {ext.name for ext in self.extensions})
        if unknown:
            raise ValueError(f"the checkpoint was trained with extension(s) {unknown} that this run lacks: "
                             "resume with the same settings")
        keys, ours = set(checkpoint.get("state_dict", {})), set(self._checkpoint_keys())
        if keys != ours:
            raise ValueError(f"checkpoint tensors do not match this model: unexpected {sorted(keys - ours)[:5]}, "
                             f"missing {sorted(ours - keys)[:5]} (another target_modules or base model?)")
        if meta.get("model_path") not in (None, self.backbone.path):
            rank_zero_warn(f"resuming a run started on {meta['model_path']} with {self.backbone.path}; the adapter "
                           "only makes sense on the same base weights")
        if meta.get("ema") is not None and self.ema_cfg.enabled:
            self.ema.load(meta["ema"], self.trainable_state())

    # ---------------------------------------------------------------- adapter folders
    def save_adapter_folder(self, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
        """Write the trained weights (and, with EMA, ``path/ema``) plus the extensions' files as one
        folder, published with one rename.  Refuses after a non-finite step."""
        if self.training_failed:
            raise RuntimeError("refusing to write an adapter: training stopped on a non-finite loss")
        info = {"training": {"global_step": int(self.global_step) if self._trainer is not None else 0,
                             "ema": False, "model_path": self.backbone.path, **(extra or {})}}
        with atomic_dir(path) as staged:
            self._stage(staged, info)
            if self.ema.model is not None:
                with self.swapped_in_ema():
                    self._stage(staged / EMA_FOLDER, {"training": {**info["training"], "ema": True,
                                                                   "ema_decay": self.ema_cfg.decay,
                                                                   "ema_updates": self.ema.updates}})
        return Path(path)

    def _stage(self, folder: Path, info: dict) -> None:
        self.target.stage(self.denoiser, folder, extra=info)
        for ext in self.extensions:
            ext.write_files(folder)
