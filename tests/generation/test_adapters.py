"""Adapters at generation time: live == merged, DEFT == its LoRA export, and a weighted sum of two
adapters == the dense weights W0 + sum_a w_a dW_a built by hand from the saved tensors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from deft_omni.data import OmniGenTrainProcessor
from deft_omni.generation import SamplePrompt, decode_latents, generate_latents_batch
from deft_omni.generation.adapters_spec import AdapterSpec, apply_adapters, file_sha256, parse_adapter_arg
from deft_omni.generation.errors import GenerationError
from deft_omni.model import load_omnigen

PREFIX = "base_model.model."


def _images(parts, input_png):
    processor = OmniGenTrainProcessor(parts.tokenizer, cfg_dropout=0.0)
    prompts = [SamplePrompt("a red cat", [], 32, 32, seed=1),
               SamplePrompt("make <img><|image_1|></img> blue", [input_png], 32, 32, seed=2)]
    latents = generate_latents_batch(parts.transformer, parts.vae, processor, prompts, 3)
    return decode_latents(parts.vae, latents)


def _with(tiny_dir, input_png, specs, merge=False):
    parts = load_omnigen(tiny_dir)
    identities = apply_adapters(parts.transformer, specs, merge=merge)
    return _images(parts, input_png), identities


@pytest.fixture(scope="module")
def base_images(tiny_dir, input_png):
    return _images(load_omnigen(tiny_dir), input_png)


def test_deft_live_equals_merged(tiny_dir, input_png, adapter_dirs, base_images):
    live, ids = _with(tiny_dir, input_png, [AdapterSpec(adapter_dirs["deft"], 0.8)])
    merged, _ = _with(tiny_dir, input_png, [AdapterSpec(adapter_dirs["deft"], 0.8)], merge=True)
    assert (live - base_images).abs().max() > 0.05  # the adapter matters
    assert (live - merged).abs().max() < 1e-4
    assert ids[0]["method"] == "deft" and ids[0]["decomposition"] == "qr" and ids[0]["rank"] == 4
    assert ids[0]["weight"] == 0.8
    assert ids[0]["sha256"] == file_sha256(adapter_dirs["deft"] / "adapter_model.safetensors")


def test_deft_equals_its_lora_export(tiny_dir, input_png, adapter_dirs):
    deft, _ = _with(tiny_dir, input_png, [AdapterSpec(adapter_dirs["deft"])])
    lora, ids = _with(tiny_dir, input_png, [AdapterSpec(adapter_dirs["lora_export"])])
    assert ids[0]["method"] == "lora" and ids[0]["exported_from"]["config"]["method"] == "deft"
    assert (deft - lora).abs().max() < 1e-4


def _dense_delta(folder, W0: dict[str, torch.Tensor], kind: str, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """dW per module from the formulas in docs/adapters.md (float64), not through the adapter code."""
    tensors = {k: v.double() for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}
    s = alpha / rank
    out = {}
    for name, w0 in W0.items():
        if kind == "deft":
            P, R = tensors[f"{PREFIX}{name}.deft_P"], tensors[f"{PREFIX}{name}.deft_R"]
            Q = torch.linalg.qr(P).Q
            out[name] = Q @ (s * R - Q.T @ w0.double())
        else:
            out[name] = s * tensors[f"{PREFIX}{name}.lora_B.weight"] @ tensors[f"{PREFIX}{name}.lora_A.weight"]
    return out


@pytest.mark.parametrize("merge", [False, True])
def test_weighted_sum_of_two_adapters_equals_dense_weights(tiny_dir, input_png, adapter_dirs, merge):
    weights = (0.7, -0.4)
    mixed, ids = _with(tiny_dir, input_png, [AdapterSpec(adapter_dirs["deft"], weights[0]),
                                             AdapterSpec(adapter_dirs["lora"], weights[1])], merge=merge)
    assert [i["name"] for i in ids] == ["deft", "lora"]
    ref = load_omnigen(tiny_dir)
    names = [k[len(PREFIX):-len(".deft_P")] for k in
             load_file(str(adapter_dirs["deft"] / "adapter_model.safetensors")) if k.endswith(".deft_P")]
    W0 = {n: ref.transformer.get_submodule(n).weight.detach().clone() for n in names}
    d1 = _dense_delta(adapter_dirs["deft"], W0, "deft", rank=4, alpha=8)
    d2 = _dense_delta(adapter_dirs["lora"], W0, "lora", rank=2, alpha=4)
    with torch.no_grad():
        for n, w0 in W0.items():
            dense_w = w0.double() + weights[0] * d1[n] + weights[1] * d2[n]
            ref.transformer.get_submodule(n).weight.copy_(dense_w.float())
    dense = _images(ref, input_png)
    only_first, _ = _with(tiny_dir, input_png, [AdapterSpec(adapter_dirs["deft"], weights[0])])
    assert (dense - only_first).abs().max() > 0.02  # the second adapter matters
    assert (mixed - dense).abs().max() < 1e-4


def test_adapter_for_another_base_names_model_flag(tiny_dir, adapter_dirs):
    parts = load_omnigen(tiny_dir)
    with pytest.raises(GenerationError, match=r"(?s)does not fit --model .*another base.*Pass --model"):
        apply_adapters(parts.transformer, [AdapterSpec(adapter_dirs["other_base"])], model_path=tiny_dir)


def test_missing_adapter_folder(tmp_path):
    parts_free = tmp_path / "nope"
    with pytest.raises(GenerationError, match=r"--adapter .*nope: no such folder"):
        apply_adapters(torch.nn.Linear(2, 2), [AdapterSpec(parts_free)])


@pytest.mark.parametrize("text,path,weight", [("a/b", "a/b", 1.0), ("a/b:0.5", "a/b", 0.5), ("a:b", "a:b", 1.0),
                                              ("/x/y:-1", "/x/y", -1.0), ("c:1e-1", "c", 0.1)])
def test_parse_adapter_arg(text, path, weight):
    spec = parse_adapter_arg(text)
    assert str(spec.path) == path and spec.weight == weight
