"""DeftOmniModule without a Trainer (settings, precision, checkpointing of activations, EMA) and
the checkpoint plumbing (SafeCheckpointIO, AdapterCheckpoint pruning, find_last_checkpoint)."""

from __future__ import annotations


import pytest
import torch
from _training_helpers import adapter_cfg, make_module, train_loader
from omegaconf import OmegaConf

from deft_omni.adapters import AdapterConfig
from deft_omni.core import resolve_dtype
from deft_omni.training import (
    AdapterCheckpoint,
    DeftOmniModule,
    LossConfig,
    OptimConfig,
    SafeCheckpointIO,
    UnsafeCheckpointError,
    find_last_checkpoint,
    standard_callbacks,
)


def _loss_and_grads(module, batch):
    out = module.training_loss(batch, torch.Generator().manual_seed(0))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in module.adapter_state().items()}


def test_settings_from_mappings_and_omegaconf(tiny_model_dir):
    cfg = OmegaConf.create({"model": {"path": str(tiny_model_dir), "init_seed": 3},
                            "adapter": adapter_cfg(rank=2), "optim": {"lr": 2e-3, "betas": [0.9, 0.95]},
                            "loss": {"t_sampling": "uniform", "val_t_grid": [0.25, 0.75]},
                            "ema": {"enabled": True, "decay": 0.99}})
    module = DeftOmniModule(**cfg, verbose=False)
    assert isinstance(module.adapter_cfg, AdapterConfig) and module.adapter_cfg.rank == 2
    assert module.optim_cfg == OptimConfig(lr=2e-3, betas=(0.9, 0.95))
    assert module.loss_cfg == LossConfig(t_sampling="uniform", val_t_grid=[0.25, 0.75])
    assert module.hparams["adapter"]["rank"] == 2 and module.hparams["model"]["init_seed"] == 3
    with pytest.raises(ValueError, match="unknown field"):
        DeftOmniModule(model={"path": str(tiny_model_dir), "dtype": "bf16"}, adapter=adapter_cfg(), verbose=False)
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="linear")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("torch.float32") is torch.float32
    # The adapter init is seeded: same init_seed, same P; another, another P.
    a = make_module(tiny_model_dir).adapter_state()
    b = make_module(tiny_model_dir).adapter_state()
    c = DeftOmniModule(model={"path": str(tiny_model_dir), "init_seed": 1}, adapter=adapter_cfg(),
                       verbose=False).adapter_state()
    name = next(n for n in a if n.endswith(".P"))
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])


def test_only_adapter_trainable_and_frozen_vae(tiny_model_dir):
    module = make_module(tiny_model_dir)
    trainable = {n for n, p in module.transformer.named_parameters() if p.requires_grad}
    assert trainable == set(module.adapter_state()) and all(".owned.default." in n for n in trainable)
    assert module.target.report.trainable_params == sum(p.numel() for p in module.adapter_state().values())
    assert not any(p.requires_grad for p in module.vae.parameters()) and not module.vae.training
    assert module.transformer.training
    assert not any(k.startswith("vae") for k in module.state_dict())  # the VAE is not a submodule
    module.transformer.proj_out.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="proj_out"):
        module.check_trainable()


def test_gradient_checkpointing_and_bf16(tiny_model_dir, shards):
    plain = make_module(tiny_model_dir)
    batch = next(iter(train_loader(plain, shards)))
    loss, grads = _loss_and_grads(plain, batch)
    ckpt = DeftOmniModule(model={"path": str(tiny_model_dir), "gradient_checkpointing": True},
                          adapter=adapter_cfg(), verbose=False)
    assert ckpt.transformer.gradient_checkpointing
    loss_c, grads_c = _loss_and_grads(ckpt, batch)
    torch.testing.assert_close(loss_c, loss)
    for n in grads:
        torch.testing.assert_close(grads_c[n], grads[n], rtol=1e-5, atol=1e-7)
    half = DeftOmniModule(model={"path": str(tiny_model_dir), "torch_dtype": "bfloat16"}, adapter=adapter_cfg(),
                          verbose=False)
    assert next(half.transformer.parameters()).dtype == torch.bfloat16
    assert next(half.vae.parameters()).dtype == torch.float32
    loss_h, grads_h = _loss_and_grads(half, batch)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads_h.values())
    assert abs(loss_h.item() - loss.item()) < 0.05 * loss.item()


def test_latent_cache_in_the_module(tiny_model_dir, shards):
    cached = make_module(tiny_model_dir, cache_latents=True)
    batch = next(iter(train_loader(cached, shards)))
    first = cached.training_loss(batch, torch.Generator().manual_seed(0)).loss
    n_images = len(batch["keys"]) + len(batch["input_images"])
    assert len(cached.backbone.latent_encoder) == n_images and cached.backbone.latent_encoder.hits == 0
    again = cached.training_loss(batch, torch.Generator().manual_seed(0)).loss
    assert cached.backbone.latent_encoder.hits == n_images
    plain = make_module(tiny_model_dir).training_loss(batch, torch.Generator().manual_seed(0)).loss
    torch.testing.assert_close(first, plain)
    torch.testing.assert_close(again, plain)


def test_ema_update_and_swap(tiny_model_dir):
    module = DeftOmniModule(model={"path": str(tiny_model_dir)}, adapter=adapter_cfg(),
                            ema={"enabled": True, "decay": 0.75}, verbose=False)
    params = module.adapter_state()
    start = {n: p.detach().clone() for n, p in params.items()}
    module.update_ema()  # first update: a copy
    with torch.no_grad():
        for p in params.values():
            p.add_(1.0)
    module.update_ema()
    for n, p in params.items():
        torch.testing.assert_close(module.ema_state()[n], start[n] + 0.25)
    with module.swapped_in_ema():
        for n, p in params.items():  # every parameter holds its EMA inside the block...
            torch.testing.assert_close(p, start[n] + 0.25)
    for n, p in params.items():  # ...and its own value after it
        torch.testing.assert_close(p, start[n] + 1.0)


class _NotPlainData:
    pass


def test_safe_checkpoint_io(tmp_path):
    io = SafeCheckpointIO()
    path = tmp_path / "ck" / "a.ckpt"
    io.save_checkpoint({"x": torch.arange(3), "meta": {"step": 3, "keys": ["a"]}}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.ckpt"]  # no temporary file left
    loaded = io.load_checkpoint(path, weights_only=False)  # forced to weights_only=True anyway
    assert torch.equal(loaded["x"], torch.arange(3)) and loaded["meta"]["keys"] == ["a"]
    evil = tmp_path / "evil.ckpt"
    torch.save({"obj": _NotPlainData()}, evil)
    with pytest.raises(UnsafeCheckpointError) as info:  # our refusal, never torch's unsafe advice
        io.load_checkpoint(evil)
    msg = str(info.value)
    assert str(evil) in msg and "tampered" in msg and "_NotPlainData" in msg
    assert "weights_only" not in msg and "trust" not in msg
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "missing.ckpt")


def test_adapter_checkpoint_pruning_and_find_last(tmp_path):
    cb = AdapterCheckpoint(tmp_path / "adapters", every_n_steps=10, keep_last=2)
    for step in (10, 20, 30):
        (tmp_path / "adapters" / f"step_{step:06d}").mkdir(parents=True)
    (tmp_path / "adapters" / "final").mkdir()
    cb.prune()
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["final", "step_000020", "step_000030"]
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    assert find_last_checkpoint(ck) is None
    io = SafeCheckpointIO()
    io.save_checkpoint({"global_step": 2}, ck / "step_000002.ckpt")
    io.save_checkpoint({"global_step": 10}, ck / "step_000010.ckpt")
    assert find_last_checkpoint(ck).name == "step_000010.ckpt"
    io.save_checkpoint({"global_step": 10}, ck / "last.ckpt")
    assert find_last_checkpoint(ck).name == "last.ckpt"  # a tie: last.ckpt
    names = [type(c).__name__ for c in standard_callbacks(tmp_path, sample_prompts=["a red circle"])]
    assert names == ["AdapterCheckpoint", "RunOutputs", "ModelCheckpoint", "SampleGridCallback",
                     "LossCurveCallback", "TQDMProgressBar"]


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    """A kill while last.ckpt was rewritten leaves it at step 50 beside a complete step 100: resume
    from 100.  A truncated newer file is not a checkpoint."""
    io, ck = SafeCheckpointIO(), tmp_path / "checkpoints"
    io.save_checkpoint({"global_step": 50, "x": torch.zeros(4)}, ck / "last.ckpt")
    io.save_checkpoint({"global_step": 100, "x": torch.zeros(4)}, ck / "step_000100.ckpt")
    assert find_last_checkpoint(ck).name == "step_000100.ckpt"
    io.save_checkpoint({"global_step": 150, "x": torch.zeros(1000)}, ck / "step_000150.ckpt")
    data = (ck / "step_000150.ckpt").read_bytes()
    (ck / "step_000150.ckpt").write_bytes(data[: len(data) // 2])
    assert find_last_checkpoint(ck).name == "step_000100.ckpt"
