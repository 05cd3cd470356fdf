"""Fixtures for the generation tests: one thread, the tiny OmniGen, adapter folders, input images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from deft_omni.adapters import AdapterConfig, export_lora, inject_adapter, save_adapter
from deft_omni.model import build_tiny_transformer, load_omnigen

TARGETS = r"layers\.\d+\.(self_attn\.(to_q|to_k|to_v|to_out\.0)|mlp\.(gate_up_proj|down_proj))"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def tiny_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture
def parts(tiny_dir):
    """A fresh tiny OmniGen (tests put adapters on its transformer)."""
    return load_omnigen(tiny_dir)


def _trained(transformer, config: AdapterConfig, seed: int, name: str = "default"):
    """Inject an adapter and move its parameters far from the init, so it changes the images."""
    inject_adapter(transformer, config, name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in transformer.named_parameters():
            if f".owned.{name}." in pname:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return transformer


@pytest.fixture(scope="session")
def adapter_dirs(tmp_path_factory, tiny_dir):
    """{"deft": DEFT qr folder, "lora_export": its LoRA export, "lora": a LoRA, "other_base": a DEFT folder
    made on a differently seeded tiny transformer}."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    model = load_omnigen(tiny_dir).transformer
    _trained(model, AdapterConfig(method="deft", rank=4, alpha=8, decomposition="qr", target_modules=TARGETS), 1)
    out["deft"] = save_adapter(model, root / "deft")
    out["lora_export"] = export_lora(model, root / "lora_export")
    model = load_omnigen(tiny_dir).transformer
    _trained(model, AdapterConfig(method="lora", rank=2, alpha=4, target_modules=TARGETS), 2)
    out["lora"] = save_adapter(model, root / "lora")
    other = build_tiny_transformer(seed=7)
    _trained(other, AdapterConfig(method="deft", rank=4, target_modules=TARGETS), 3)
    out["other_base"] = save_adapter(other, root / "other_base")
    return out


@pytest.fixture(scope="session")
def input_png(tmp_path_factory):
    """A 40x56 RGB image with structure (fitted to 32x48 by the processor)."""
    gen = torch.Generator().manual_seed(11)
    arr = (torch.rand(40, 56, 3, generator=gen) * 255).to(torch.uint8).numpy()
    path = tmp_path_factory.mktemp("inputs") / "input.png"
    Image.fromarray(arr, "RGB").save(path)
    return path
