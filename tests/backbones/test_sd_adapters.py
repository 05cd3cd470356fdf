"""Adapters on Stable Diffusion UNets: the paper's SD layout counted on weightless full-size UNets
against diffusers' DreamBooth-LoRA setup (peft LoRA, r = 4, to_q/to_k/to_v/to_out.0), fused groups
only where members share an input, and peft as the oracle on a real (tiny) UNet."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import UNet2DConditionModel
from peft import DeftConfig, LoraConfig, get_peft_model

from deft_omni.adapters import AdapterConfig, inject_adapter
from deft_omni.backbones.sd_family import SD15, SDXL, SDNetworks
from deft_omni.backbones.sd_tiny import build_tiny_pipeline
from fixtures.peft_copy import copy_into_peft

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "targets"
SCRIPT_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # diffusers' train_dreambooth_lora(_sdxl).py
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # the other fields: defaults


def preset(name: str) -> dict:
    return yaml.safe_load((PRESETS / f"{name}.yaml").read_text())


def meta_unet(config: dict) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fused_deft_count(unet: UNet2DConditionModel, rank: int) -> int:
    """DEFT with sd_attn's groups: one P over q,k,v of attn1 (d -> 3d), one over k,v of attn2
    (text -> 2d); P is (out x r), R (r x in)."""
    total = 0
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            d = module.to_q.in_features
            total += rank * (3 * d + d) + rank * (d + d)
        elif name.endswith("attn2"):
            d, text = module.to_q.in_features, module.to_k.in_features
            total += rank * (2 * d) + rank * (2 * d + text) + rank * (d + d)
    return total


@pytest.mark.parametrize("config,params,lora", [(SDXL_UNET, 2_567_463_684, 5_806_080),
                                                (SD15_UNET, 859_520_964, 797_184)])
def test_counts_at_rank_4_against_diffusers_dreambooth_lora(config, params, lora):
    reference = meta_unet(config)
    assert sum(p.numel() for p in reference.parameters()) == params  # the real UNet's size
    reference.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=SCRIPT_TARGETS))
    assert trainable(reference) == lora  # what the DreamBooth-LoRA script trains
    targets = preset("sd_attn")
    for method in ("lora", "deft"):  # unfused: the same r (in + out) per layer as LoRA
        net = SDNetworks(meta_unet(config), {})
        report = inject_adapter(net, AdapterConfig(method=method, rank=4, target_modules=targets["target_modules"]))
        assert report.trainable_params == trainable(net) == lora
        assert len(report.wrapped) == len([n for n, _ in reference.named_modules() if n.endswith(".lora_A")])
    net = SDNetworks(meta_unet(config), {})
    report = inject_adapter(net, AdapterConfig(method="deft", rank=4, **targets))
    assert report.trainable_params == fused_deft_count(net.unet, 4) < lora
    blocks = sum(1 for n, _ in net.unet.named_modules() if n.endswith("attn1"))
    assert len(report.groups) == 2 * blocks  # q,k,v of attn1 and k,v of attn2 in every block


def test_fused_groups_only_where_members_share_an_input():
    net = build_tiny_pipeline(SDXL).unet
    report = inject_adapter(SDNetworks(net, {}), AdapterConfig(method="deft", rank=2, **preset("sd_attn")))
    children = sorted({tuple(m.rsplit(".", 2)[-2] + "." + m.rsplit(".", 1)[-1] for m in g) for g in report.groups})
    assert children == [("attn1.to_q", "attn1.to_k", "attn1.to_v"), ("attn2.to_k", "attn2.to_v")]
    with pytest.raises(ValueError, match="in_features"):  # fusing attn2's q with k, v cannot work
        inject_adapter(SDNetworks(build_tiny_pipeline(SDXL).unet, {}),
                       AdapterConfig(method="deft", rank=2, target_modules=SCRIPT_TARGETS,
                                     fused_groups=[["to_q", "to_k", "to_v"]]))
    with pytest.raises(ValueError, match="two fused groups"):
        inject_adapter(SDNetworks(build_tiny_pipeline(SDXL).unet, {}),
                       AdapterConfig(method="deft", rank=2, target_modules=SCRIPT_TARGETS,
                                     fused_groups=[["attn1.to_q", "attn1.to_k"], ["attn1.to_k", "attn1.to_v"]]))


def test_text_encoder_preset_reaches_both_encoders():
    pipe = build_tiny_pipeline(SDXL)
    net = SDNetworks(pipe.unet, {"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2})
    report = inject_adapter(net, AdapterConfig(method="lora", rank=2, **preset("sd_attn_text")))
    roots = {name.split(".", 1)[0] for name in report.wrapped}
    assert roots == {"unet", "text_encoder", "text_encoder_2"}
    assert any(g[0].endswith("self_attn.q_proj") and len(g) == 3 for g in report.groups)


VARIANTS = [("deft", "relu"), ("deft", "qr"), ("para", "qr"), ("lora", None)]


@pytest.mark.parametrize("family", [SD15, SDXL], ids=["sd15", "sdxl"])
@pytest.mark.parametrize("method,decomposition", VARIANTS)
def test_peft_oracle_on_a_unet(family, method, decomposition):
    """Same weights in ours and peft's layers on a whole tiny UNet: same outputs and gradients."""
    pipe = build_tiny_pipeline(family)
    base = pipe.unet
    ours = copy.deepcopy(base)
    inject_adapter(ours, AdapterConfig(method=method, rank=3, alpha=6, decomposition=decomposition or "qr",
                                       target_modules=SCRIPT_TARGETS, init_identity=False))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    cfg = (LoraConfig(r=3, lora_alpha=6, target_modules=SCRIPT_TARGETS) if method == "lora" else
           DeftConfig(r=3, alpha=6, target_modules=SCRIPT_TARGETS, decomposition_method=decomposition,
                      para=method == "para"))
    theirs = get_peft_model(copy.deepcopy(base), cfg)
    names = [n for n, m in ours.named_modules() if hasattr(m, "owned") and "default" in m.owned]
    copy_into_peft(ours, theirs, method, names)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    text = torch.randn(2, 7, base.config.cross_attention_dim, generator=gen)
    added = ({"text_embeds": torch.randn(2, 32, generator=gen), "time_ids": torch.tensor([[32., 32, 0, 0, 32, 32]] * 2)}
             if family is SDXL else None)
    t = torch.tensor([10, 700])
    y_ours = ours(x, t, text, added_cond_kwargs=added).sample
    y_peft = theirs(x, t, text, added_cond_kwargs=added).sample
    torch.testing.assert_close(y_ours, y_peft, rtol=1e-4, atol=1e-5)
    y_ours.square().sum().backward()
    y_peft.square().sum().backward()
    for name in names:
        branch, layer = ours.get_submodule(name).owned["default"], theirs.base_model.model.get_submodule(name)
        mine, ref = (branch.lora_A.grad, layer.lora_A["default"].weight.grad) if method == "lora" else \
            (branch.P.grad, layer.deft_P["default"].grad)
        torch.testing.assert_close(mine, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())
