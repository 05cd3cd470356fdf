"""Early, readable checks of a composed training config: everything that can be known before the
model's weights load is checked here, each failure one ``config error:`` line naming the key and
the fix (a full-size model takes minutes to load; a traceback after that helps nobody)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from .adapters import AdapterConfig, inject_adapter
from .backbones import NamedModelError, is_named_model, max_image_side, meta_denoiser
from .data.errors import ManifestError
from .data.schema import read_manifest
from .latent_cache import CachedLatentsMismatch, check_cached_sets
from .model.quantize import check_mode, missing_extra
from .training.settings import EMAConfig, LossConfig, ModelConfig, OptimConfig, coerce, plain

DEFAULT_MAX_SIDE = 1024  # what a null image side means, capped to the model


class ConfigError(ValueError):
    """A config value that cannot work, with the key and the fix."""


def _missing_keys(cfg: DictConfig) -> list[str]:
    ours = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return sorted(OmegaConf.missing_keys(ours))


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first setting that cannot work.  Null image sides are
    resolved here (in place) to the model's largest, at most 1024 px."""
    missing = _missing_keys(cfg)
    if missing:
        hints = {
            "model.path": "set model.path=/path/to/OmniGen-v1 (a local folder in diffusers or original layout)",
            "data.train": "set data.train=/shards/dir, or '[{path: /shards/dir, weight: 1.0}]' for several sets",
            "adapter.target_modules": "choose targets=paper|mlp|attn_mlp|all_linear",
        }
        lines = [f"  {k}: {hints.get(k, 'required, no default')}" for k in missing]
        raise ConfigError("missing required values:\n" + "\n".join(lines))
    _check_settings(cfg)
    if cfg.max_steps is None or int(cfg.max_steps) <= 0:
        raise ConfigError(f"max_steps must be a positive number of optimizer steps, got {cfg.max_steps}")
    if int(cfg.data.batch_size) <= 0:
        raise ConfigError(f"data.batch_size must be positive, got {cfg.data.batch_size}")
    _check_model(cfg)
    _check_data(cfg)
    _check_adapter_against_model(cfg)
    resolve_image_sides(cfg)
    _check_cached_latents(cfg)


def _check_settings(cfg: DictConfig) -> None:
    for key, cls in (("model", ModelConfig), ("optim", OptimConfig), ("loss", LossConfig), ("ema", EMAConfig)):
        try:
            coerce(cls, cfg.get(key))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}: {err}") from None
    adapter = plain(cfg.adapter)
    if adapter.get("method") == "full":
        return
    try:
        AdapterConfig(**adapter)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"adapter: {err}") from None


def _check_model(cfg: DictConfig) -> None:
    path, family = cfg.model.path, cfg.model.get("family")
    if not is_named_model(path, family) and not Path(path).exists():
        raise ConfigError(f"model.path={path!r} does not exist; point it at a local model folder (OmniGen: "
                          f"hub Shitao/OmniGen-v1-diffusers or Shitao/OmniGen-v1; SDXL: stabilityai/stable-diffusion-xl-"
                          f"base-1.0; SD1.5: stable-diffusion-v1-5/stable-diffusion-v1-5), or a named model: tiny, world")
    quantize = check_mode(cfg.model.get("quantize"))
    if quantize != "none" and plain(cfg.adapter).get("method") == "full":
        raise ConfigError(f"model.quantize={quantize} stores the frozen base quantised, but adapter.method=full trains "
                          f"every base weight: set model.quantize=none, or train an adapter")
    problem = missing_extra(quantize)
    if problem:
        raise ConfigError(problem)


def train_entries(value: Any) -> list[dict]:
    """``data.train`` as a list of {path, weight}: a plain path string is one set of weight 1."""
    value = plain(value)
    if not value:
        return []
    if isinstance(value, str):
        return [{"path": value, "weight": 1.0}]
    return [{"path": v, "weight": 1.0} if isinstance(v, str) else v for v in value]


def _check_shards(key: str, path: str) -> None:
    if not Path(path).exists():
        raise ConfigError(f"{key}={path!r} does not exist; make the shards with data_prep (make prepare-*) "
                          f"or fix the path")
    try:
        read_manifest(str(path))
    except (ManifestError, OSError, ValueError) as err:
        raise ConfigError(f"{key}: {err}") from None


def _check_data(cfg: DictConfig) -> None:
    entries = train_entries(cfg.data.train)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry:
            raise ConfigError(f"data.train[{i}] needs a 'path' (a shard folder with manifest.json)")
        _check_shards(f"data.train[{i}].path", entry["path"])
    if not entries and not cfg.data.get("synthetic"):
        raise ConfigError("data.train is empty and data.synthetic is off: nothing to train on")
    if cfg.data.get("val"):
        _check_shards("data.val", cfg.data.val)
    prior = cfg.data.get("prior")
    if prior and not (prior.get("class_prompt") and not Path(prior["path"]).exists()):
        _check_shards("data.prior.path", prior["path"])  # a missing folder with a class_prompt is made by train


def _check_adapter_against_model(cfg: DictConfig) -> None:
    """Targets that match nothing and ranks above a layer's width, on a meta-device model."""
    adapter = plain(cfg.adapter)
    if adapter.get("method") == "full":
        return
    try:
        model = meta_denoiser(cfg.model.path, cfg.model.get("family"))
    except NamedModelError as err:
        raise ConfigError(f"model.path={cfg.model.path}: {err}") from None
    except (OSError, ValueError, KeyError):
        return  # an incomplete folder: the loader names the missing files
    if model is None:
        return
    try:
        inject_adapter(model, AdapterConfig(**adapter), "config_check")
    except ValueError as err:
        raise ConfigError(f"adapter: {err}") from None


def _check_cached_latents(cfg: DictConfig) -> None:
    """Sets with cached latents must come from this run's VAE and image fitting (docs/data.md)."""
    buckets = plain(cfg.data.get("bucket_sizes")) or None
    sets = [(f"data.train[{i}].path", e["path"], buckets) for i, e in enumerate(train_entries(cfg.data.train))]
    if cfg.data.get("prior"):
        sets.append(("data.prior.path", cfg.data.prior["path"], buckets))
    if cfg.data.get("val"):
        sets.append(("data.val", cfg.data.val, None))  # train.py's validation loader fits without buckets
    try:
        check_cached_sets(sets, model=cfg.model.path, family=cfg.model.get("family"),
                          max_image_side=int(cfg.data.max_image_side))
    except (CachedLatentsMismatch, NotImplementedError, NamedModelError, OSError) as err:
        raise ConfigError(str(err)) from None


def resolve_image_sides(cfg: DictConfig) -> int:
    """Check every image side of the config against the model's largest (pos_embed_max_size x patch
    x VAE factor for OmniGen) and fill null sides with min(1024, that); returns the limit."""
    try:
        limit = max_image_side(cfg.model.path, cfg.model.get("family"))
    except NamedModelError as err:
        raise ConfigError(f"model.path={cfg.model.path}: {err}") from None
    except (OSError, ValueError, KeyError):
        return DEFAULT_MAX_SIDE  # an incomplete folder: the loader names the missing files
    default = min(DEFAULT_MAX_SIDE, limit)
    why = f"the model takes images of at most {limit} px a side"
    with open_dict(cfg):
        for key in ("data.max_image_side", "callbacks.sample_max_image_side"):
            value = OmegaConf.select(cfg, key)
            if value is None:
                OmegaConf.update(cfg, key, default)
            elif int(value) > limit:
                raise ConfigError(f"{key}={value}: {why}; lower {key} (or leave it null for {default})")
    for i, (h, w) in enumerate(plain(cfg.data.get("bucket_sizes")) or []):
        if max(h, w) > limit:
            raise ConfigError(f"data.bucket_sizes[{i}]={[h, w]}: {why}; drop or shrink that bucket")
    for i, prompt in enumerate(plain(cfg.callbacks.get("sample_prompts")) or []):
        if isinstance(prompt, dict) and max(int(prompt.get("height", 0)), int(prompt.get("width", 0))) > limit:
            raise ConfigError(f"callbacks.sample_prompts[{i}] is {prompt.get('height')}x{prompt.get('width')}: "
                              f"{why}; lower its height/width")
    return limit


__all__ = ["ConfigError", "MissingMandatoryValue", "check_config", "resolve_image_sides", "train_entries"]
