"""The training core: rectified-flow loss, the LightningModule, checkpoints and callbacks.

Wiring (what ``train.py`` does; see each module's docstring for the details)::

    module = DeftOmniModule(model=ModelConfig(path=...), adapter=AdapterConfig(...),
                            optim=OptimConfig(...), loss=LossConfig(...), ema=EMAConfig(...))
    proc = OmniGenTrainProcessor(module.tokenizer, ...)
    train = build_train_loader(shards, proc, batch_size, epoch_length_batches=..., seed=...)
    val = build_val_loader(val_shards, proc, batch_size)
    trainer = pl.Trainer(max_steps=..., plugins=[SafeCheckpointIO()], gradient_clip_val=1.0,
                         callbacks=standard_callbacks(out_dir, sample_prompts=[...], ...))
    trainer.fit(module, train, val, ckpt_path="last" if resuming else None)

Resume is exact (same stream of batches, noise and dropout masks) with ``num_workers=0``; with
workers the loader reshuffles the rest of the epoch (see ``deft_omni.data.loader``).
"""

from .loss import (
    DEFAULT_VAL_T_GRID,
    FlowLossOutput,
    LatentEncoder,
    LossConfig,
    base_dtype,
    flow_matching_loss,
    interpolate,
    key_noise,
    model_kwargs,
    per_sample_mse,
    sample_t,
    scale_latents,
    unscale_latents,
    validation_flow_loss,
    weighted_batch_mean,
)
from .module import (
    DeftOmniModule,
    EMAConfig,
    ModelConfig,
    NonFiniteLossError,
    OptimConfig,
    WarmupSchedule,
    peak_memory_gb,
    resolve_dtype,
)
from .checkpointing import (  # noqa: E402 - after module: the callbacks use it
    AdapterCheckpoint,
    SafeCheckpointIO,
    find_last_checkpoint,
    resume_checkpoint_callback,
    step_dir_name,
)
from .callbacks import LossCurveCallback, SampleGridCallback, smooth, standard_callbacks  # noqa: E402

__all__ = [
    "DEFAULT_VAL_T_GRID",
    "AdapterCheckpoint",
    "DeftOmniModule",
    "EMAConfig",
    "FlowLossOutput",
    "LatentEncoder",
    "LossConfig",
    "LossCurveCallback",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "SafeCheckpointIO",
    "SampleGridCallback",
    "WarmupSchedule",
    "base_dtype",
    "find_last_checkpoint",
    "flow_matching_loss",
    "interpolate",
    "key_noise",
    "model_kwargs",
    "peak_memory_gb",
    "per_sample_mse",
    "resolve_dtype",
    "resume_checkpoint_callback",
    "sample_t",
    "scale_latents",
    "smooth",
    "standard_callbacks",
    "step_dir_name",
    "unscale_latents",
    "validation_flow_loss",
    "weighted_batch_mean",
]
