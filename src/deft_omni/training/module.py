"""`DeftOmniModule`: the one LightningModule.  It trains a *target* (an adapter, or every weight)
inside a *backbone* (the model family), with *extensions* adding what a feature needs.

* the backbone (:mod:`deft_omni.backbones`) supplies the denoiser (registered here, so Lightning
  moves and wraps it), the frozen parts (unregistered: never cast by precision plugins, never
  checkpointed), the loss and the grid sampler;
* the target (:mod:`.targets`) says which parameters train, their optimizer groups and how to
  write them; anything else requiring grad is refused;
* extensions (:mod:`.extension`) add modules, optimizer groups, a per-batch scope, checkpoint
  metadata, adapter-folder files and callbacks.

Every random draw of a step comes from a generator seeded by (seed, step, micro-batch, rank), so
runs are reproducible and a resumed run continues exactly; a non-finite loss or gradient raises
:class:`NonFiniteLossError` before the optimizer step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ..backbones import Backbone, FlowLossOutput, load_backbone
from ..core.seeding import derive_seed
from .ema import AdapterEMA
from .extension import TrainingExtension
from .metrics import peak_memory_gb
from .persistence import PersistenceMixin
from .schedule import WarmupSchedule
from .settings import EMAConfig, LossConfig, ModelConfig, OptimConfig, coerce
from .targets import make_target

class NonFiniteLossError(FloatingPointError):
    """The loss (or the trained gradient) of a step is NaN/Inf; raised before the optimizer step,
    so the weights are those of the previous step and nothing is written for the failing step."""


class DeftOmniModule(PersistenceMixin, pl.LightningModule):
    """See the module docstring.  Settings take the dataclasses of :mod:`.settings` or mappings;
    ``adapter={"method": "full"}`` trains every weight; ``backbone``: an already loaded backbone
    (else loaded from ``model``)."""

    def __init__(self, model: Any = None, adapter: Any = None, optim: Any = None, loss: Any = None,
                 ema: Any = None, cache_latents: bool = False, backbone: Optional[Backbone] = None,
                 extensions: Sequence[TrainingExtension] = (), verbose: bool = True) -> None:
        super().__init__()
        self.model_cfg: ModelConfig = coerce(ModelConfig, model)
        self.optim_cfg: OptimConfig = coerce(OptimConfig, optim)
        self.loss_cfg: LossConfig = coerce(LossConfig, loss)
        self.ema_cfg: EMAConfig = coerce(EMAConfig, ema)
        self.target = make_target(adapter, self.model_cfg.adapter_name, self.model_cfg.init_seed)
        if backbone is None:
            backbone = load_backbone(self.model_cfg.path, self.model_cfg.family, self.model_cfg.torch_dtype,
                                     self.model_cfg.gradient_checkpointing, cache_latents=cache_latents,
                                     quantize=self.model_cfg.quantize)
        self.backbone = backbone
        self.denoiser = backbone.denoiser
        report = self.target.attach(self.denoiser)
        # load_* returns eval mode and Lightning keeps module modes as found: train mode, so
        # adapter dropout is active in training (Lightning switches to eval for validation).
        self.denoiser.train()
        if verbose:
            rank_zero_info(report)
        self.extensions = list(extensions)
        self.extension_modules = nn.ModuleDict()
        for ext in self.extensions:
            ext.setup(self)
            for name, mod in ext.modules().items():
                self.extension_modules[f"{ext.name}_{name}"] = mod.to(next(self.denoiser.parameters()).device)
        self.check_trainable()
        self.ema = AdapterEMA(self.ema_cfg)
        self.training_failed = False
        self._perf: dict[str, float] = {}
        self.strict_loading = False  # checkpoints hold the trained tensors only; keys are checked below
        self.save_hyperparameters(self.config_dict())

    # --------------------------------------------------------------------- accessors
    @property
    def transformer(self) -> nn.Module:
        """The denoiser under OmniGen's name for it."""
        return self.denoiser

    @property
    def vae(self) -> nn.Module:
        return self.backbone.frozen_modules()["vae"]

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    @property
    def adapter_name(self) -> str:
        return self.target.name

    @property
    def adapter_cfg(self) -> Any:
        """The trained adapter's AdapterConfig (None when every weight trains)."""
        return getattr(self.target, "cfg", None)

    def config_dict(self) -> dict[str, Any]:
        """All settings as plain data (logged as hyper-parameters; weights_only-safe)."""
        out = {"model": asdict(self.model_cfg), "adapter": self.target.config_dict(),
               "optim": asdict(self.optim_cfg), "loss": asdict(self.loss_cfg), "ema": asdict(self.ema_cfg),
               "cache_latents": bool(getattr(self.backbone, "latent_encoder", None)
                                     and self.backbone.latent_encoder.cache_enabled)}
        for ext in self.extensions:
            if ext.config_dict():
                out[ext.name] = ext.config_dict()
        return out

    def adapter_state(self) -> dict[str, nn.Parameter]:
        """name (relative to the denoiser) -> trained parameter of the target."""
        return self.target.parameters(self.denoiser)

    def trainable_state(self) -> dict[str, nn.Parameter]:
        """The target's parameters plus the extensions' (``extension_modules.*``): what trains."""
        state = self.adapter_state()
        state.update({f"extension_modules.{n}": p for n, p in self.extension_modules.named_parameters()})
        return state

    @property
    def trainable_parameter_count(self) -> int:
        return int(sum(p.numel() for p in self.trainable_state().values()))

    def _checkpoint_keys(self) -> list[str]:
        return [f"denoiser.{n}" for n in self.adapter_state()] + \
               [f"extension_modules.{n}" for n, _ in self.extension_modules.named_parameters()]

    def check_trainable(self) -> None:
        """Exactly the target's and the extensions' parameters require grad; raises otherwise."""
        expected = set(self.trainable_state())
        trainable = {n for n, p in self.denoiser.named_parameters() if p.requires_grad}
        trainable |= {f"extension_modules.{n}" for n, p in self.extension_modules.named_parameters()
                      if p.requires_grad}
        frozen = [f"{k}.{n}" for k, m in self.backbone.frozen_modules().items()
                  for n, p in m.named_parameters() if p.requires_grad]
        extra, missing = sorted(trainable - expected) + frozen, sorted(expected - trainable)
        if extra or missing:
            raise RuntimeError(f"trainable parameters must be exactly {self.target.kind} {self.target.name!r}'s "
                               f"(and the extensions'): unexpected trainable {extra[:5]}, frozen {missing[:5]}")

    def scope(self, batch: Mapping[str, Any]) -> contextlib.ExitStack:
        """Every extension's batch scope, entered together."""
        stack = contextlib.ExitStack()
        for ext in self.extensions:
            stack.enter_context(ext.batch_scope(batch))
        return stack

    # ------------------------------------------------------------------------- losses
    def encode_batch(self, batch: Mapping[str, Any], mode: str, generator: Optional[torch.Generator] = None):
        self.backbone.move_frozen(self.device)
        return self.backbone.encode_batch(batch, mode, generator)

    def training_loss(self, batch: Mapping[str, Any], generator: Optional[torch.Generator] = None) -> FlowLossOutput:
        """The stochastic training loss of one batch (draws from ``generator``)."""
        self.backbone.move_frozen(self.device)
        with self.scope(batch):
            return self.backbone.training_loss(batch, self.loss_cfg, generator)

    @torch.no_grad()
    def validation_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic (mean over the t-grid, per-t) loss, in eval mode (restored after)."""
        was_training = self.denoiser.training
        self.denoiser.eval()
        self.backbone.move_frozen(self.device)
        try:
            with self.scope(batch):
                return self.backbone.validation_loss(batch, self.loss_cfg)
        finally:
            self.denoiser.train(was_training)

    def _raise_non_finite(self, what: str, batch: Optional[Mapping[str, Any]] = None, detail: str = "") -> None:
        self.training_failed = True
        keys = list(batch["keys"]) if batch is not None and "keys" in batch else []
        raise NonFiniteLossError(
            f"non-finite {what} at global step {self.global_step} (batch keys {keys}){detail}. "
            "The optimizer step was not taken and no adapter was written for this step. Lower the "
            "learning rate, use fp32/bf16 instead of fp16, check the inputs, or resume from the last "
            "checkpoint.")

    # ----------------------------------------------------------------------- lightning
    def on_fit_start(self) -> None:
        self.check_trainable()
        self.backbone.move_frozen(self.device)
        trained, total = self.target.counts(self.denoiser)
        rank_zero_info(f"deft_omni: training {trained:,} parameters of {total:,} "
                       f"({100.0 * trained / max(total, 1):.4f}%)")
        for ext in self.extensions:
            if ext.describe():
                rank_zero_info(f"deft_omni: {ext.describe()}; {self.trainable_parameter_count:,} trainable in all")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        self._mark_trained(batch_idx)
        if self._perf.get("t_first") is None:
            self._perf = {"t_first": time.perf_counter(), "samples": 0.0, "tokens": 0.0}
        rank = self.global_rank if self._trainer is not None else 0
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(int(self.loss_cfg.seed), "train", int(self.global_step), int(batch_idx), int(rank)))
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
        bsz, tokens = self.backbone.batch_size_and_tokens(batch)
        self._perf["samples"] += bsz
        self._perf["tokens"] += tokens
        self.log("train/loss", out.loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=bsz)
        return out.loss

    def _mark_trained(self, batch_idx: int) -> None:
        # The loader is one batch ahead (prefetch): tell it how many batches this one completes, so
        # the state Lightning saves in a checkpoint resumes right after them.
        loader = self.trainer.train_dataloader if self._trainer is not None else None
        if hasattr(loader, "mark_trained"):
            acc = int(self.trainer.accumulate_grad_batches)
            loader.mark_trained(int(self.global_step) * acc + batch_idx % acc + 1)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad.detach().float().norm() for p in self.trainable_state().values() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros((), device=self.device)
        if not torch.isfinite(norm):
            precision = str(getattr(self.trainer, "precision", ""))
            if not precision.startswith("16"):  # fp16 AMP: the grad scaler skips such steps itself
                self._raise_non_finite("gradient norm", None, f" ({norm.item()})")
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

    def on_train_epoch_end(self) -> None:
        # Skips by reason, truncated shards, samples read: in metrics.csv, summed over every rank.
        from .run_end import data_counts

        counts = data_counts(self.trainer)
        if counts:
            self.log_dict({k: float(v) for k, v in counts.items()}, rank_zero_only=True, batch_size=1)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, per_t = self.validation_loss(batch)
        bsz, _ = self.backbone.batch_size_and_tokens(batch)
        self.log("val/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True, batch_size=bsz)
        for tv, lt in zip(self.loss_cfg.val_t_grid, per_t):
            self.log(f"val/loss_t{tv:g}", lt, on_step=False, on_epoch=True, sync_dist=True, batch_size=bsz)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        groups = list(self.target.param_groups(self.denoiser, cfg.lr, cfg.weight_decay))
        for ext in self.extensions:
            groups += ext.param_groups(cfg.lr, cfg.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        total = cfg.total_steps
        if total is None:
            total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
            if cfg.schedule == "cosine" and not math.isfinite(total):
                raise ValueError("a cosine schedule needs optim.total_steps or Trainer(max_steps=...)")
        schedule = WarmupSchedule(cfg.warmup_steps, cfg.schedule, int(total) if math.isfinite(total) else 1,
                                  cfg.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step",
                                                         "frequency": 1, "name": "lr"}}

    # ----------------------------------------------------------------------------- EMA
    def update_ema(self) -> None:
        if self.ema_cfg.enabled:
            self.ema.update(self.trainable_state())

    def ema_state(self) -> Optional[dict[str, torch.Tensor]]:
        """EMA copies of the trained parameters (None before the first update or when disabled)."""
        return self.ema.tensors()

    @contextlib.contextmanager
    def swapped_in_ema(self) -> Iterator[None]:
        """Inside the block the trained parameters hold the EMA weights; restored on exit."""
        with self.ema.swapped_in(self.trainable_state()):
            yield
