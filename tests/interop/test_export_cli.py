"""``python -m deft_omni.export`` (in-process): both layouts equal the Python API's files; bad input
exits with status 2 and one message."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from deft_omni.adapters import AdapterConfig, load_adapter, save_adapter
from deft_omni.export import main
from deft_omni.interop import export_lora
from deft_omni.model import build_tiny_transformer, load_omnigen

from .conftest import BLOCK_LINEARS, train_adapter

WEIGHTS = "adapter_model.safetensors"


def _fail(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_cli_equals_the_python_api(layout, adapter_dirs, tiny_dir, tmp_path, capsys):
    out = main([str(adapter_dirs["deft_fused"]), "--model", "tiny", "--layout", layout, "--scale", "0.5",
                "--out", str(tmp_path / "cli")])
    assert f"wrote {out}" in capsys.readouterr().out
    model = load_omnigen(tiny_dir).transformer
    load_adapter(model, adapter_dirs["deft_fused"], adapter_name="exported")
    api = export_lora(model, tmp_path / "api", "exported", scale=0.5, layout=layout)
    ours, theirs = load_file(str(out / WEIGHTS)), load_file(str(api / WEIGHTS))
    assert sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    names = config["target_modules"]
    assert all(n.startswith("llm.layers.") for n in names) if layout == "original" else \
        all(n.startswith("layers.") for n in names)


def test_bad_input_exits_2_with_one_message(adapter_dirs, tmp_path, capsys):
    err = _fail([str(tmp_path / "nope"), "--model", "tiny", "--out", str(tmp_path / "o")], capsys)
    assert "nope does not exist" in err and "Traceback" not in err
    err = _fail([str(adapter_dirs["lora"]), "--model", str(tmp_path / "no_model"), "--out", str(tmp_path / "o")],
                capsys)
    assert "OmniGen weights not found" in err
    other = train_adapter(build_tiny_transformer(seed=7), AdapterConfig(method="deft", rank=2,
                                                                         target_modules=BLOCK_LINEARS), 3)
    folder = save_adapter(other, tmp_path / "other_base")
    err = _fail([str(folder), "--model", "tiny", "--layout", "original", "--out", str(tmp_path / "o")], capsys)
    assert "made for another base model" in err
    original = main([str(adapter_dirs["lora"]), "--model", "tiny", "--layout", "original",
                     "--out", str(tmp_path / "og")])
    err = _fail([str(original), "--model", "tiny", "--out", str(tmp_path / "o")], capsys)
    assert "LoRA on OmniGen's original module names already" in err
    assert not (tmp_path / "o").exists()
