"""Training: the LightningModule, what trains (targets), extensions, settings, checkpoints and
callbacks.  The loss and the model plumbing live in :mod:`deft_omni.backbones`.

Wiring (what ``deft_omni.train`` does; see each module's docstring)::

    module = DeftOmniModule(model=ModelConfig(path=...), adapter=AdapterConfig(...),
                            optim=OptimConfig(...), loss=LossConfig(...), ema=EMAConfig(...),
                            extensions=[...])
    proc = module.backbone.make_processor(max_image_side=..., conditioners=[...])
    train = build_train_loader(shards, proc, batch_size, epoch_length_batches=..., seed=...)
    trainer = pl.Trainer(max_steps=..., plugins=[SafeCheckpointIO()], gradient_clip_val=1.0,
                         callbacks=standard_callbacks(out_dir, sample_prompts=[...], ...))
    trainer.fit(module, train, val, ckpt_path="last" if resuming else None)

Resume is exact (same stream of batches, noise and dropout masks) with ``num_workers=0``; with
workers the loader reshuffles the rest of the epoch (see ``deft_omni.data.loader``).
"""

from .checkpointing import (
    AdapterCheckpoint,
    SafeCheckpointIO,
    UnsafeCheckpointError,
    find_last_checkpoint,
    load_resume_checkpoint,
    resume_checkpoint_callback,
    step_dir_name,
)
from .callbacks import LossCurveCallback, SampleGridCallback, smooth, standard_callbacks
from .extension import TrainingExtension
from .metrics import peak_memory_gb
from .module import DeftOmniModule, NonFiniteLossError
from .schedule import WarmupSchedule
from .settings import EMAConfig, LossConfig, ModelConfig, OptimConfig
from .targets import AdapterTarget, FullTarget, make_target

__all__ = [
    "AdapterCheckpoint",
    "AdapterTarget",
    "DeftOmniModule",
    "EMAConfig",
    "FullTarget",
    "LossConfig",
    "LossCurveCallback",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "SafeCheckpointIO",
    "SampleGridCallback",
    "UnsafeCheckpointError",
    "TrainingExtension",
    "WarmupSchedule",
    "find_last_checkpoint",
    "load_resume_checkpoint",
    "make_target",
    "peak_memory_gb",
    "resume_checkpoint_callback",
    "smooth",
    "standard_callbacks",
    "step_dir_name",
]
