"""Which training extensions a config asks for.  Extensions sit above training (they import it);
this module, at the CLI layer, is the one place that knows them all."""

from __future__ import annotations

from typing import Any, Sequence

from omegaconf import DictConfig

from .config_checks import ConfigError
from .training.extension import TrainingExtension
from .training.settings import plain


def build_extensions(cfg: DictConfig, train_paths: Sequence[str]) -> list[TrainingExtension]:
    """The extensions of a composed training config, in a fixed order."""
    out: list[TrainingExtension] = []
    camera = plain(cfg.get("camera"))
    if camera and camera.get("mode", "none") != "none":
        out.append(_camera(cfg, camera, train_paths))
    world = plain(cfg.get("world"))
    if world and world.get("judge"):
        from .world.judge_extension import WorldJudgeExtension

        out.append(WorldJudgeExtension(**{k: v for k, v in world.items() if k != "judge"}))
    return out


def _camera(cfg: DictConfig, camera: dict[str, Any], train_paths: Sequence[str]) -> TrainingExtension:
    from .camera.config import CameraError
    from .camera.extension import CameraExtension

    cb = cfg.callbacks
    try:
        return CameraExtension.from_shards(
            camera, train_paths, sample_views=int(cb.get("camera_sample_views", 0) or 0),
            sample_size=int(cb.get("camera_sample_size", 32)), sample_every_n_steps=int(cb.sample_every_n_steps),
            sample_num_steps=int(cb.sample_num_steps))
    except CameraError as err:
        raise ConfigError(f"camera.mode={camera['mode']}: {err}") from None
