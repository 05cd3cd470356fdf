"""Adapter folders: round trip, base fingerprint, and clear refusals of bad files."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from deft_omni.adapters import (
    AdapterConfig,
    AdapterLoadError,
    inject_adapter,
    load_adapter,
    merge_adapters,
    read_adapter_config,
    save_adapter,
)

from .conftest import TwoLayer

TARGETS = ["to_q", "to_k", "to_v", "o"]
GROUP = [["to_q", "to_k", "to_v"]]


def _trained(base, gen, **kw):
    model = copy.deepcopy(base)
    cfg = AdapterConfig(rank=3, target_modules=TARGETS, fused_groups=GROUP, decomposition="tsvd", **kw)
    inject_adapter(model, cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def test_round_trip_records_everything(gen, tmp_path):
    base = TwoLayer()
    model = _trained(base, gen, alpha=6)
    save_adapter(model, tmp_path / "a")
    config, meta = read_adapter_config(tmp_path / "a")
    assert (config.method, config.decomposition, config.rank, config.fused_groups) == ("deft", "tsvd", 3, GROUP)
    assert meta["units"][0]["modules"] == ["to_q", "to_k", "to_v"]
    assert set(meta["base_fingerprint"]) == set(TARGETS)
    assert not (tmp_path / "a" / "adapter_config.json").exists()  # fused: no peft equivalent
    keys = set(load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
    assert "base_model.model.to_q+to_k+to_v.deft_P" in keys
    fresh = copy.deepcopy(base)
    load_adapter(fresh, tmp_path / "a")
    x = torch.randn(4, 12, generator=gen)
    torch.testing.assert_close(fresh(x), model(x))
    assert not any(p.requires_grad for p in fresh.parameters())


def test_save_while_merged_keeps_base_fingerprint(gen, tmp_path):
    base = TwoLayer()
    model = _trained(base, gen)
    merge_adapters(model)
    save_adapter(model, tmp_path / "a")
    load_adapter(copy.deepcopy(base), tmp_path / "a")  # accepted: fingerprint of W0, not W0 + dW


def test_refuses_another_base_with_equal_shapes(gen, tmp_path):
    model = _trained(TwoLayer(), gen)
    save_adapter(model, tmp_path / "a")
    other = TwoLayer()  # same shapes, other weights
    with pytest.raises(AdapterLoadError, match=r"module to_q: .*another base"):
        load_adapter(other, tmp_path / "a")
    assert not hasattr(other.to_q, "base_layer")  # nothing left half-applied
    load_adapter(other, tmp_path / "a", check_base=False)


def test_refuses_base_with_other_shapes(gen, tmp_path):
    save_adapter(_trained(TwoLayer(), gen), tmp_path / "a")
    with pytest.raises(AdapterLoadError, match=r"module to_q: weight shape \[8, 12\] but the adapter was made for "
                                               r"\[6, 12\]"):
        load_adapter(TwoLayer(d_qkv=8), tmp_path / "a")


def test_bf16_copy_of_the_same_base_is_accepted(gen, tmp_path):
    base = TwoLayer()
    save_adapter(_trained(base, gen), tmp_path / "a")
    load_adapter(copy.deepcopy(base).to(torch.bfloat16), tmp_path / "a")


def test_missing_tensor_is_named(gen, tmp_path):
    base = TwoLayer()
    save_adapter(_trained(base, gen), tmp_path / "a")
    f = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(str(f))
    del tensors["base_model.model.o.deft_R"]
    save_file(tensors, str(f))
    with pytest.raises(AdapterLoadError, match=r"tensor 'base_model.model.o.deft_R' for module o is missing"):
        load_adapter(copy.deepcopy(base), tmp_path / "a")


def test_wrong_tensor_shape_is_named(gen, tmp_path):
    base = TwoLayer()
    save_adapter(_trained(base, gen), tmp_path / "a")
    f = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(str(f))
    tensors["base_model.model.o.deft_P"] = torch.zeros(12, 5)
    save_file(tensors, str(f))
    with pytest.raises(AdapterLoadError, match=r"'base_model.model.o.deft_P' has shape \(12, 5\), but module o "
                                               r"needs \(12, 3\)"):
        load_adapter(copy.deepcopy(base), tmp_path / "a")


def test_unknown_method_is_refused(gen, tmp_path):
    save_adapter(_trained(TwoLayer(), gen), tmp_path / "a")
    meta_file = tmp_path / "a" / "deft_omni.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["method"] = "dora"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=r"deft_omni.json: field 'config' is invalid: .*method='dora'"):
        load_adapter(TwoLayer(), tmp_path / "a")


def test_pickle_file_is_never_loaded(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["o"]}))
    torch.save({"x": torch.zeros(1)}, folder / "adapter_model.bin")
    with pytest.raises(AdapterLoadError, match=r"adapter_model.safetensors is missing.*adapter_model.bin.*never "
                                               r"loaded"):
        load_adapter(TwoLayer(), folder)


def test_not_a_safetensors_file(gen, tmp_path):
    base = TwoLayer()
    save_adapter(_trained(base, gen), tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(AdapterLoadError, match="not a readable safetensors file"):
        load_adapter(copy.deepcopy(base), tmp_path / "a")


def test_unexpected_tensors_are_refused(gen, tmp_path):
    base = TwoLayer()
    save_adapter(_trained(base, gen), tmp_path / "a")
    f = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(str(f))
    tensors["base_model.model.extra.deft_P"] = torch.zeros(2, 2)
    save_file(tensors, str(f))
    with pytest.raises(AdapterLoadError, match="unexpected tensors"):
        load_adapter(copy.deepcopy(base), tmp_path / "a")


def test_not_an_adapter_folder(tmp_path):
    with pytest.raises(AdapterLoadError, match="does not exist"):
        load_adapter(TwoLayer(), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterLoadError, match="is this an adapter folder"):
        load_adapter(TwoLayer(), tmp_path / "empty")


def test_save_is_atomic_and_overwrites(gen, tmp_path):
    base = TwoLayer()
    save_adapter(_trained(base, gen), tmp_path / "a")
    second = _trained(base, gen)
    save_adapter(second, tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp folders left
    fresh = copy.deepcopy(base)
    load_adapter(fresh, tmp_path / "a")
    x = torch.randn(3, 12, generator=gen)
    torch.testing.assert_close(fresh(x), second(x))


def test_load_peft_made_folder(gen, tmp_path):
    peft = pytest.importorskip("peft")
    base = TwoLayer()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.DeftConfig(r=2, target_modules=["o"],
                                                                      decomposition_method="qr", alpha=4))
    with torch.no_grad():
        theirs.base_model.model.o.deft_R["default"].add_(0.3)
    theirs.save_pretrained(tmp_path / "p")
    ours = copy.deepcopy(base)
    load_adapter(ours, tmp_path / "p")
    x = torch.randn(3, 12, generator=gen)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
