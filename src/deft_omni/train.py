"""Train an adapter on OmniGen: `train(cfg)` plus a thin `@hydra.main`.

    python -m deft_omni.train                                  # the embedded demo (tiny model, CPU)
    python -m deft_omni.train experiment=visualcloze_r32       # the paper's VisualCloze run
    python -m deft_omni.train -m adapter.rank=4,8 adapter.decomposition=qr,relu   # a sweep
    python -m deft_omni.train trainer=ddp4                     # 4 GPUs, bf16, DDP
    python -m deft_omni.train experiment=sfm_camera camera=embed   # camera-aware (docs/camera.md)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from .config_checks import ConfigError, check_config

log = logging.getLogger("deft_omni.train")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _data_paths(cfg: DictConfig) -> tuple[list, Optional[str], Optional[dict]]:
    """(train sets [(path, weight)], val path, prior) with the synthetic set made on first use."""
    from .data import make_synthetic_shards

    data = cfg.data
    train = [(str(t["path"]), float(t.get("weight", 1.0))) for t in (data.train or [])]
    val = data.val
    if data.get("synthetic") and data.synthetic.get("kind") == "camera":
        from .camera.synthetic import make_camera_scene_shards

        syn = data.synthetic
        root = Path(cfg.paths.cache_dir) / f"synthetic-camera-{syn.n_train}-{syn.n_val}-{syn.size}-{syn.seed}"
        made = make_camera_scene_shards(str(root), n_train=syn.n_train, n_val=syn.n_val, size=syn.size,
                                        seed=syn.seed, maxcount=syn.get("maxcount", 32))
        train = train or [(made["train"], 1.0)]
        val = val or made["val"]
    elif data.get("synthetic"):
        syn = data.synthetic
        sizes = tuple(tuple(s) for s in syn.image_sizes)
        root = Path(cfg.paths.cache_dir) / f"synthetic-{syn.n_train}-{syn.n_val}-{syn.seed}-" \
                                         f"{syn.get('maxcount', 16)}-{'_'.join(f'{h}x{w}' for h, w in sizes)}"
        made = make_synthetic_shards(str(root), n_train=syn.n_train, n_val=syn.n_val, image_sizes=sizes,
                                     seed=syn.seed, maxcount=syn.get("maxcount", 16))
        train = train or [(made["train"], 1.0)]
        val = val or made["val"]
    prior = _plain(data.prior) if data.get("prior") else None
    return train, val, prior


class ShardDataModule(pl.LightningDataModule):
    """Builds the loaders once the trainer knows this process's rank (after DDP starts)."""

    def __init__(self, cfg: DictConfig, tokenizer, camera=None, paths=None) -> None:
        super().__init__()
        from .data import OmniGenTrainProcessor, ShardSource

        data = cfg.data
        self.cfg = cfg
        self.processor = OmniGenTrainProcessor(
            tokenizer, max_image_side=data.max_image_side, cfg_dropout=data.cfg_dropout, seed=cfg.seed,
            prior_loss_weight=float(data.prior.get("loss_weight", 1.0)) if data.get("prior") else 1.0,
            camera=camera,
        )
        train, self.val_path, prior = paths or _data_paths(cfg)
        self.sources: list[Any] = [(path, weight) for path, weight in train]
        if prior:
            self.sources.append(ShardSource(prior["path"], float(prior.get("weight", 1.0)), is_prior=True))

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self):
        from .data import build_train_loader

        data = self.cfg.data
        rank, world = self._rank()
        return build_train_loader(
            self.sources, self.processor, batch_size=data.batch_size, num_workers=data.num_workers,
            epoch_length_batches=data.epoch_length_batches, resampled=data.resampled,
            shuffle_buffer=data.shuffle_buffer, seed=self.cfg.seed, strict=data.strict,
            bucket_sizes=[tuple(s) for s in data.bucket_sizes] if data.bucket_sizes else None,
            rank=rank, world_size=world,
        )

    def val_dataloader(self):
        from .data import build_val_loader

        if not self.val_path:
            return []
        # Every rank reads the whole (small) held-out set: equal batch counts, identical metrics.
        return build_val_loader(self.val_path, self.processor, batch_size=self.cfg.data.batch_size,
                                num_workers=0, split_by_rank=False)


def build_trainer(cfg: DictConfig, out_dir: Path, train_cameras: Optional[list] = None):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .training import SafeCheckpointIO, standard_callbacks

    cb = cfg.callbacks
    callbacks = standard_callbacks(
        out_dir, adapter_every_n_steps=cb.adapter_every_n_steps, adapter_keep_last=cb.adapter_keep_last,
        resume_every_n_steps=cb.resume_every_n_steps, resume_keep_last=cb.resume_keep_last,
        sample_prompts=_plain(cb.sample_prompts), sample_every_n_steps=cb.sample_every_n_steps,
        sample_num_steps=cb.sample_num_steps, sample_max_image_side=cb.sample_max_image_side,
        loss_curve_every_n_steps=cb.loss_curve_every_n_steps, progress_refresh_rate=cb.progress_refresh_rate,
    )
    views = int(cb.get("camera_sample_views", 0) or 0)
    if train_cameras and views > 0 and cb.sample_every_n_steps > 0:
        from .camera.callback import CameraSampleCallback, spread

        callbacks.append(CameraSampleCallback(out_dir / "camera_samples", spread(train_cameras, views),
                                              every_n_steps=cb.sample_every_n_steps,
                                              size=int(cb.get("camera_sample_size", 32)),
                                              num_steps=cb.sample_num_steps))
    # User callbacks: `+callbacks.extra='[{_target_: my.module.MyCallback, ...}]'`.
    callbacks += [hydra.utils.instantiate(c) for c in (cb.get("extra") or [])]
    loggers = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(str(out_dir), name="logs", version=""))
    if cfg.logger.tensorboard:
        loggers.append(TensorBoardLogger(str(out_dir), name="tensorboard", version=""))
    trainer_args = _plain(cfg.trainer)
    trainer_args["limit_val_batches"] = cfg.data.val_batches
    return pl.Trainer(**trainer_args, callbacks=callbacks, logger=loggers or False,
                      plugins=[SafeCheckpointIO()], default_root_dir=str(out_dir),
                      enable_checkpointing=True)


def _resolve_ckpt(ckpt_path: Optional[str], out_dir: Path) -> Optional[str]:
    from .training import find_last_checkpoint

    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        found = find_last_checkpoint(out_dir / "checkpoints")
        if found is None:
            raise ConfigError(f"ckpt_path=last: no resume checkpoint in {out_dir / 'checkpoints'}; pass "
                              f"hydra.run.dir=<the run to resume> or a .ckpt file.")
        return str(found)
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r} is not a file.")
    return ckpt_path


def _camera_args(cfg: DictConfig, train_sets: list) -> tuple[dict[str, Any], list[dict]]:
    """(module arguments for ``cfg.camera``, the training cameras); the scene frame comes from the
    training shards' cameras (prior sets carry none).  Mode none (or no camera block) adds nothing."""
    from .camera.config import CameraConfig, CameraError
    from .camera.frame import frame_from_shards

    camera = CameraConfig.from_any(_plain(cfg.get("camera")))
    if not camera.enabled:
        return {}, []
    try:
        frame, instruction, cameras = frame_from_shards([p for p, _ in train_sets], camera.quat_tolerance)
    except CameraError as err:
        raise ConfigError(f"camera.mode={camera.mode}: {err}") from None
    log.info("camera frame from %d training cameras: centre %s, scale %.4g", frame.num_cameras,
             [round(c, 4) for c in frame.centre], frame.scale)
    return {"camera": camera, "camera_frame": frame, "camera_instruction": instruction}, cameras


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one adapter as `cfg` says; returns the run summary (also written to summary.json)."""
    from .training import DeftOmniModule

    check_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    paths = _data_paths(cfg)
    camera_args, train_cameras = _camera_args(cfg, paths[0])
    module = DeftOmniModule(model=_plain(cfg.model), adapter=_plain(cfg.adapter), optim=_plain(cfg.optim),
                            loss=_plain(cfg.loss), ema=_plain(cfg.ema), cache_latents=cfg.cache_latents,
                            **camera_args)
    datamodule = ShardDataModule(cfg, module.tokenizer, camera=module.camera_conditioning, paths=paths)
    trainer = build_trainer(cfg, out_dir, train_cameras)
    ckpt = _resolve_ckpt(cfg.ckpt_path, out_dir)
    if trainer.is_global_zero:
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    elapsed = time.perf_counter() - start
    summary = run_summary(trainer, module, elapsed, out_dir)
    if trainer.is_global_zero:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("run summary: %s", summary)
    return summary


def run_summary(trainer, module, elapsed: float, out_dir: Path) -> dict[str, Any]:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    history_file = out_dir / "loss_history.json"
    history = json.loads(history_file.read_text()).get("train", []) if history_file.exists() else []
    losses = [h[1] if isinstance(h, (list, tuple)) else h.get("loss") for h in history]
    peak = metrics.get("perf/peak_mem_gb")
    return {
        "steps": int(trainer.global_step),
        "final_loss": metrics.get("train/loss", metrics.get("train/loss_step")),
        "min_loss": min(losses) if losses else None,
        "val_loss": metrics.get("val/loss"),
        "trainable_params": int(sum(p.numel() for p in module.parameters() if p.requires_grad)),
        "steps_per_s": trainer.global_step / elapsed if elapsed > 0 else None,
        "peak_memory_mb": None if peak is None else peak * 1024,
        "wall_s": elapsed,
    }


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    try:
        summary = train(cfg)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    return summary.get("final_loss")


if __name__ == "__main__":
    main()
