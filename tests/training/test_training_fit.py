"""Short Lightning runs of the tiny OmniGen: frozen base, adapter-only checkpoints, overfitting,
exact resume, the NaN guard and the output files."""

from __future__ import annotations

import json

import pytest
import torch
from _training_helpers import (
    KeyRecorder,
    Repeat,
    adapter_cfg,
    adapter_tensors,
    base_tensors,
    make_module,
    train_loader,
    trainer,
    val_loader,
)
from PIL import Image

from deft_omni.adapters import load_adapter
from deft_omni.model import load_omnigen
from deft_omni.training import (
    AdapterCheckpoint,
    DeftOmniModule,
    LossCurveCallback,
    NonFiniteLossError,
    SafeCheckpointIO,
    SampleGridCallback,
    find_last_checkpoint,
    resume_checkpoint_callback,
)


def test_short_run_outputs_and_adapter_only_checkpoint(tiny_model_dir, shards, tmp_path):
    module = make_module(tiny_model_dir, optim={"lr": 5e-3, "warmup_steps": 2}, ema={"enabled": True, "decay": 0.5})
    base_before, adapter_before = base_tensors(module), adapter_tensors(module)
    prompts = [{"instruction": "a red circle on a blue background", "height": 32, "width": 32},
               {"instruction": "<img><|image_1|></img> the same shape in green",
                "input_images": [torch.zeros(3, 32, 32)], "seed": 1}]
    samples = SampleGridCallback(tmp_path / "samples", prompts, every_n_steps=2, num_steps=2, at_end=False)
    curve = LossCurveCallback(tmp_path / "loss_curve.png")
    adapters = AdapterCheckpoint(tmp_path / "adapters", every_n_steps=1, keep_last=2)
    resume = resume_checkpoint_callback(tmp_path / "checkpoints", every_n_steps=2, keep_last=1)
    tr = trainer(tmp_path, max_steps=4, callbacks=[samples, curve, adapters, resume], plugins=[SafeCheckpointIO()],
                 check_val_every_n_epoch=1, limit_val_batches=1)
    tr.fit(module, train_loader(module, shards), val_loader(module, shards))

    # Only the adapter moved; every base tensor (transformer and VAE) is bit-identical.
    base_after = base_tensors(module)
    assert base_after.keys() == base_before.keys()
    changed = [k for k in base_before if not torch.equal(base_before[k], base_after[k])]
    assert not changed, changed[:5]
    adapter_after = adapter_tensors(module)
    assert all(not torch.equal(adapter_before[n], adapter_after[n]) for n in adapter_before)

    # Resume checkpoints: adapter tensors only, small, loadable with weights_only=True.
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step_000004.ckpt"]
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(ck["state_dict"]) == {f"denoiser.{n}" for n in adapter_after}
    assert all(".owned.default." in k for k in ck["state_dict"])
    for n, p in adapter_after.items():
        assert torch.equal(ck["state_dict"][f"denoiser.{n}"], p)
    assert ck["global_step"] == 4 and ck["optimizer_states"] and ck["lr_schedulers"]
    assert ck["deft_omni"]["ema"]["state"]["optimization_step"] == 4
    loader_state = ck["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (loader_state["epoch"], loader_state["batches_in_epoch"]) == (1, 1)  # 4 batches, epochs of 3
    base_bytes = sum(t.numel() * t.element_size() for t in base_before.values())
    assert (tmp_path / "checkpoints" / "last.ckpt").stat().st_size < base_bytes / 4
    assert find_last_checkpoint(tmp_path / "checkpoints").name == "last.ckpt"

    # Adapter folders: the last two steps + final, each with an EMA variant; final loads back.
    folders = sorted(p.name for p in (tmp_path / "adapters").iterdir())
    assert folders == ["final", "step_000003", "step_000004"]
    meta = json.loads((tmp_path / "adapters" / "final" / "deft_omni.json").read_text())
    assert meta["training"]["global_step"] == 4 and meta["training"]["ema"] is False
    assert json.loads((tmp_path / "adapters" / "final" / "ema" / "deft_omni.json").read_text())["training"]["ema"]
    fresh = load_omnigen(tiny_model_dir).transformer
    load_adapter(fresh, tmp_path / "adapters" / "final", "default")
    loaded = dict(fresh.named_parameters())
    for n, p in adapter_after.items():
        assert torch.equal(loaded[n], p)
    ema_model = load_omnigen(tiny_model_dir).transformer
    load_adapter(ema_model, tmp_path / "adapters" / "final" / "ema", "default")
    ema = module.ema_state()
    for n in adapter_after:
        assert torch.equal(dict(ema_model.named_parameters())[n], ema[n])
        assert not torch.equal(ema[n], adapter_after[n])

    # Sample grids every 2 steps and the loss curve at the end.
    for step in (2, 4):
        with Image.open(tmp_path / "samples" / f"step_{step:06d}.png") as img:
            assert img.format == "PNG" and img.width > 64
    with Image.open(tmp_path / "loss_curve.png") as img:
        assert img.format == "PNG"
    history = json.loads((tmp_path / "loss_history.json").read_text())
    assert [s for s, _ in history["train"]] == [1, 2, 3, 4] and len(history["val"]) == 1
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*")), "temporary files left behind"


def test_overfits_a_fixed_batch(tiny_model_dir, shards, tmp_path):
    # Every linear layer of the blocks (more capacity than the paper's attention-only layout, so
    # a few dozen steps suffice); the loss is judged on the deterministic validation loss.
    module = make_module(tiny_model_dir, optim={"lr": 1e-2},
                         adapter=adapter_cfg(rank=8, target_modules="all-linear", fused_groups=[]))
    batch = next(iter(train_loader(module, shards)))
    before, _ = module.validation_loss(batch)
    tr = trainer(tmp_path, max_steps=50)
    tr.fit(module, Repeat(batch, 50))
    after, _ = module.validation_loss(batch)
    assert after < 0.8 * before, (before.item(), after.item())


def _resume_run(tiny_model_dir, shards, root, max_steps, ckpt_path=None):
    module = make_module(tiny_model_dir, optim={"lr": 1e-2, "warmup_steps": 3, "schedule": "cosine",
                                                "total_steps": 8},
                         adapter=adapter_cfg(dropout=0.1), ema={"enabled": True, "decay": 0.9})
    recorder = KeyRecorder()
    resume = resume_checkpoint_callback(root / "checkpoints", every_n_steps=2, keep_last=2)
    tr = trainer(root, max_steps=max_steps, callbacks=[recorder, resume], plugins=[SafeCheckpointIO()])
    tr.fit(module, train_loader(module, shards, epoch_length=3, cfg_dropout=0.3), ckpt_path=ckpt_path)
    return module, recorder


def test_resume_is_exact(tiny_model_dir, shards, tmp_path):
    k = 4
    run_a, keys_a = _resume_run(tiny_model_dir, shards, tmp_path / "a", 2 * k)
    first, keys_b1 = _resume_run(tiny_model_dir, shards, tmp_path / "b", k)
    assert keys_b1.seen == keys_a.seen[:k]
    run_b, keys_b2 = _resume_run(tiny_model_dir, shards, tmp_path / "b", 2 * k, ckpt_path="last")
    # The batches after the resume point are exactly the uninterrupted run's.
    assert keys_b2.seen == keys_a.seen[k:]
    wa, wb = adapter_tensors(run_a), adapter_tensors(run_b)
    for n in wa:
        torch.testing.assert_close(wb[n], wa[n], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(run_b.ema_state()[n], run_a.ema_state()[n], rtol=1e-5, atol=1e-7)
    assert not torch.equal(adapter_tensors(first)[n], wa[n])


class NaNAtStep(DeftOmniModule):
    nan_step = 2

    def training_loss(self, batch, generator=None):
        out = super().training_loss(batch, generator)
        if self.global_step == self.nan_step:
            out.loss = out.loss * float("nan")
        return out


def test_nan_loss_raises_before_the_step_and_writes_nothing(tiny_model_dir, shards, tmp_path):
    module = make_module(tiny_model_dir, cls=NaNAtStep, optim={"lr": 1e-2})
    adapters = AdapterCheckpoint(tmp_path / "adapters", every_n_steps=1, keep_last=0)
    resume = resume_checkpoint_callback(tmp_path / "checkpoints", every_n_steps=1, keep_last=5)
    curve = LossCurveCallback(tmp_path / "loss_curve.png")
    tr = trainer(tmp_path, max_steps=5, callbacks=[adapters, resume, curve], plugins=[SafeCheckpointIO()])
    with pytest.raises(NonFiniteLossError, match="global step 2"):
        tr.fit(module, train_loader(module, shards))
    assert module.training_failed
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["step_000001", "step_000002"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.ckpt")) == [
        "step_000001.ckpt", "step_000002.ckpt"]
    # No optimizer step was taken on the NaN: the weights are still those of step 2.
    fresh = load_omnigen(tiny_model_dir).transformer
    load_adapter(fresh, tmp_path / "adapters" / "step_000002", "default")
    saved = dict(fresh.named_parameters())
    for n, p in adapter_tensors(module).items():
        assert torch.equal(saved[n], p)
    with pytest.raises(RuntimeError, match="non-finite"):
        module.save_adapter_folder(tmp_path / "adapters" / "manual")
    assert not (tmp_path / "adapters" / "manual").exists()


def test_checkpoint_of_another_adapter_is_refused(tiny_model_dir, tmp_path):
    module = make_module(tiny_model_dir)
    ck = {"state_dict": {k: torch.zeros(1) for k in module._checkpoint_keys()}, "deft_omni": {
        "format": "deft_omni.training", "version": 2, "adapter_config": adapter_cfg(rank=8), "ema": None}}
    with pytest.raises(ValueError, match="rank=8"):
        module.on_load_checkpoint(ck)
    ck["deft_omni"]["adapter_config"] = adapter_cfg()
    ck["state_dict"]["denoiser.layers.0.mlp.down_proj.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        module.on_load_checkpoint(ck)
    with pytest.raises(ValueError, match="not written by DeftOmniModule"):
        module.on_load_checkpoint({"state_dict": {}})
