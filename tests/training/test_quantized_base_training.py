"""DeftOmniModule on an int8-quantised tiny OmniGen: the loss and adapter gradients stay within the
quantisation tolerance of the unquantised base, and a Lightning fit trains the adapter only."""

from __future__ import annotations

import pytest
import torch
from _training_helpers import adapter_cfg, adapter_tensors, train_loader, trainer

from deft_omni.backbones import load_backbone
from deft_omni.training import DeftOmniModule

pytest.importorskip("torchao")

# Measured on the tiny model (random weights, 64-wide layers), DEFT qr r=4 on attention + MLP, over 6
# batches, fp32 and bf16 bases: loss relative difference <= 1.3e-3, adapter gradients <= 3.4e-2
# (relative, per tensor's norm; median 1.4e-2).  The bounds leave ~3x headroom; the error is the int8
# rounding of W0 (at most half a step, row absmax / 255, per entry).  docs/low_memory.md has the figures.
LOSS_RTOL = 1e-2
GRAD_RTOL = 0.1
TARGETS = r"layers\.\d+\.(self_attn\.(to_q|to_k|to_v|to_out\.0)|mlp\.(gate_up_proj|down_proj))"


def _module(model_dir, quantize: str, **model) -> DeftOmniModule:
    backbone = load_backbone(str(model_dir), quantize=quantize, **model)
    return DeftOmniModule(model={"path": str(model_dir), "quantize": quantize, **model}, backbone=backbone,
                          adapter=adapter_cfg(target_modules=TARGETS), optim={"lr": 1e-2}, verbose=False)


def _loss_and_grads(module, batch):
    module.train()
    out = module.backbone.training_loss(batch, module.loss_cfg, torch.Generator().manual_seed(3))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in module.adapter_state().items()}


def test_loss_and_gradients_within_the_quantisation_tolerance(tiny_model_dir, shards):
    plain, quantised = _module(tiny_model_dir, "none"), _module(tiny_model_dir, "int8")
    assert quantised.transformer.layers[0].mlp.down_proj.base_layer.weight.qdata.dtype == torch.int8
    batch = next(iter(train_loader(plain, shards)))
    loss0, grads0 = _loss_and_grads(plain, batch)
    loss1, grads1 = _loss_and_grads(quantised, batch)
    assert abs(loss1 - loss0) <= LOSS_RTOL * abs(loss0)
    assert grads0.keys() == grads1.keys() and len(grads0) == 2 * 4 * 2  # P, R of 4 units (qkv fused) x 2 layers
    for name in grads0:
        rel = ((grads1[name] - grads0[name]).norm() / grads0[name].norm()).item()
        assert rel <= GRAD_RTOL, (name, rel)


def test_a_training_run_on_the_quantised_base(tiny_model_dir, shards, tmp_path):
    module = _module(tiny_model_dir, "int8", gradient_checkpointing=True)
    weights = {n: m.weight.qdata.clone() for n, m in module.transformer.named_modules()
               if hasattr(getattr(m, "weight", None), "qdata")}
    before = adapter_tensors(module)
    trainer(tmp_path, max_steps=2).fit(module, train_loader(module, shards))
    after = adapter_tensors(module)
    assert all(not torch.equal(before[n], after[n]) for n in before)
    assert weights and all(torch.equal(module.transformer.get_submodule(n).weight.qdata, q)
                           for n, q in weights.items())


def test_model_quantize_reaches_the_loader(tiny_model_dir):
    module = DeftOmniModule(model={"path": str(tiny_model_dir), "quantize": "int8"},
                            adapter=adapter_cfg(), verbose=False)
    assert hasattr(module.transformer.layers[0].mlp.down_proj.weight, "qdata")
