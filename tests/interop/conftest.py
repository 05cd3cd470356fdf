"""Fixtures for the interop tests: tiny OmniGen folders (both layouts), trained adapter folders,
diffusers' OmniGenPipeline class (torchvision shim) and a fixed transformer batch."""

from __future__ import annotations

import shutil

import pytest
import torch

from deft_omni.adapters import AdapterConfig, save_adapter
from deft_omni.data import OmniGenTrainProcessor
from deft_omni.generation import build_guidance_batch
from fixtures.tiny_original import save_tiny_original_layout

from deft_omni.model import load_omnigen

# Shared with the generation tests: the tiny model folder, a 40x56 input image (both processors
# centre-crop it to 32x48) and `train_adapter` (inject, then move the parameters far from the init).
from ..generation.conftest import _trained as train_adapter  # noqa: F401
from ..generation.conftest import input_png, tiny_dir  # noqa: F401
from .torchvision_shim import omnigen_pipeline_class

BLOCK_LINEARS = r"layers\.\d+\.(self_attn\.(to_q|to_k|to_v|to_out\.0)|mlp\.(gate_up_proj|down_proj))"
QKV = [["to_q", "to_k", "to_v"]]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def sharp_dir(tiny_dir, tmp_path_factory):
    """The tiny OmniGen with a VAE whose posterior std is exp(-15) ~ 3e-7 (log-variance at diffusers'
    clamp, -30): the pipeline encodes input images with a posterior *sample*, deft_omni with the
    *mean*, and only such a VAE makes the two agree to float tolerance."""
    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("sharp") / "omnigen"
    shutil.copytree(tiny_dir, folder)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    half = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[half:] = 0.0
        vae.quant_conv.bias[half:] = -100.0
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def original_dir(tmp_path_factory):
    """A tiny checkpoint in OmniGen's original layout (config.json + model.safetensors)."""
    return save_tiny_original_layout(tmp_path_factory.mktemp("original") / "omnigen", seed=0)


@pytest.fixture(scope="session")
def adapter_dirs(tmp_path_factory, tiny_dir):
    """{"deft_fused": DEFT qr, q/k/v fused; "lora": a LoRA; "para": PaRa relu, all trained on tiny_dir}."""
    root = tmp_path_factory.mktemp("adapters")
    specs = {
        "deft_fused": AdapterConfig(method="deft", rank=4, alpha=8, decomposition="qr", target_modules=BLOCK_LINEARS,
                                    fused_groups=QKV),
        "lora": AdapterConfig(method="lora", rank=2, alpha=4, target_modules=BLOCK_LINEARS),
        "para": AdapterConfig(method="para", rank=3, decomposition="relu", target_modules=BLOCK_LINEARS),
    }
    out = {}
    for seed, (name, config) in enumerate(specs.items(), start=1):
        transformer = load_omnigen(tiny_dir).transformer
        out[name] = save_adapter(train_adapter(transformer, config, seed), root / name)
    return out


@pytest.fixture(scope="session")
def pipeline_class():
    return omnigen_pipeline_class()


@pytest.fixture
def make_pipe(pipeline_class):
    def make(folder):
        pipe = pipeline_class.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    return make


@pytest.fixture(scope="session")
def forward_batch(tiny_dir):
    """Keyword arguments of one OmniGenTransformer2DModel forward ([cond, uncond] rows, 32x48 output)."""
    parts = load_omnigen(tiny_dir)
    processor = OmniGenTrainProcessor(parts.tokenizer, cfg_dropout=0.0)
    batch, rows = build_guidance_batch(processor, "a red cat on a table", [], 32, 48, use_img_cfg=False)
    gen = torch.Generator().manual_seed(5)
    return dict(hidden_states=torch.randn(rows, 4, 4, 6, generator=gen), timestep=torch.full((rows,), 0.4),
                input_ids=batch["input_ids"], input_img_latents=[], input_image_sizes={},
                attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], return_dict=False)
