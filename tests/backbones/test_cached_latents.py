"""Training on cached latents equals training on pixels: the same loss and adapter gradients at the same
seeds and posterior noise (fp16 storage within rel 1e-3, bf16 within 1e-2), without running the VAE."""

from __future__ import annotations

import pytest
import torch

from deft_omni.data import build_val_loader, make_synthetic_shards
from deft_omni.latent_cache import EncodeSettings, encode_latents
from deft_omni.training import DeftOmniModule

ADAPTER = dict(method="deft", rank=4, decomposition="qr", target_modules=r"layers\.\d+\.self_attn\.(to_q|to_k|to_v)")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cached_latents")
    made = make_synthetic_shards(str(root / "pixels"), n_train=8, n_val=2, image_sizes=((32, 32), (48, 32)),
                                 maxcount=4, edit_fraction=0.5)
    out = {"pixels": made["train"]}
    for dtype in ("float16", "bfloat16"):
        out[dtype] = encode_latents(EncodeSettings(model="tiny", input=made["train"], output=str(root / dtype),
                                                   max_image_side=64, dtype=dtype, quiet=True),
                                    log=lambda m: None)["output"]
    return out


@pytest.fixture(scope="module")
def module(tiny_model_dir):
    torch.manual_seed(0)
    return DeftOmniModule(model={"path": str(tiny_model_dir)}, adapter=ADAPTER, loss={"latent_mode": "sample"},
                          verbose=False)


def _batches(module, path):
    return list(build_val_loader(path, module.backbone.make_processor(max_image_side=64), batch_size=4))


def _step(module, batch, seed):
    module.zero_grad(set_to_none=True)
    loss = module.training_loss(batch, torch.Generator().manual_seed(seed)).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in module.adapter_state().values()])
    return loss.detach(), grads


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_loss_and_gradients_equal_the_pixel_path(sets, module, one_thread, single_process, dtype, tol, monkeypatch):
    pixel, cached = _batches(module, sets["pixels"]), _batches(module, sets[dtype])
    assert [b["keys"] for b in pixel] == [b["keys"] for b in cached] and len(pixel) >= 2
    assert any(b["input_latents"] for b in cached), "some samples must have input images"
    worst = 0.0
    for bp, bc in zip(pixel, cached):
        for seed in (0, 1):
            lp, gp = _step(module, bp, seed)
            with monkeypatch.context() as m:  # the VAE must not run on cached batches
                m.setattr(module.vae, "encode", lambda *a, **k: pytest.fail("the VAE encoded a cached batch"))
                lc, gc = _step(module, bc, seed)
            assert gp.norm() > 0
            worst = max(worst, abs(float(lc - lp)) / abs(float(lp)), _rel(gc, gp))
    print(f"{dtype}: worst relative difference of loss or adapter gradients {worst:.2e}")
    assert worst <= tol, f"{dtype}: worst relative difference {worst:.2e}"
    # Not a vacuous bound: another posterior-noise draw alone (same t and flow noise) moves them far more.
    _, g0 = _step(module, cached[0], 0)
    batch = dict(cached[0], output_latents=cached[0]["output_latents"].clone())
    batch["output_latents"][:, 1] *= 2  # twice the posterior std: what a wrong eps scale would do
    _, g2 = _step(module, batch, 0)
    assert _rel(g2, g0) > 3 * worst


def test_the_vae_stays_put_and_refuses_foreign_latents(sets, module, one_thread, single_process):
    batch = _batches(module, sets["float16"])[0]
    before = next(module.vae.parameters()).device
    module.backbone.move_frozen(torch.device("meta"))  # what the module does before each step
    assert next(module.vae.parameters()).device == before
    module.validation_loss(batch)  # cached batches validate too
    batch["latents_vae"] = ["0123456789abcdef" * 4]
    with pytest.raises(ValueError, match="latents cached with the VAE 0123456789abcdef.*re-encode"):
        module.training_loss(batch, torch.Generator().manual_seed(0))
