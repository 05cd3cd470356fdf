"""`DeftOmniModule`: the LightningModule that fine-tunes OmniGen's transformer with one adapter.

What it holds and why:

* the OmniGen parts (``load_omnigen``): the transformer (a registered submodule, so Lightning
  moves and wraps it) with one adapter injected, and the frozen fp32 VAE, kept *unregistered*
  so that a ``precision="bf16-true"`` conversion never touches it and it never enters a
  checkpoint;
* the training step: rectified-flow loss (:mod:`.loss`) with every random draw taken from a
  generator seeded by (seed, step, micro-batch, rank), so runs are reproducible and a resumed
  run continues exactly; a non-finite loss or gradient raises :class:`NonFiniteLossError`
  before the optimizer step;
* AdamW over two parameter groups (R/LoRA at ``lr``, DEFT's P at ``p_lr_ratio * lr``) and a
  LambdaLR warm-up + constant/cosine schedule;
* deterministic validation (fixed noise per sample key, fixed t-grid): ``val/loss`` compares
  across runs;
* adapter-only checkpoints: ``on_save_checkpoint`` keeps only the adapter tensors (+ EMA) and
  rewrites the train loader's state from the step count (Lightning prefetches one batch);
  ``on_load_checkpoint`` refuses a checkpoint whose adapter keys differ from this model's;
* camera conditioning (``camera``, :mod:`deft_omni.camera`): in ``embed`` mode a
  :class:`CameraEncoder` (registered, fp32, its own param group, in checkpoints, EMA and the
  adapter folder) feeds the camera token's embedding through a hook on ``embed_tokens``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..adapters import (
    AdapterConfig,
    adapter_parameters,
    inject_adapter,
    param_groups,
    save_adapter,
)
from ..camera.conditioning import CameraConditioning, resolve_token_id
from ..camera.config import CameraConfig
from ..camera.encoder import CameraEmbedHook, CameraEncoder
from ..camera.frame import SceneFrame
from ..camera.io import CameraBundle, save_camera_files
from ..core.seeding import derive_seed
from ..model import OmniGenParts, ensure_tiny_omnigen, load_omnigen
from .loss import (
    FlowLossOutput,
    LatentEncoder,
    LossConfig,
    flow_matching_loss,
    input_image_cache_keys,
    model_kwargs,
    sample_t,
    validation_flow_loss,
)

CHECKPOINT_FORMAT = "deft_omni.training"
CHECKPOINT_VERSION = 1
EMA_FOLDER = "ema"
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "16": torch.float16,
}


class NonFiniteLossError(FloatingPointError):
    """The loss (or the adapter gradient) of a training step is NaN/Inf.

    Raised before the optimizer step, so the adapter weights are those of the previous step and
    no adapter folder is written for the failing step.
    """


# ------------------------------------------------------------------------------ settings
@dataclass
class ModelConfig:
    """Which OmniGen to load and how."""

    path: Optional[str] = None  # an OmniGen folder (diffusers or original layout); None/"tiny": the tiny test model
    torch_dtype: str = "float32"  # the transformer's dtype ("bfloat16" on GPU); the VAE is always fp32
    gradient_checkpointing: bool = False
    adapter_name: str = "default"
    init_seed: int = 0  # seeds the adapter's random init (DEFT's P, LoRA's A); the caller's RNG is untouched


@dataclass
class OptimConfig:
    """AdamW over (R, P) groups and the LambdaLR schedule (stepped every optimizer step)."""

    lr: float = 1e-3
    p_lr_ratio: Optional[float] = None  # None: the adapter config's p_lr_ratio (authors: 0.1)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr
    schedule: str = "constant"  # "constant" | "cosine"
    total_steps: Optional[int] = None  # cosine horizon; None: the trainer's estimated_stepping_batches
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"OptimConfig.schedule={self.schedule!r}; choose 'constant' or 'cosine'")
        if not self.lr > 0:
            raise ValueError(f"OptimConfig.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"OptimConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]


@dataclass
class EMAConfig:
    """Exponential moving average of the adapter weights (fp32, on the training device)."""

    enabled: bool = False
    decay: float = 0.999
    warmup: bool = False  # effective decay min(decay, (1 + n) / (10 + n)) after n updates

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"EMAConfig.decay must lie in (0, 1), got {self.decay}")


class WarmupSchedule:
    """LambdaLR factor: linear warm-up, then constant or cosine decay to ``min_lr_ratio``.

    A callable object (not a lambda) so LambdaLR saves its (plain) attributes in checkpoints.
    """

    def __init__(self, warmup_steps: int, schedule: str, total_steps: int, min_lr_ratio: float = 0.0):
        self.warmup_steps, self.schedule = int(warmup_steps), str(schedule)
        self.total_steps, self.min_lr_ratio = int(total_steps), float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (dicts/lists), anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _coerce(cls, value: Any):
    value = _plain(value)
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        if cls is AdapterConfig:
            return AdapterConfig.from_dict(dict(value), source="adapter settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")


def resolve_dtype(value: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    key = str(value).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown torch_dtype {value!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def peak_memory_gb(device: torch.device) -> float:
    """CUDA max allocated on GPU; the process's peak RSS on CPU (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


# -------------------------------------------------------------------------------- module
class DeftOmniModule(pl.LightningModule):
    """Fine-tunes OmniGen's transformer with one adapter (DEFT, PaRa or LoRA); see module doc.

    Arguments take the dataclasses above or plain mappings (Hydra/OmegaConf configs included).
    ``parts``: already loaded OmniGen parts (else loaded from ``model.path``); the adapter is
    injected into ``parts.transformer`` in place.  ``cache_latents``: keep VAE posteriors per
    (sample key, image, size) on the device (small data sets only).  ``camera``: a
    :class:`CameraConfig` or mapping; ``camera_frame``: the training set's :class:`SceneFrame`
    (identity when None); ``camera_instruction``: the training instruction, saved for generation.
    """

    def __init__(self, model: Any = None, adapter: Any = None, optim: Any = None, loss: Any = None,
                 ema: Any = None, cache_latents: bool = False, parts: Optional[OmniGenParts] = None,
                 verbose: bool = True, camera: Any = None, camera_frame: Optional[SceneFrame] = None,
                 camera_instruction: str = "") -> None:
        super().__init__()
        self.model_cfg: ModelConfig = _coerce(ModelConfig, model)
        if adapter is None:
            raise ValueError("DeftOmniModule needs an adapter config (AdapterConfig or a mapping)")
        self.adapter_cfg: AdapterConfig = _coerce(AdapterConfig, adapter)
        self.optim_cfg: OptimConfig = _coerce(OptimConfig, optim)
        self.loss_cfg: LossConfig = _coerce(LossConfig, loss)
        self.ema_cfg: EMAConfig = _coerce(EMAConfig, ema)
        self.adapter_name = self.model_cfg.adapter_name

        if parts is None:
            path = self.model_cfg.path
            if path in (None, "", "tiny"):
                path = str(ensure_tiny_omnigen())
            parts = load_omnigen(path, torch_dtype=resolve_dtype(self.model_cfg.torch_dtype))
        self.parts_path = str(parts.path)
        self.transformer = parts.transformer
        # Unregistered on purpose: never cast by precision plugins, never in state_dict.
        self._frozen = {"vae": parts.vae.requires_grad_(False).eval()}
        self.tokenizer = parts.tokenizer
        self.scheduler_template = parts.scheduler

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(int(self.model_cfg.init_seed), "adapter-init", self.adapter_name))
            self.injection_report = inject_adapter(self.transformer, self.adapter_cfg, self.adapter_name)
        # load_omnigen returns eval mode and Lightning keeps module modes as found: train mode, so
        # adapter dropout is active in training (Lightning switches to eval for validation).
        self.transformer.train()
        if verbose:
            rank_zero_info(str(self.injection_report))
        if self.model_cfg.gradient_checkpointing:
            if getattr(self.transformer, "_supports_gradient_checkpointing", False):
                self.transformer.enable_gradient_checkpointing()
            else:
                rank_zero_info("gradient checkpointing requested but the transformer does not support it")
        self._adapter_param_names = [n for n, _ in adapter_parameters(self.transformer, self.adapter_name)]
        self._ckpt_keys = [f"transformer.{n}" for n in self._adapter_param_names]
        self._setup_camera(CameraConfig.from_any(camera), camera_frame, camera_instruction)
        self.check_trainable()

        self.latent_encoder = LatentEncoder(cache=cache_latents)
        self._ema: Optional[dict[str, torch.Tensor]] = None
        self._ema_updates = 0
        self.training_failed = False
        self._perf: dict[str, float] = {}
        self.strict_loading = False  # checkpoints hold adapter tensors only; keys are checked below
        self.save_hyperparameters(self.config_dict())

    # ------------------------------------------------------------------------- camera
    def _setup_camera(self, cfg: CameraConfig, frame: Optional[SceneFrame], instruction: str) -> None:
        """Camera token id and conditioning (text/embed); in embed mode the encoder and its hook."""
        self.camera_cfg, self.camera_instruction = cfg, str(instruction)
        self.camera_conditioning: Optional[CameraConditioning] = None
        self.camera_encoder: Optional[CameraEncoder] = None
        self.camera_hook: Optional[CameraEmbedHook] = None
        if not cfg.enabled:
            return
        embed = self.transformer.embed_tokens
        token_id = resolve_token_id(self.tokenizer, cfg, int(embed.num_embeddings))
        self.camera_conditioning = CameraConditioning(cfg, frame or SceneFrame(), token_id)
        if cfg.mode == "embed":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(int(self.model_cfg.init_seed), "camera-encoder", self.adapter_name))
                self.camera_encoder = CameraEncoder(int(embed.embedding_dim), cfg.encoder_width, cfg.num_frequencies,
                                                    rays=cfg.rays)
            self.camera_encoder.to(embed.weight.device)
            self.camera_hook = CameraEmbedHook(self.camera_encoder, token_id).attach(self.transformer)
            self._ckpt_keys += [f"camera_encoder.{n}" for n, _ in self.camera_encoder.named_parameters()]

    def camera_scope(self, batch: Mapping[str, Any]) -> contextlib.AbstractContextManager:
        """Inside it, the embed hook sees this batch's camera vectors (a no-op otherwise)."""
        if self.camera_hook is None:
            return contextlib.nullcontext()
        return self.camera_hook.cameras(batch.get("camera"), batch.get("has_camera"))

    def camera_bundle(self) -> Optional[CameraBundle]:
        cond = self.camera_conditioning
        if cond is None:
            return None
        return CameraBundle(self.camera_cfg, cond.frame, cond.token_id, self.camera_instruction, self.camera_encoder)

    # ------------------------------------------------------------------------ helpers
    @property
    def vae(self):
        return self._frozen["vae"]

    def config_dict(self) -> dict[str, Any]:
        """All settings as plain data (logged as hyper-parameters; weights_only-safe)."""
        out = {"model": asdict(self.model_cfg), "adapter": self.adapter_cfg.to_dict(),
               "optim": asdict(self.optim_cfg), "loss": asdict(self.loss_cfg), "ema": asdict(self.ema_cfg),
               "cache_latents": self.latent_encoder.cache_enabled}
        if self.camera_cfg.enabled:  # mode none logs exactly what it logged before cameras existed
            out["camera"] = self.camera_cfg.to_dict()
        return out

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """name (relative to the transformer) -> adapter parameter."""
        return dict(adapter_parameters(self.transformer, self.adapter_name))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The adapter parameters plus the camera encoder's (``camera_encoder.*``): what trains."""
        state = self.adapter_state()
        if self.camera_encoder is not None:
            state.update({f"camera_encoder.{n}": p for n, p in self.camera_encoder.named_parameters()})
        return state

    @property
    def trainable_parameter_count(self) -> int:
        return int(sum(p.numel() for p in self.trainable_state().values()))

    def check_trainable(self) -> None:
        """Only this adapter's parameters may require grad; raises otherwise."""
        trainable = {n for n, p in self.transformer.named_parameters() if p.requires_grad}
        expected = set(self._adapter_param_names)
        extra, missing = sorted(trainable - expected), sorted(expected - trainable)
        vae_trainable = [n for n, p in self.vae.named_parameters() if p.requires_grad]
        if self.camera_encoder is not None:
            missing += [f"camera_encoder.{n}" for n, p in self.camera_encoder.named_parameters() if not p.requires_grad]
        if extra or missing or vae_trainable:
            raise RuntimeError(f"trainable parameters must be exactly adapter {self.adapter_name!r}'s: "
                               f"unexpected trainable {(extra + vae_trainable)[:5]}, frozen adapter "
                               f"parameters {missing[:5]}")

    def _ensure_vae_device(self) -> None:
        if next(self.vae.parameters()).device != self.device:
            self.vae.to(self.device)

    def _step_generator(self, *parts: Any) -> torch.Generator:
        rank = self.global_rank if self._trainer is not None else 0
        seed = derive_seed(int(self.loss_cfg.seed), *parts, int(rank))
        return torch.Generator(device=self.device).manual_seed(seed)

    # ------------------------------------------------------------------------- latents
    def encode_batch(self, batch: Mapping[str, Any], mode: str,
                     generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(target latents (B,4,h,w), input-image latents [(1,4,h,w)...]) in fp32."""
        self._ensure_vae_device()
        enc = self.latent_encoder
        targets = batch["output_images"].to(self.device)
        x1 = enc.encode(self.vae, targets, mode, generator, cache_keys=[(k, "output") for k in batch["keys"]])
        keys = input_image_cache_keys(batch)
        inputs = [enc.encode(self.vae, img.to(self.device), mode, generator, cache_keys=[key])
                  for img, key in zip(batch["input_images"], keys)]
        return x1, inputs

    # ---------------------------------------------------------------------------- loss
    def training_loss(self, batch: Mapping[str, Any], generator: Optional[torch.Generator] = None
                      ) -> FlowLossOutput:
        """The stochastic training loss of one batch (draws from ``generator``)."""
        bsz = batch["output_images"].shape[0]
        t = sample_t(bsz, self.loss_cfg, generator, self.device)
        x1, inputs = self.encode_batch(batch, self.loss_cfg.latent_mode, generator)
        noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        with self.camera_scope(batch):
            return flow_matching_loss(self.transformer, x1, model_kwargs(batch, inputs), noise=noise, t=t,
                                      loss_weight=batch["loss_weight"].to(self.device))

    @torch.no_grad()
    def validation_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic (mean over the t-grid, per-t) loss of a batch on this module's device.

        Runs the transformer in eval mode (no adapter dropout) and restores its mode after."""
        was_training = self.transformer.training
        self.transformer.eval()
        try:
            x1, inputs = self.encode_batch(batch, "mean")
            with self.camera_scope(batch):
                return validation_flow_loss(self.transformer, x1, model_kwargs(batch, inputs), batch["keys"],
                                            self.loss_cfg.val_t_grid, self.loss_cfg.val_seed,
                                            loss_weight=batch["loss_weight"].to(self.device))
        finally:
            self.transformer.train(was_training)

    def _raise_non_finite(self, what: str, batch: Optional[Mapping[str, Any]] = None, detail: str = "") -> None:
        self.training_failed = True
        keys = list(batch["keys"]) if batch is not None else []
        raise NonFiniteLossError(
            f"non-finite {what} at global step {self.global_step} (batch keys {keys}){detail}. "
            "The optimizer step was not taken and no adapter was written for this step. Lower the "
            "learning rate, use fp32/bf16 instead of fp16, check the inputs, or resume from the last "
            "checkpoint.")

    # ----------------------------------------------------------------------- lightning
    def on_fit_start(self) -> None:
        self.check_trainable()
        self._ensure_vae_device()
        trainable, total = self.injection_report.trainable_params, self.injection_report.total_params
        rank_zero_info(f"deft_omni: training {trainable:,} adapter parameters of {total:,} "
                       f"({100.0 * trainable / max(total, 1):.4f}%)")
        if self.camera_encoder is not None:
            n_cam = sum(p.numel() for p in self.camera_encoder.parameters())
            rank_zero_info(f"deft_omni: + {n_cam:,} camera encoder parameters (camera.mode=embed); "
                           f"{self.trainable_parameter_count:,} trainable in all")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        if self._perf.get("t_first") is None:
            self._perf = {"t_first": time.perf_counter(), "samples": 0.0, "tokens": 0.0}
        gen = self._step_generator("train", int(self.global_step), int(batch_idx))
        # Dropout draws from the global RNG: seed it per step inside a fork (restored after), so
        # the step is reproducible and the caller's RNG stream is untouched.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type if devices else "cuda"):
            torch.manual_seed(derive_seed(int(self.loss_cfg.seed), "dropout", int(self.global_step), int(batch_idx)))
            out = self.training_loss(batch, gen)
        if not torch.isfinite(out.loss):
            per = ", ".join(f"{v:.4g}" for v in out.per_sample.detach().float().cpu().tolist())
            ts = ", ".join(f"{v:.3f}" for v in out.t.detach().float().cpu().tolist())
            self._raise_non_finite("loss", batch, f": per-sample losses [{per}] at t [{ts}]")
        bsz = int(batch["output_images"].shape[0])
        seq = int(batch["input_ids"].shape[1]) + 1 + int(batch["num_output_tokens"])
        self._perf["samples"] += bsz
        self._perf["tokens"] += bsz * seq
        self.log("train/loss", out.loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=bsz)
        return out.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad.detach().float().norm() for p in self.trainable_state().values() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros((), device=self.device)
        if not torch.isfinite(norm):
            precision = str(getattr(self.trainer, "precision", ""))
            if not precision.startswith("16"):  # fp16 AMP: the grad scaler skips such steps itself
                self._raise_non_finite("adapter gradient norm", None, f" ({norm.item()})")
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
        for group in optimizer.param_groups:
            self.log(f"lr/{group.get('name', 'group')}", float(group["lr"]), on_step=True, on_epoch=False,
                     batch_size=1)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.update_ema()
        perf, self._perf = self._perf, {}
        if perf.get("t_first") is not None:
            dt = max(time.perf_counter() - perf["t_first"], 1e-9)
            self.log_dict({"perf/samples_per_s": perf["samples"] / dt, "perf/tokens_per_s": perf["tokens"] / dt,
                           "perf/step_s": dt, "perf/peak_mem_gb": peak_memory_gb(self.device)},
                          on_step=True, on_epoch=False, batch_size=1)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, per_t = self.validation_loss(batch)
        bsz = int(batch["output_images"].shape[0])
        self.log("val/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True, batch_size=bsz)
        for tv, lt in zip(self.loss_cfg.val_t_grid, per_t):
            self.log(f"val/loss_t{tv:g}", lt, on_step=False, on_epoch=True, sync_dist=True, batch_size=bsz)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        groups = param_groups(self.transformer, cfg.lr, adapter_name=self.adapter_name,
                              p_lr_ratio=cfg.p_lr_ratio, weight_decay=cfg.weight_decay)
        if self.camera_encoder is not None:
            groups = list(groups) + [{"params": list(self.camera_encoder.parameters()), "name": "camera",
                                      "lr": cfg.lr * float(self.camera_cfg.lr_ratio),
                                      "weight_decay": cfg.weight_decay}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                      weight_decay=cfg.weight_decay)
        total = cfg.total_steps
        if total is None:
            total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
            if cfg.schedule == "cosine" and not math.isfinite(total):
                raise ValueError("a cosine schedule needs OptimConfig.total_steps or Trainer(max_steps=...)")
        schedule = WarmupSchedule(cfg.warmup_steps, cfg.schedule, int(total) if math.isfinite(total) else 1,
                                  cfg.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step",
                                                         "frequency": 1, "name": "lr"}}

    # ----------------------------------------------------------------------------- EMA
    @torch.no_grad()
    def update_ema(self) -> None:
        if not self.ema_cfg.enabled:
            return
        params = self.trainable_state()
        if self._ema is None:
            self._ema = {n: p.detach().float().clone() for n, p in params.items()}
            self._ema_updates = 0
        decay = self.ema_cfg.decay
        if self.ema_cfg.warmup:
            decay = min(decay, (1 + self._ema_updates) / (10 + self._ema_updates))
        for n, p in params.items():
            ema = self._ema[n]
            if ema.device != p.device:
                ema = self._ema[n] = ema.to(p.device)
            ema.lerp_(p.detach().float(), 1.0 - decay)
        self._ema_updates += 1

    def ema_state(self) -> Optional[dict[str, torch.Tensor]]:
        """EMA copies of the adapter parameters (None before the first update or when disabled)."""
        return self._ema

    # ------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        missing = [k for k in self._ckpt_keys if k not in state]
        if missing:
            raise RuntimeError(f"adapter tensors missing from the module state_dict: {missing[:5]}")
        checkpoint["state_dict"] = {k: state[k] for k in self._ckpt_keys}
        checkpoint["deft_omni"] = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "adapter_name": self.adapter_name,
            "adapter_config": self.adapter_cfg.to_dict(), "model_path": self.parts_path,
            "ema": None if self._ema is None else {"updates": int(self._ema_updates),
                                                    "tensors": {n: t.detach().cpu() for n, t in self._ema.items()}},
        }
        if self.camera_conditioning is not None:
            checkpoint["deft_omni"]["camera"] = {"config": self.camera_cfg.to_dict(),
                                                 "frame": self.camera_conditioning.frame.to_dict(),
                                                 "token_id": self.camera_conditioning.token_id}
        self._rewrite_loader_states(checkpoint)

    def _rewrite_loader_states(self, checkpoint: dict[str, Any]) -> None:
        """Lightning saves ``loader.state_dict()``, one batch ahead (prefetch); replace it with the
        state after the batches actually trained on (global_step x accumulate_grad_batches)."""
        if self._trainer is None:
            return
        fit = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        states = fit.get("combined_loader")
        combined = getattr(self.trainer.fit_loop, "_combined_loader", None)
        if not states or combined is None:
            return
        loaders = [dl for dl in combined.flattened if isinstance(dl, _Stateful)]
        if len(loaders) != len(states):
            return
        done = int(self.trainer.global_step) * int(self.trainer.accumulate_grad_batches)
        fit["combined_loader"] = [dl.state_for_step(done) if hasattr(dl, "state_for_step") else st
                                  for dl, st in zip(loaders, states)]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("deft_omni")
        if not isinstance(meta, Mapping) or meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("this checkpoint was not written by DeftOmniModule (no 'deft_omni' entry)")
        saved_cfg = AdapterConfig.from_dict(dict(meta["adapter_config"]), source="checkpoint adapter_config")
        ours = self.adapter_cfg
        for name in ("method", "rank", "decomposition", "alpha", "fused_groups"):
            if getattr(saved_cfg, name) != getattr(ours, name):
                raise ValueError(f"checkpoint adapter {name}={getattr(saved_cfg, name)!r} but this run has "
                                 f"{getattr(ours, name)!r}: resume with the same adapter settings")
        saved_mode = (meta.get("camera") or {}).get("config", {}).get("mode", "none")
        if saved_mode != self.camera_cfg.mode:
            raise ValueError(f"checkpoint camera.mode={saved_mode!r} but this run has {self.camera_cfg.mode!r}: "
                             "resume with the same camera settings")
        keys = set(checkpoint.get("state_dict", {}))
        if keys != set(self._ckpt_keys):
            extra, missing = sorted(keys - set(self._ckpt_keys)), sorted(set(self._ckpt_keys) - keys)
            raise ValueError(f"checkpoint adapter tensors do not match this model: unexpected {extra[:5]}, "
                             f"missing {missing[:5]} (another target_modules or base model?)")
        if meta.get("model_path") not in (None, self.parts_path):
            rank_zero_warn(f"resuming a run started on {meta['model_path']} with {self.parts_path}; the adapter "
                           "only makes sense on the same base weights")
        ema = meta.get("ema")
        if ema is not None and self.ema_cfg.enabled:
            self._ema = {n: t.to(self.device).float() for n, t in ema["tensors"].items()}
            self._ema_updates = int(ema["updates"])

    # ---------------------------------------------------------------- adapter folders
    def save_adapter_folder(self, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
        """Write the adapter (deft_omni's folder format) to ``path``; with EMA also ``path/ema``.

        Both are written into a temporary folder beside ``path`` and moved into place with one
        rename, so readers never see a half-written pair.  Refuses after a non-finite step.
        """
        if self.training_failed:
            raise RuntimeError("refusing to write an adapter: training stopped on a non-finite loss")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {"training": {"global_step": int(self.global_step) if self._trainer is not None else 0,
                             "ema": False, "model_path": self.parts_path, **(extra or {})}}
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            staged = tmp_root / path.name
            save_adapter(self.transformer, staged, self.adapter_name, extra=info)
            bundle = self.camera_bundle()
            if bundle is not None:
                save_camera_files(staged, bundle)
            if self._ema is not None:
                with self.swapped_in_ema():
                    ema_info = {"training": {**info["training"], "ema": True, "ema_decay": self.ema_cfg.decay,
                                             "ema_updates": int(self._ema_updates)}}
                    save_adapter(self.transformer, staged / EMA_FOLDER, self.adapter_name, extra=ema_info)
                    if bundle is not None:
                        save_camera_files(staged / EMA_FOLDER, bundle)
            if path.exists():
                old = tmp_root / ".old"
                path.rename(old)
            staged.rename(path)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
        return path

    @contextlib.contextmanager
    def swapped_in_ema(self) -> Iterator[None]:
        """Inside the block the adapter parameters hold the EMA weights; restored on exit."""
        if self._ema is None:
            raise RuntimeError("no EMA weights (EMA disabled or no optimizer step yet)")
        params = self.trainable_state()
        saved = {n: p.detach().clone() for n, p in params.items()}
        try:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self._ema[n].to(p))
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])
