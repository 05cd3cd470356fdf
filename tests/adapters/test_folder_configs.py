"""An adapter folder's two configs: each readable with the file's name, and the two agreeing."""

from __future__ import annotations

import json

import pytest

from deft_omni.adapters import AdapterConfig, AdapterLoadError, inject_adapter, load_adapter, read_adapter_config
from deft_omni.adapters import save_adapter

from .conftest import TwoLayer


def _saved(tmp_path, **kw):
    model = TwoLayer()
    inject_adapter(model, AdapterConfig(**{"rank": 2, "target_modules": ["to_q", "o"], **kw}))
    save_adapter(model, tmp_path / "a")
    return tmp_path / "a"


def _peft_only(tmp_path, text):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(text)
    return folder


def test_peft_config_that_is_not_json_names_the_file(tmp_path):
    folder = _peft_only(tmp_path, '{"peft_type": "LORA", "r": 2,')
    with pytest.raises(AdapterLoadError, match=r"p/adapter_config.json: not valid JSON"):
        read_adapter_config(folder)


@pytest.mark.parametrize("data, message", [
    ({"peft_type": "LORA", "target_modules": ["o"]}, r"p/adapter_config.json: field 'r' is missing"),
    ({"peft_type": "DEFT", "target_modules": ["o"]}, r"p/adapter_config.json: field 'r' is missing"),
    ({"peft_type": "DEFT", "r": "8", "target_modules": ["o"]}, r"p/adapter_config.json: field 'r'.*'8'"),
    ({"peft_type": "LORA", "r": 2}, r"p/adapter_config.json: field 'target_modules' is missing"),
    ([1, 2], r"p/adapter_config.json: expected a JSON object"),
])
def test_peft_config_with_a_missing_or_bad_field_names_file_and_field(tmp_path, data, message):
    folder = _peft_only(tmp_path, json.dumps(data))
    with pytest.raises(AdapterLoadError, match=message):
        read_adapter_config(folder)


@pytest.mark.parametrize("kw, edit, field", [
    ({}, {"r": 4}, "r"),
    ({"alpha": 4.0}, {"alpha": 8}, "alpha"),
    ({"decomposition": "relu"}, {"decomposition_method": "qr"}, "decomposition"),
    ({"method": "para"}, {"para": False}, "method"),
    ({}, {"target_modules": ["o"]}, "target_modules"),
    ({"method": "lora"}, {"lora_alpha": 8}, "alpha"),
    ({"method": "lora"}, {"peft_type": "DEFT"}, "method"),
    ({}, {"deft_dropout": 0.5}, "dropout"),
])
def test_disagreeing_configs_name_both_files_and_the_field(tmp_path, kw, edit, field):
    folder = _saved(tmp_path, **kw)
    peft_file = folder / "adapter_config.json"
    peft_file.write_text(json.dumps({**json.loads(peft_file.read_text()), **edit}))
    pattern = rf"a/deft_omni.json and .*a/adapter_config.json disagree: {field}"
    with pytest.raises(AdapterLoadError, match=pattern):
        read_adapter_config(folder)
    model = TwoLayer()
    with pytest.raises(AdapterLoadError, match=pattern):
        load_adapter(model, folder)
    assert not hasattr(model.o, "base_layer")  # nothing injected


def test_broken_peft_config_beside_ours_is_refused(tmp_path):
    folder = _saved(tmp_path)
    (folder / "adapter_config.json").write_text("{ not json")
    with pytest.raises(AdapterLoadError, match=r"a/adapter_config.json: not valid JSON"):
        read_adapter_config(folder)


def test_peft_config_beside_a_fused_adapter_is_refused(tmp_path):
    model = TwoLayer()
    inject_adapter(model, AdapterConfig(rank=2, target_modules=["to_q", "to_k", "to_v"],
                                        fused_groups=[["to_q", "to_k", "to_v"]]))
    save_adapter(model, tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "DEFT", "r": 2, "target_modules": ["to_q", "to_k", "to_v"]}))
    with pytest.raises(AdapterLoadError, match=r"deft_omni.json and .*adapter_config.json disagree: .*fused"):
        read_adapter_config(tmp_path / "a")


@pytest.mark.parametrize("kw", [{}, {"alpha": 4.0, "decomposition": "relu"}, {"method": "para"},
                                {"method": "lora"}, {"method": "lora", "alpha": 4.0, "dropout": 0.1}])
def test_agreeing_configs_load(tmp_path, kw):
    folder = _saved(tmp_path, **kw)
    assert (folder / "adapter_config.json").exists()
    config, _ = read_adapter_config(folder)
    assert config.method == kw.get("method", "deft")
    load_adapter(TwoLayer(), folder, check_base=False)


def test_exported_lora_folder_agrees(tmp_path):
    from deft_omni.adapters import export_lora

    model = TwoLayer()
    inject_adapter(model, AdapterConfig(rank=2, target_modules=["to_q", "to_k", "to_v", "o"],
                                        fused_groups=[["to_q", "to_k", "to_v"]], alpha=4.0))
    export_lora(model, tmp_path / "e")
    config, _ = read_adapter_config(tmp_path / "e")
    assert config.method == "lora"
    load_adapter(TwoLayer(), tmp_path / "e", check_base=False)
