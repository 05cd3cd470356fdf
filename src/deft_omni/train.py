"""Train an adapter (or every weight) on a backbone: `train(cfg)` plus a thin `@hydra.main`.

    python -m deft_omni.train                                  # the embedded demo (tiny model, CPU)
    python -m deft_omni.train experiment=visualcloze_r32       # the paper's VisualCloze run
    python -m deft_omni.train -m adapter.rank=4,8 adapter.decomposition=qr,relu   # a sweep
    python -m deft_omni.train trainer=ddp4                     # 4 GPUs, bf16, DDP
    python -m deft_omni.train experiment=sfm_camera camera=embed   # camera-aware (docs/camera.md)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning.pytorch as pl
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .config_checks import DEFAULT_MAX_SIDE, ConfigError, check_config, train_entries
from .core.atomic import write_json, write_text
from .training.settings import EMAConfig, LossConfig, ModelConfig, OptimConfig, plain

log = logging.getLogger("deft_omni.train")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")

# The settings dataclasses are the schemas (and the only defaults) of their config blocks.  A
# model option must name its weights, so the schema's path is required (ModelConfig() says tiny).
_STORE = ConfigStore.instance()
_STORE.store(group="model", name="schema", node=ModelConfig(path=MISSING))
_STORE.store(group="optim", name="schema", node=OptimConfig)
_STORE.store(group="loss", name="schema", node=LossConfig)
_STORE.store(group="ema", name="schema", node=EMAConfig)


def _data_paths(cfg: DictConfig) -> tuple[list, Optional[str], Optional[dict]]:
    """(train sets [(path, weight)], val path, prior) with a generated set made on first use."""
    from .data import make_synthetic_shards

    data = cfg.data
    train = [(str(t["path"]), float(t.get("weight", 1.0))) for t in train_entries(data.train)]
    val = data.val
    syn = data.get("synthetic")
    prior = plain(data.prior) if data.get("prior") else None
    kind = syn.get("kind", "synthetic") if syn else None
    cache = Path(cfg.paths.cache_dir)
    if kind == "camera":
        from .camera.synthetic import make_camera_scene_shards

        root = cache / f"synthetic-camera-{syn.n_train}-{syn.n_val}-{syn.size}-{syn.seed}"
        made = make_camera_scene_shards(str(root), n_train=syn.n_train, n_val=syn.n_val, size=syn.size,
                                        seed=syn.seed, maxcount=syn.get("maxcount", 32))
    elif kind == "world":
        from .world.shards import make_world_shards
        from .world.spec import Geometry

        opts = dict(n_train=int(syn.n_train), n_val=int(syn.n_val), seed=int(syn.seed), mix=plain(syn.mix),
                    geometry=Geometry(**plain(syn.geometry)), maxcount=int(syn.get("maxcount", 1000)))
        made = make_world_shards(str(cache / f"world-{syn.n_train}-{syn.n_val}-{syn.seed}"), **opts)
    elif kind == "world_concept":
        from .world.concept import concept_options, make_concept_shards

        opts = concept_options(syn)
        made = make_concept_shards(str(cache / "world-concept-{n_refs}-{n_prior}-{seed}".format(**opts)), **opts)
        if float(syn.get("prior_weight", 0)) > 0 and prior is None:
            prior = {"path": made["val"], "weight": float(syn.prior_weight), "loss_weight": 1.0}
    elif kind == "synthetic":
        sizes = tuple(tuple(s) for s in syn.image_sizes)
        root = cache / f"synthetic-{syn.n_train}-{syn.n_val}-{syn.seed}-" \
                       f"{syn.get('maxcount', 16)}-{'_'.join(f'{h}x{w}' for h, w in sizes)}"
        made = make_synthetic_shards(str(root), n_train=syn.n_train, n_val=syn.n_val, image_sizes=sizes,
                                     seed=syn.seed, maxcount=syn.get("maxcount", 16))
    elif kind is not None:
        raise ConfigError(f"data.synthetic.kind={kind!r}; choose synthetic, camera, world or world_concept")
    if kind is not None:
        train, val = train or [(made["train"], 1.0)], val or made["val"]
    return train, val, prior


class ShardDataModule(pl.LightningDataModule):
    """Builds the loaders once the trainer knows this process's rank (after DDP starts)."""

    def __init__(self, cfg: DictConfig, backbone: Any, conditioners=(), paths=None) -> None:
        super().__init__()
        from .data import ShardSource

        data = cfg.data
        self.cfg = cfg
        self.processor = backbone.make_processor(
            max_image_side=data.max_image_side, cfg_dropout=data.cfg_dropout, seed=cfg.seed,
            prior_loss_weight=float(data.prior.get("loss_weight", 1.0)) if data.get("prior") else 1.0,
            conditioners=list(conditioners))
        train, self.val_path, prior = paths or _data_paths(cfg)
        self.sources: list[Any] = [(path, weight) for path, weight in train]
        if prior:
            self.sources.append(ShardSource(prior["path"], float(prior.get("weight", 1.0)), is_prior=True))
        self.loaders: list[Any] = []

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self):
        from .data import build_train_loader

        data = self.cfg.data
        rank, world = self._rank()
        loader = build_train_loader(
            self.sources, self.processor, batch_size=data.batch_size, num_workers=data.num_workers,
            epoch_length_batches=data.epoch_length_batches, resampled=data.resampled,
            split=data.get("split", "auto"), shuffle_buffer=data.shuffle_buffer, seed=self.cfg.seed,
            strict=data.strict, bucket_sizes=[tuple(s) for s in data.bucket_sizes] if data.bucket_sizes else None,
            rank=rank, world_size=world,
        )
        self.loaders.append(loader)
        return loader

    def val_dataloader(self):
        from .data import build_val_loader

        if not self.val_path:
            return []
        # Every rank reads the whole (small) held-out set: equal batch counts, identical metrics.
        loader = build_val_loader(self.val_path, self.processor, batch_size=self.cfg.data.batch_size,
                                  num_workers=0, split_by_rank=False, strict=self.cfg.data.strict)
        self.loaders.append(loader)
        return loader

    def teardown(self, stage: str) -> None:
        # Persistent workers stop now, not whenever the garbage collector gets to them.
        for loader in self.loaders:
            loader.close()
        self.loaders = []


def sample_prompts(cfg: DictConfig, paths: Optional[tuple] = None) -> list:
    """``callbacks.sample_prompts`` if given, else a few held-out samples of the run's own data."""
    from .generation.data_prompts import prompts_from_shards

    cb = cfg.callbacks
    if cb.sample_prompts is not None or int(cb.get("sample_from_data", 0) or 0) <= 0:
        return plain(cb.sample_prompts) or []
    train, val, _ = paths or _data_paths(cfg)
    source = val or (train[0][0] if train else None)
    if source is None:
        return []
    return prompts_from_shards(source, int(cb.sample_from_data), int(cb.sample_max_image_side or DEFAULT_MAX_SIDE))


def build_trainer(cfg: DictConfig, out_dir: Path, extensions=(), paths: Optional[tuple] = None) -> pl.Trainer:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .training import SafeCheckpointIO, standard_callbacks

    cb = cfg.callbacks
    callbacks = standard_callbacks(
        out_dir, adapter_every_n_steps=cb.adapter_every_n_steps, adapter_keep_last=cb.adapter_keep_last,
        resume_every_n_steps=cb.resume_every_n_steps, resume_keep_last=cb.resume_keep_last,
        sample_prompts=sample_prompts(cfg, paths), sample_every_n_steps=cb.sample_every_n_steps,
        sample_num_steps=cb.sample_num_steps, sample_max_image_side=cb.sample_max_image_side or DEFAULT_MAX_SIDE,
        loss_curve_every_n_steps=cb.loss_curve_every_n_steps, progress_refresh_rate=cb.progress_refresh_rate,
        summary=run_summary,
    )
    for ext in extensions:
        callbacks += ext.callbacks(out_dir)
    # User callbacks: `+callbacks.extra='[{_target_: my.module.MyCallback, ...}]'`.
    callbacks += [hydra.utils.instantiate(c) for c in (cb.get("extra") or [])]
    loggers = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(str(out_dir), name="logs", version=""))
    if cfg.logger.tensorboard:
        loggers.append(TensorBoardLogger(str(out_dir), name="tensorboard", version=""))
    trainer_args = plain(cfg.trainer)
    trainer_args["limit_val_batches"] = cfg.data.val_batches
    return pl.Trainer(**trainer_args, callbacks=callbacks, logger=loggers or False,
                      plugins=[SafeCheckpointIO()], default_root_dir=str(out_dir), enable_checkpointing=True)


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit as `cfg` says; returns the run summary (also written to summary.json)."""
    from .extensions import build_extensions
    from .training import DeftOmniModule

    check_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _resolve_ckpt(cfg.ckpt_path, out_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    paths = _data_paths(cfg)
    extensions = build_extensions(cfg, [p for p, _ in paths[0]])
    module = DeftOmniModule(model=plain(cfg.model), adapter=plain(cfg.adapter), optim=plain(cfg.optim),
                            loss=plain(cfg.loss), ema=plain(cfg.ema), cache_latents=cfg.cache_latents,
                            extensions=extensions)
    if paths[2] and paths[2].get("class_prompt"):  # DreamBooth class images, generated once by the base model
        from .backbones.class_images import ensure_class_images

        ensure_class_images(module.backbone, paths[2], size=int(cfg.data.max_image_side), seed=int(cfg.seed))
    conditioners = [c for c in (ext.conditioner() for ext in extensions) if c is not None]
    datamodule = ShardDataModule(cfg, module.backbone, conditioners, paths=paths)
    trainer = build_trainer(cfg, out_dir, extensions, paths)
    if trainer.is_global_zero:
        write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    elapsed = time.perf_counter() - start
    summary = run_summary(trainer, module, elapsed)
    if trainer.is_global_zero:
        write_json(out_dir / "summary.json", summary)
        brief = {k: v for k, v in summary.items() if k not in {e.name for e in extensions}}
        log.info("run summary: %s", brief)  # extension blocks are in summary.json (and log their own lines)
    return summary


def run_summary(trainer: pl.Trainer, module: Any, elapsed: float,
                data_counts: Optional[dict[str, float]] = None) -> dict[str, Any]:
    from .training import LossCurveCallback

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    curves = [cb for cb in trainer.callbacks if isinstance(cb, LossCurveCallback)]
    losses = [v for _, v in curves[0].train] if curves else []
    peak = metrics.get("perf/peak_mem_gb")
    extensions = {ext.name: s for ext in getattr(module, "extensions", []) if (s := ext.summary()) is not None}
    return {
        "steps": int(trainer.global_step),
        "final_loss": metrics.get("train/loss", metrics.get("train/loss_step")),
        "min_loss": min(losses) if losses else None,
        "val_loss": metrics.get("val/loss"),
        "trainable_params": module.trainable_parameter_count,
        "steps_per_s": trainer.global_step / elapsed if elapsed > 0 else None,
        "peak_memory_mb": None if peak is None else peak * 1024,
        "wall_s": elapsed,
        "data": data_counts if data_counts is not None else getattr(module, "data_counts", None),
        **extensions,
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
