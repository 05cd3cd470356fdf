"""The rectified-flow loss against the formula, t sampling, latents, the schedule and the sampler."""

from __future__ import annotations

import math

import pytest
import torch
from _training_helpers import adapter_cfg, make_module, processor, train_loader
from torch import nn

from deft_omni.generation import build_guidance_batch, euler_timesteps, generate_latents
from deft_omni.backbones import LossConfig, flow_matching_loss, key_noise, sample_t, validation_flow_loss
from deft_omni.model.latents import LatentEncoder
from deft_omni.model.latents import omnigen_condition as model_kwargs
from deft_omni.training import WarmupSchedule


class AffineStub(nn.Module):
    """pred = a * x_t + b * t: a known function of the model inputs."""

    def __init__(self, a: float = 2.0, b: float = -0.5) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.dummy = nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    def forward(self, hidden_states, timestep, return_dict=False, **cond):
        self.calls.append(cond)
        return (self.a * hidden_states + self.b * timestep.view(-1, 1, 1, 1) + 0 * self.dummy,)


def test_loss_matches_formula_with_stub():
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    w = torch.tensor([1.0, 0.25, 2.0])
    stub = AffineStub()
    out = flow_matching_loss(stub, x1, {"input_ids": None}, noise=x0, t=t, loss_weight=w)
    expected = []
    for b in range(3):
        xt = t[b] * x1[b] + (1 - t[b]) * x0[b]
        pred = 2.0 * xt - 0.5 * t[b]
        expected.append(((pred - (x1[b] - x0[b])) ** 2).mean())
    expected = torch.stack(expected)
    torch.testing.assert_close(out.per_sample, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.loss, (w * expected).mean(), rtol=1e-6, atol=1e-7)
    # Without weights: the plain batch mean.
    plain = flow_matching_loss(stub, x1, {}, noise=x0, t=t)
    torch.testing.assert_close(plain.loss, expected.mean(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="noise shape"):
        flow_matching_loss(stub, x1, {}, noise=x0[:2], t=t)


def test_loss_matches_direct_computation_on_tiny_omnigen(tiny_model_dir, shards):
    module = make_module(tiny_model_dir)
    batch = next(iter(train_loader(module, shards)))
    x1, inputs = module.encode_batch(batch, "mean")
    assert x1.shape == (2, 4, 4, 4) and all(i.shape == (1, 4, 4, 4) for i in inputs)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(x1.shape, generator=g)
    t = torch.tensor([0.3, 0.8])
    w = torch.tensor([1.0, 0.5])
    cond = model_kwargs(batch, inputs)
    out = flow_matching_loss(module.transformer, x1, cond, noise=x0, t=t, loss_weight=w)
    xt = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * x0
    pred = module.transformer(hidden_states=xt, timestep=t, input_ids=batch["input_ids"], input_img_latents=inputs,
                              input_image_sizes=batch["input_image_sizes"], attention_mask=batch["attention_mask"],
                              position_ids=batch["position_ids"], return_dict=False)[0]
    per = ((pred - (x1 - x0)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.loss, (w * per).mean(), rtol=1e-5, atol=1e-7)
    # The latents are the VAE posterior mean times the scaling factor.
    direct = module.vae.encode(batch["output_images"]).latent_dist.mean * module.vae.config.scaling_factor
    torch.testing.assert_close(x1, direct)


def test_t_sampling():
    g = torch.Generator().manual_seed(0)
    t = sample_t(20000, LossConfig(), g)
    assert t.dtype == torch.float32 and bool(((t > 0) & (t < 1)).all())
    assert abs(t.mean().item() - 0.5) < 0.01
    # sigmoid(N(0,1)): P(t < sigmoid(-1)) = Phi(-1) ~ 0.1587
    assert abs((t < 1 / (1 + math.e)).float().mean().item() - 0.1587) < 0.01
    shifted = sample_t(20000, LossConfig(t_mean=1.0, t_std=0.5), g)
    assert abs(torch.logit(shifted).mean().item() - 1.0) < 0.02 and abs(torch.logit(shifted).std().item() - 0.5) < 0.02
    uni = sample_t(20000, LossConfig(t_sampling="uniform"), g)
    assert abs(uni.mean().item() - 0.5) < 0.01 and abs(uni.var().item() - 1 / 12) < 0.003
    with pytest.raises(ValueError):
        LossConfig(t_sampling="logit")
    with pytest.raises(ValueError):
        LossConfig(val_t_grid=[1.5])


def test_validation_loss_is_deterministic_and_order_free():
    n1 = key_noise(["a", "b"], (4, 2, 2), seed=3)
    n2 = key_noise(["b", "a"], (4, 2, 2), seed=3)
    torch.testing.assert_close(n1[0], n2[1], rtol=0, atol=0)
    assert not torch.equal(n1[0], key_noise(["a"], (4, 2, 2), seed=4)[0])
    stub = AffineStub()
    x1 = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    grid = [0.1, 0.5, 0.9]
    loss, per_t = validation_flow_loss(stub, x1, {}, ["a", "b"], grid, seed=3)
    again, _ = validation_flow_loss(stub, x1, {}, ["a", "b"], grid, seed=3)
    assert loss.item() == again.item() and per_t.shape == (3,)
    for tv, lt in zip(grid, per_t):
        t = torch.full((2,), tv)
        ref = flow_matching_loss(stub, x1, {}, noise=n1, t=t).loss
        torch.testing.assert_close(lt, ref)
    torch.testing.assert_close(loss, per_t.mean())


def test_latent_cache_and_sampling(tiny_model_dir):
    module = make_module(tiny_model_dir)
    vae = module.vae
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    keys = [("k0", "output"), ("k1", "output")]
    plain = LatentEncoder(cache=False)
    cached = LatentEncoder(cache=True)
    ref = plain.encode(vae, pixels, "mean")
    torch.testing.assert_close(cached.encode(vae, pixels, "mean", cache_keys=keys), ref)
    torch.testing.assert_close(cached.encode(vae, pixels, "mean", cache_keys=keys), ref)
    assert (cached.hits, cached.misses, len(cached)) == (2, 2, 2)
    # "sample" with the cache on still draws posterior noise from the generator given.
    s1 = cached.encode(vae, pixels, "sample", torch.Generator().manual_seed(0), cache_keys=keys)
    s2 = plain.encode(vae, pixels, "sample", torch.Generator().manual_seed(0))
    s3 = cached.encode(vae, pixels, "sample", torch.Generator().manual_seed(1), cache_keys=keys)
    torch.testing.assert_close(s1, s2)
    assert not torch.equal(s1, s3)


def test_warmup_schedule():
    const = WarmupSchedule(4, "constant", 100)
    assert [const(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = WarmupSchedule(0, "cosine", 10, min_lr_ratio=0.1)
    assert cos(0) == pytest.approx(1.0) and cos(5) == pytest.approx(0.55) and cos(10) == pytest.approx(0.1)
    assert cos(50) == pytest.approx(0.1)


def test_configure_optimizers_groups(tiny_model_dir):
    module = make_module(tiny_model_dir, optim={"lr": 1e-3, "warmup_steps": 2, "betas": [0.9, 0.95]},
                         adapter=adapter_cfg(p_lr_ratio=0.1))
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    names = {g["name"]: g for g in opt.param_groups}
    assert set(names) == {"adapter_R", "adapter_P"}
    assert names["adapter_P"]["initial_lr"] == pytest.approx(1e-4) and names["adapter_R"]["initial_lr"] == 1e-3
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert names["adapter_R"]["lr"] == pytest.approx(5e-4)  # warm-up step 0: lr / 2
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == module.target.report.trainable_params
    assert conf["lr_scheduler"]["interval"] == "step" and sched.get_last_lr()[0] == pytest.approx(5e-4)


class RowStub(nn.Module):
    """Output row b = (number of non-pad text tokens of row b) everywhere: identifies the branch."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.config = type("C", (), {"in_channels": 4})()

    def forward(self, hidden_states, timestep, input_ids, return_dict=False, **cond):
        n = (input_ids != 0).sum(dim=1).float().view(-1, 1, 1, 1)
        return (torch.zeros_like(hidden_states) + n,)


def test_sampler_guidance_mapping(tiny_model_dir):
    module = make_module(tiny_model_dir)
    proc = processor(module)
    image = torch.zeros(3, 32, 32)
    instruction = "<img><|image_1|></img> the same shape in green"
    batch, n = build_guidance_batch(proc, instruction, [image], 32, 32)
    assert n == 3
    lengths = {}  # what RowStub outputs for each branch
    for row, branch in enumerate(batch["order"].tolist()):
        lengths[branch] = int((batch["input_ids"][row] != 0).sum())
    cond, uncond, img = lengths[0], lengths[1], lengths[2]
    assert len({cond, uncond, img}) == 3
    steps, g, g_img = 4, 2.5, 1.6
    x = generate_latents(RowStub(), module.vae, proc, instruction, [image], 32, 32, num_steps=steps,
                         guidance_scale=g, img_guidance_scale=g_img, seed=5)
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    v = uncond + g_img * (img - uncond) + g * (cond - img)
    torch.testing.assert_close(x, x0 + v, rtol=1e-5, atol=1e-5)  # sum of the Euler increments = 1 * v
    # Text only: two branches, v = uncond + g (cond - uncond).
    batch2, n2 = build_guidance_batch(proc, "a red circle", [], 32, 32)
    assert n2 == 2
    ts = euler_timesteps(steps)
    assert ts[0] == 0 and ts[-1] == 1 and len(ts) == steps + 1


def test_sampler_runs_on_tiny_omnigen(tiny_model_dir):
    module = make_module(tiny_model_dir)
    proc = processor(module)
    a = generate_latents(module.transformer, module.vae, proc, "a red circle", num_steps=2, seed=0)
    b = generate_latents(module.transformer, module.vae, proc, "a red circle", num_steps=2, seed=0)
    assert a.shape == (1, 4, 4, 4) and torch.equal(a, b) and torch.isfinite(a).all()
