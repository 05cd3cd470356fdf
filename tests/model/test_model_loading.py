"""load_omnigen: layouts, missing-file errors, dtypes, no downloads, no torchvision."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from deft_omni.model import (
    HUB_DIFFUSERS,
    HUB_ORIGINAL,
    OmniGenWeightsNotFound,
    build_tiny_transformer,
    detect_layout,
    load_omnigen,
)


def _copy(src, tmp_path):
    return shutil.copytree(src, tmp_path / "copy")


def test_diffusers_layout(tiny_dir):
    parts = load_omnigen(tiny_dir)
    assert parts.layout == "diffusers" and parts.path == tiny_dir
    assert parts.tokenizer.bos_token_id == 1
    assert parts.scheduler.config.invert_sigmas is True
    ref = build_tiny_transformer(0).state_dict()
    for k, v in parts.transformer.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert "torchvision" not in sys.modules  # OmniGenPipeline's processor would import it


@pytest.mark.parametrize("layout_fixture", ["tiny_dir", "tiny_original_dir"])
def test_bf16_keeps_vae_fp32(layout_fixture, request):
    parts = load_omnigen(request.getfixturevalue(layout_fixture), torch_dtype=torch.bfloat16)
    assert {p.dtype for p in parts.transformer.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in parts.vae.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in parts.vae.parameters())
    assert not parts.vae.training


def test_missing_folder(tmp_path):
    with pytest.raises(OmniGenWeightsNotFound) as info:
        load_omnigen(tmp_path / "nope")
    err = info.value
    assert isinstance(err, FileNotFoundError)
    msg = str(err)
    assert str(tmp_path / "nope") in msg and HUB_DIFFUSERS in msg and HUB_ORIGINAL in msg
    assert "huggingface-cli download" in msg


def test_empty_folder(tmp_path):
    assert detect_layout(tmp_path) is None
    with pytest.raises(OmniGenWeightsNotFound, match="model.safetensors"):
        load_omnigen(tmp_path)


def test_missing_original_weights(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(OmniGenWeightsNotFound) as info:
        load_omnigen(folder)
    assert info.value.layout == "original"
    assert info.value.missing == ["model.safetensors or model.pt"]
    msg = str(info.value)
    assert f"huggingface-cli download {HUB_ORIGINAL} --local-dir {folder}" in msg


def test_missing_tensor_is_named_by_its_original_key(tiny_original_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_original_dir, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["llm.layers.1.self_attn.qkv_proj.weight"], state["t_embedder.mlp.2.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError) as info:
        load_omnigen(folder)
    msg = str(info.value)
    assert str(folder / "model.safetensors") in msg
    assert "'llm.layers.1.self_attn.qkv_proj.weight'" in msg and "'t_embedder.mlp.2.bias'" in msg
    assert "to_q" not in msg and "linear_2" not in msg


def test_original_key_of_inverts_the_conversion(tiny_original_dir):
    from safetensors.torch import load_file

    from deft_omni.model.convert import original_key_map, original_key_of

    for original, targets in original_key_map(load_file(str(tiny_original_dir / "model.safetensors"))).items():
        assert all(original_key_of(t) == original for t in targets), original


def test_missing_vae(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path)
    shutil.rmtree(folder / "vae")
    with pytest.raises(OmniGenWeightsNotFound) as info:
        load_omnigen(folder)
    assert "vae/config.json" in info.value.missing
    assert any(m.startswith("vae/diffusion_pytorch_model.safetensors") for m in info.value.missing)
    assert "sdxl-vae" in str(info.value) and HUB_ORIGINAL in str(info.value)


def test_missing_diffusers_pieces(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(folder / "tokenizer")
    shutil.rmtree(folder / "scheduler")  # optional: not reported
    with pytest.raises(OmniGenWeightsNotFound) as info:
        load_omnigen(folder)
    missing = " | ".join(info.value.missing)
    assert "transformer/diffusion_pytorch_model.safetensors" in missing
    assert "tokenizer/tokenizer.json" in missing and "scheduler" not in missing
    assert f"huggingface-cli download {HUB_DIFFUSERS}" in str(info.value)


def test_missing_shard(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    tdir = folder / "transformer"
    (tdir / "diffusion_pytorch_model.safetensors").unlink()
    weight_map = {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                  "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}
    (tdir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tdir / weight_map["a"]).write_bytes(b"x" * 2048)
    with pytest.raises(OmniGenWeightsNotFound) as info:
        load_omnigen(folder)
    assert info.value.missing == ["transformer/diffusion_pytorch_model-00002-of-00002.safetensors"]


def test_lfs_pointer(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path)
    (folder / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 123\n"
    )
    with pytest.raises(OmniGenWeightsNotFound, match="git-lfs pointer"):
        load_omnigen(folder)


def test_default_scheduler_when_absent(tiny_original_dir):
    parts = load_omnigen(tiny_original_dir)
    assert not (tiny_original_dir / "scheduler").exists()
    assert parts.scheduler.config.invert_sigmas is True
    assert parts.scheduler.config.num_train_timesteps == 1
