"""Early, readable checks of a composed training config (before any model is loaded)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from .adapters import AdapterConfig
from .backbones import is_named_model


class ConfigError(ValueError):
    """A config value that cannot work, with the key and the fix."""


def _missing_keys(cfg: DictConfig) -> list[str]:
    ours = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return sorted(OmegaConf.missing_keys(ours))


def check_config(cfg: DictConfig) -> None:
    missing = _missing_keys(cfg)
    if missing:
        hints = {
            "model.path": "set model.path=/path/to/OmniGen-v1 (a local folder in diffusers or original layout)",
            "data.train": "set data.train='[{path: /shards/dir, weight: 1.0}]' (shards from data_prep/)",
            "adapter.target_modules": "choose targets=paper|mlp|attn_mlp|all_linear",
        }
        lines = [f"  {k}: {hints.get(k, 'required, no default')}" for k in missing]
        raise ConfigError("missing required values:\n" + "\n".join(lines))
    adapter = OmegaConf.to_container(cfg.adapter, resolve=True)
    try:
        if adapter.get("method") != "full":
            AdapterConfig(**adapter)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"adapter: {err}") from None
    if cfg.max_steps is None or int(cfg.max_steps) <= 0:
        raise ConfigError(f"max_steps must be a positive number of optimizer steps, got {cfg.max_steps}")
    if int(cfg.data.batch_size) <= 0:
        raise ConfigError(f"data.batch_size must be positive, got {cfg.data.batch_size}")
    path = cfg.model.path
    if not is_named_model(path, cfg.model.get("family")) and not Path(path).exists():
        raise ConfigError(f"model.path={path!r} does not exist; point it at a local model folder (OmniGen, hub: "
                          f"Shitao/OmniGen-v1-diffusers; SDXL: stabilityai/stable-diffusion-xl-base-1.0; SD1.5: "
                          f"stable-diffusion-v1-5/stable-diffusion-v1-5)")
    train = cfg.data.train
    for i, entry in enumerate([train] if isinstance(train, str) else (train or [])):
        if isinstance(entry, str):
            entry = {"path": entry}
        if "path" not in entry:
            raise ConfigError(f"data.train[{i}] needs a 'path' (a shard folder with manifest.json)")
        if not Path(entry["path"]).exists():
            raise ConfigError(f"data.train[{i}].path={entry['path']!r} does not exist; make the shards "
                              f"with data_prep/ (make prepare-*) or fix the path")
    if not cfg.data.train and not cfg.data.get("synthetic"):
        raise ConfigError("data.train is empty and data.synthetic is off: nothing to train on")
    for key in ("val",):
        value = cfg.data.get(key)
        if value and not Path(value).exists():
            raise ConfigError(f"data.{key}={value!r} does not exist")
    prior = cfg.data.get("prior")
    if prior and not prior.get("class_prompt") and not Path(prior["path"]).exists():
        raise ConfigError(f"data.prior.path={prior['path']!r} does not exist; make class-prior shards with "
                          f"data_prep.dreambooth priors, or give data.prior.class_prompt to generate them")


__all__ = ["ConfigError", "check_config", "MissingMandatoryValue"]
