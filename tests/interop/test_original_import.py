"""LoRAs on OmniGen's original module names load into the diffusers transformer, exactly: our own
original-layout exports (a round trip) and a LoRA made as OmniGen's train.py makes one (peft on
OmniGen's module tree), checked against peft's merge converted by the checkpoint converter."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import deft_omni
from deft_omni.adapters import AdapterLoadError, set_adapter_scale
from deft_omni.interop import export_lora
from deft_omni.interop.original_import import is_original_layout, load_original_lora
from deft_omni.model import convert_original_state_dict, load_omnigen, transformer_config_from_original

from ._original_omnigen import load_original_omnigen
from .conftest import train_adapter
from .test_original_export import CASES, SCALE

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def base(original_dir):
    return load_omnigen(original_dir).transformer


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_through_the_original_layout(case, base, forward_batch, tmp_path):
    source = train_adapter(copy.deepcopy(base), copy.deepcopy(CASES[case][0]), seed=2)
    folder = export_lora(source, tmp_path / "lora", scale=SCALE, layout="original")
    assert is_original_layout(folder)
    model = copy.deepcopy(base)
    names = load_original_lora(model, folder, "back")
    assert names[0] == "back" and len(names) == (2 if case == "deft_separate_qkv" else 1)  # ranks 3 and 9
    set_adapter_scale(source, "default", SCALE)
    with torch.no_grad():
        torch.testing.assert_close(model(**forward_batch)[0], source(**forward_batch)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_a_lora_from_omnigens_train_py(rslora, base, original_dir, forward_batch, tmp_path):
    """OmniGen's train.py: LoraConfig(target_modules=["qkv_proj", "o_proj"]) on its OmniGen module."""
    theirs = peft.get_peft_model(load_original_omnigen(original_dir), peft.LoraConfig(
        r=4, lora_alpha=6, init_lora_weights="gaussian", target_modules=["qkv_proj", "o_proj"], use_rslora=rslora))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    theirs.save_pretrained(tmp_path / "omnigen_lora")
    folder = tmp_path / "omnigen_lora"
    # The oracle: peft's own merge, then the checkpoint converter to diffusers' layout.
    merged = theirs.merge_and_unload().state_dict()
    config = transformer_config_from_original(json.loads((original_dir / "config.json").read_text()), merged)
    expected = copy.deepcopy(base)
    expected.load_state_dict(convert_original_state_dict(merged, config))

    model = copy.deepcopy(base)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    handle = deft_omni.load_into_pipeline(model, folder, weight=1.0)
    assert handle.names == ["omnigen_lora"]
    with torch.no_grad():
        ours, plain = model(**forward_batch)[0], base(**forward_batch)[0]
        assert (ours - plain).abs().max() > 0.05  # the LoRA matters
        # live (ours) against merged weights (the oracle): float rounding only.
        torch.testing.assert_close(ours, expected(**forward_batch)[0], rtol=1e-4, atol=5e-5)
    handle.unload()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshot.items())


def test_dora_is_refused(base, original_dir, tmp_path):
    theirs = peft.get_peft_model(load_original_omnigen(original_dir),
                                 peft.LoraConfig(r=2, target_modules=["o_proj"], use_dora=True))
    theirs.save_pretrained(tmp_path / "dora")
    model = copy.deepcopy(base)
    with pytest.raises(AdapterLoadError, match="DoRA|not a LoRA A/B weight"):
        deft_omni.load_into_pipeline(model, tmp_path / "dora")
    assert not hasattr(model, "deft_adapter_configs")
