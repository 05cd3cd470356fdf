"""``export_lora(..., layout="original")``: a peft LoRA on OmniGen's own module names.

Oracles: transformers' Phi3Model loaded from a tiny original-layout checkpoint under OmniGen's module
names (``llm.layers.N...``), with the export loaded by ``peft.PeftModel.from_pretrained``; the
expected dW per original module is built from the diffusers-side merged weights through a mapping
table written here by hand, not through the code under test.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from deft_omni.adapters import AdapterConfig, AdapterLinear, merge_adapters, set_adapter_scale
from deft_omni.data.processor import build_attention_mask
from deft_omni.interop import ExportError, export_lora
from deft_omni.model import load_omnigen

from ._omnigen_package import omnigen_package
from ._original_omnigen import load_original_omnigen, phi3_config
from .conftest import BLOCK_LINEARS, QKV, train_adapter

peft = pytest.importorskip("peft")

SCALE = 0.7
# adapter config, expected LoRA rank of each layer's qkv_proj (None: not exported)
CASES = {
    "deft_fused_qkv": (AdapterConfig(method="deft", rank=3, alpha=6, decomposition="qr", target_modules=BLOCK_LINEARS,
                                     fused_groups=QKV), 3),
    "deft_separate_qkv": (AdapterConfig(method="deft", rank=3, decomposition="eigen", target_modules=BLOCK_LINEARS), 9),
    "para_q_only": (AdapterConfig(method="para", rank=2, decomposition="relu",
                                  target_modules=r"layers\.\d+\.self_attn\.to_q"), 2),
    "lora_qk_fused_v_alone": (AdapterConfig(method="lora", rank=2, alpha=3,
                                            target_modules=r"layers\.\d+\.self_attn\.to_[qkv]",
                                            fused_groups=[["to_q", "to_k"]]), 4),
    "lora_outside_decoder": (AdapterConfig(method="lora", rank=2, target_modules=[
        "time_token.linear_1", "t_embedder.linear_2", "norm_out.linear", "proj_out"]), None),
}


def original_to_diffusers(num_layers: int) -> dict[str, list[str]]:
    """OmniGen's Linear layers -> the diffusers ones stacked in them (rows in this order)."""
    table = {"time_token.mlp.0": ["time_token.linear_1"], "time_token.mlp.2": ["time_token.linear_2"],
             "t_embedder.mlp.0": ["t_embedder.linear_1"], "t_embedder.mlp.2": ["t_embedder.linear_2"],
             "final_layer.adaLN_modulation.1": ["norm_out.linear"], "final_layer.linear": ["proj_out"]}
    for i in range(num_layers):
        o, d = f"llm.layers.{i}", f"layers.{i}"
        table[f"{o}.self_attn.qkv_proj"] = [f"{d}.self_attn.to_q", f"{d}.self_attn.to_k", f"{d}.self_attn.to_v"]
        table[f"{o}.self_attn.o_proj"] = [f"{d}.self_attn.to_out.0"]
        table[f"{o}.mlp.gate_up_proj"] = [f"{d}.mlp.gate_up_proj"]
        table[f"{o}.mlp.down_proj"] = [f"{d}.mlp.down_proj"]
    return table


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every Linear layer's weight by module name (a wrapped layer's base weight under its own name)."""
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, AdapterLinear)) and not n.endswith("base_layer")}


def diffusers_decoder(transformer, emb, mask01, position_ids):
    """The diffusers model's decoder stack (its layers, rotary embedding and final norm) on `emb`."""
    additive = ((1 - mask01) * torch.finfo(emb.dtype).min).unsqueeze(1)
    rope = transformer.rope(emb, position_ids)
    h = emb
    for block in transformer.layers:
        h = block(h, attention_mask=additive, image_rotary_emb=rope)
    return transformer.norm(h), additive


def decoder_inputs(hidden: int):
    """Two rows, the first unpadded (diffusers reads RoPE from row 0), each with an input-image span."""
    text_len, n_out, padding = 10, 8, [0, 3]
    mask01 = build_attention_mask(padding, [[(2, 6)], [(1, 3)]], text_len, n_out)
    seq = text_len + 1 + n_out
    position_ids = torch.zeros(2, seq, dtype=torch.long)
    for b, pad in enumerate(padding):
        position_ids[b, pad:] = torch.arange(seq - pad)
    emb = torch.randn(2, seq, hidden, generator=torch.Generator().manual_seed(3))
    return emb, mask01, position_ids


@pytest.fixture(scope="module")
def base(original_dir):
    return load_omnigen(original_dir).transformer


@pytest.fixture(scope="module")
def original_model(original_dir):
    return load_original_omnigen(original_dir)


def _trained(base, config, seed=1):
    return train_adapter(copy.deepcopy(base), copy.deepcopy(config), seed)


def _expected_delta(model, num_layers):
    merged = copy.deepcopy(model)
    set_adapter_scale(merged, "default", SCALE)
    before = linear_weights(merged)
    merge_adapters(merged)
    after = linear_weights(merged)
    table = original_to_diffusers(num_layers)
    return {o: torch.cat([after[d] - before[d] for d in ds]) for o, ds in table.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_loads_every_tensor_and_dw_matches(case, base, original_model, tmp_path):
    config, qkv_rank = CASES[case]
    model = _trained(base, config)
    out = export_lora(model, tmp_path / "lora", scale=SCALE, layout="original")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "deft_omni_export.json"]
    saved = load_file(str(out / "adapter_model.safetensors"))

    theirs = copy.deepcopy(original_model)
    W0 = linear_weights(theirs)
    wrapped = peft.PeftModel.from_pretrained(theirs, out)
    # peft only warns about keys it did not use: every tensor must be in a LoRA layer, with its value.
    loaded = {n: p for n, p in wrapped.named_parameters() if ".lora_" in n}
    assert len(loaded) == len(saved) > 0
    for key, tensor in saved.items():
        assert torch.equal(loaded[key.replace(".weight", ".default.weight")], tensor), key

    if qkv_rank is not None:
        emb, mask01, position_ids = decoder_inputs(model.config.hidden_size)
        set_adapter_scale(model, "default", SCALE)
        with torch.no_grad():
            plain, _ = diffusers_decoder(base, emb, mask01, position_ids)
            ours, additive = diffusers_decoder(model, emb, mask01, position_ids)
            phi3 = wrapped.base_model.model.llm(inputs_embeds=emb, attention_mask=additive,
                                                position_ids=position_ids).last_hidden_state
        assert (ours - plain).abs().max() > 1e-2  # the adapter matters
        torch.testing.assert_close(phi3, ours, rtol=1e-5, atol=1e-5)

    wrapped.merge_and_unload()
    delta = {n: w - W0[n] for n, w in linear_weights(theirs).items()}
    expected = _expected_delta(model, model.config.num_layers)
    assert sorted(delta) == sorted(expected)
    touched = [o for o, d in expected.items() if d.abs().max() > 0]
    assert touched and all(delta[o].abs().max() == 0 for o in expected if o not in touched)
    for name in touched:
        torch.testing.assert_close(delta[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    if qkv_rank is not None:
        assert saved["base_model.model.llm.layers.1.self_attn.qkv_proj.lora_A.weight"].shape[0] == qkv_rank


def test_separate_qkv_is_one_block_structured_lora_of_rank_3r(base, tmp_path):
    model = _trained(base, CASES["deft_separate_qkv"][0])
    out = export_lora(model, tmp_path / "lora", layout="original")
    saved = load_file(str(out / "adapter_model.safetensors"))
    B = saved["base_model.model.llm.layers.0.self_attn.qkv_proj.lora_B.weight"]
    d = model.config.hidden_size
    assert B.shape == (3 * d, 9)
    for block in range(3):
        rows, cols = slice(block * d, (block + 1) * d), slice(block * 3, (block + 1) * 3)
        off = B[rows].clone()
        off[:, cols] = 0
        assert off.abs().max() == 0 and B[rows, cols].abs().max() > 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and cfg["lora_alpha"] == 3.0
    assert cfg["rank_pattern"] == {r"layers\.0\.self_attn\.qkv_proj": 9, r"layers\.1\.self_attn\.qkv_proj": 9}
    assert cfg["alpha_pattern"] == cfg["rank_pattern"]
    # peft 0.9 (pinned by OmniGen) matches pattern keys with ".*\.KEY$", peft >= 0.14 with "(.*\.)?KEY$".
    key = r"layers\.1\.self_attn\.qkv_proj"
    for rule in (r".*\.{}$", r"(.*\.)?({})$"):
        assert re.match(rule.format(key), "llm.layers.1.self_attn.qkv_proj")
        assert not re.match(rule.format(key), "llm.layers.11.self_attn.qkv_proj")


def test_to_q_alone_is_exact_with_zero_k_v_rows(base, tmp_path):
    model = _trained(base, CASES["para_q_only"][0])
    saved = load_file(str(export_lora(model, tmp_path / "lora", layout="original") / "adapter_model.safetensors"))
    B = saved["base_model.model.llm.layers.0.self_attn.qkv_proj.lora_B.weight"]
    d = model.config.hidden_size
    assert B[:d].abs().max() > 0 and B[d:].abs().max() == 0
    assert sorted(saved) == sorted(f"base_model.model.llm.layers.{i}.self_attn.qkv_proj.lora_{m}.weight"
                                   for i in range(2) for m in "AB")


def test_module_without_original_counterpart_is_refused(base, tmp_path):
    model = copy.deepcopy(base)
    model.camera_head = nn.Linear(model.config.hidden_size, 8)
    train_adapter(model, AdapterConfig(method="lora", rank=2, target_modules=["to_out.0", "camera_head"]), 1)
    with pytest.raises(ExportError, match=r"module camera_head: it has no counterpart in OmniGen's original"):
        export_lora(model, tmp_path / "lora", layout="original")
    assert not (tmp_path / "lora").exists()


def test_merged_adapter_is_refused(base, tmp_path):
    model = _trained(base, CASES["deft_fused_qkv"][0])
    merge_adapters(model)
    with pytest.raises(ExportError, match="merged"):
        export_lora(model, tmp_path / "lora", layout="original")


def test_unknown_layout_is_refused(base, tmp_path):
    with pytest.raises(ValueError, match="layout='comfy' is unknown"):
        export_lora(_trained(base, CASES["para_q_only"][0]), tmp_path / "x", layout="comfy")


def test_omnigen_package_merge_lora(base, original_dir, tmp_path):
    """Extra oracle: OmniGen's own module tree and its ``OmniGenPipeline.merge_lora`` (skipped when
    the package is not installed; see _omnigen_package.py)."""
    package = omnigen_package()
    if package is None:
        pytest.skip("OmniGen's package is not installed (pip install --no-deps --target /tmp/omnigen_pkg "
                    "omnigen==1.0.3)")
    from safetensors.torch import load_file as load

    config_json = json.loads((original_dir / "config.json").read_text())
    theirs = package.OmniGen(package.Phi3Config(**phi3_config(config_json).to_dict()), pos_embed_max_size=32)
    theirs.load_state_dict(load(str(original_dir / "model.safetensors")), strict=True)
    W0 = linear_weights(theirs)
    model = _trained(base, CASES["deft_separate_qkv"][0])
    out = export_lora(model, tmp_path / "lora", scale=SCALE, layout="original")
    holder = type("Pipeline", (), {})()
    holder.model = theirs
    package.merge_lora(holder, str(out))
    expected = _expected_delta(model, model.config.num_layers)
    for name, w in linear_weights(theirs).items():
        torch.testing.assert_close(w - W0[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
