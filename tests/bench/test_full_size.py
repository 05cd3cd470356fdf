"""benchmarks/full_size: the model's arithmetic, the fit, the fake replay, the GPU script's CPU path."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from benchmarks.full_size.arch import (  # noqa: E402
    OMNIGEN_V1, OMNIGEN_V1_PARAMETERS, PAPER_FUSED, PAPER_TARGETS, SDXL_VAE, adapter_parameters, buffer_elements,
    parameter_counts, sequence_length, transformer_config)
from benchmarks.full_size.case import Case  # noqa: E402
from benchmarks.full_size.fit import Quadratic, fit_quadratic  # noqa: E402
from benchmarks.full_size.predict import GIB, Coefficients, Setup, predict  # noqa: E402

from deft_omni.adapters import AdapterConfig, inject_adapter  # noqa: E402


def _meta_model(cfg):
    from diffusers import OmniGenTransformer2DModel

    with torch.device("meta"):
        return OmniGenTransformer2DModel(**cfg)


def test_parameter_counts_exact_against_a_meta_model():
    model = _meta_model(OMNIGEN_V1)
    counts = parameter_counts(OMNIGEN_V1)
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == OMNIGEN_V1_PARAMETERS == 3_762_072_592
    assert counts["layers"] == sum(p.numel() for p in model.layers.parameters())
    assert counts["embed_tokens"] == model.embed_tokens.weight.numel() == 32064 * 3072
    assert buffer_elements(OMNIGEN_V1) == model.patch_embedding.pos_embed.numel()
    assert len(OMNIGEN_V1["rope_scaling"]["short_factor"]) == len(OMNIGEN_V1["rope_scaling"]["long_factor"]) == 48
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        assert sum(p.numel() for p in AutoencoderKL(**SDXL_VAE).parameters()) == 83_653_863


@pytest.mark.parametrize("method,expected", [("deft", 37_748_736), ("lora", 37_748_736), ("para", 25_165_824)])
def test_our_adapter_counts_on_the_paper_layout(method, expected):
    model = _meta_model(OMNIGEN_V1)
    report = inject_adapter(model, AdapterConfig(method=method, rank=64, target_modules=PAPER_TARGETS,
                                                 fused_groups=PAPER_FUSED))
    assert report.trainable_params == adapter_parameters(OMNIGEN_V1, "ours", method, 64) == expected


@pytest.mark.parametrize("method", ["lora", "deft", "para"])
def test_peft_adapter_counts_on_the_split_layout(method):
    cfg = transformer_config(2)
    model = _meta_model(cfg).requires_grad_(False)
    config = peft.LoraConfig(r=8, lora_alpha=8, target_modules=PAPER_TARGETS) if method == "lora" else \
        peft.DeftConfig(r=8, target_modules=PAPER_TARGETS, decomposition_method="qr", para=method == "para")
    peft.inject_adapter_in_model(config, model, low_cpu_mem_usage=True)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == adapter_parameters(cfg, "peft", method, 8)


def test_fit_recovers_a_and_b_and_never_invents_a_negative_b():
    s = np.array([320.0, 576.0, 1088.0, 2112.0])
    rng = np.random.default_rng(0)
    y = (4000.0 * s + 0.5 * s * s) * (1 + 1e-4 * rng.standard_normal(s.size))
    fit = fit_quadratic(s, y)
    assert fit.a == pytest.approx(4000.0, rel=1e-2) and fit.b == pytest.approx(0.5, rel=2e-2)
    assert fit.max_rel_residual < 1e-3
    linear = fit_quadratic(s, 7000.0 * s - 1e-3 * s * s)
    assert linear.b == 0.0 and linear.a > 0
    one = fit_quadratic([1000.0], [5e6])
    assert (one.a, one.b) == (5000.0, 0.0)
    with_c = fit_quadratic(s, 3.0 * s + 50.0, intercept=True)
    assert with_c.c == pytest.approx(50.0) and with_c.a == pytest.approx(3.0)


def _coefficients(**kw) -> Coefficients:
    base = dict(layer=Quadratic(a=100_000.0, b=0.0), overhead=Quadratic(a=20_000.0, b=0.0),
                ckpt_overhead=Quadratic(a=30_000.0, b=0.0), vae_bytes_per_pixel=1000.0, vae_flops_per_pixel=1e6)
    base.update(kw)
    return Coefficients(**base)


def test_prediction_terms_are_exact_arithmetic():
    co = _coefficients()
    setup = Setup(side=1024, batch=2, rank=64, ckpt=True, text_tokens=63)
    assert setup.seq == sequence_length(63, 1024, 0) == 63 + 1 + 64 * 64
    pred = predict(setup, co)
    terms = {t.name: t for t in pred.terms}
    assert terms["base weights"].bytes == 2 * OMNIGEN_V1_PARAMETERS + 2 * buffer_elements(OMNIGEN_V1)
    assert terms["adapter params + grads + AdamW"].bytes == 16 * 37_748_736
    assert terms["checkpointed block inputs x 32"].bytes == 32 * 2 * 2 * setup.seq * 3072
    assert terms["recomputed block (activations)"].bytes == 2 * 100_000.0 * setup.seq
    assert terms["VAE encode transient (fp32)"].bytes == 1000.0 * 2 * 1024 ** 2
    static = sum(t.bytes for t in pred.terms if t.phase == "static")
    assert pred.peak == max(pred.phases.values())
    assert pred.phases["vae"] == static + terms["VAE encode transient (fp32)"].bytes
    assert {t.source for t in pred.terms} <= {"measured", "traced", "computed"}
    # without checkpointing the blocks' activations count 32 times; cached latents drop the VAE
    plain = predict(replace(setup, ckpt=False, latents="cached"), co)
    names = {t.name: t.bytes for t in plain.terms}
    assert names["activations x 32 blocks"] == 32 * 2 * 100_000.0 * setup.seq
    assert "VAE weights (fp32)" not in names and plain.phases["vae"] == sum(
        t.bytes for t in plain.terms if t.phase == "static")


def test_int8_base_halves_the_weights_and_mask_padding_is_gpu_only():
    co = _coefficients()
    bf16 = predict(Setup(text_tokens=63), co)
    int8 = predict(Setup(text_tokens=63, base="int8"), co)
    w = {p: next(t.bytes for t in x.terms if t.name == "base weights") for p, x in (("bf16", bf16), ("int8", int8))}
    assert 0.5 < w["int8"] / w["bf16"] < 0.56  # embeddings and the position table stay bf16
    unaligned = predict(Setup(text_tokens=64, ckpt=False), co)  # S = 4161, not a multiple of 8
    assert any("padded mask" in t.name for t in unaligned.terms)
    assert not any("padded mask" in t.name for t in bf16.terms)  # S = 4160


def test_method_deltas_use_the_nearest_measured_rank():
    co = _coefficients(layer_delta={"peft-lora--@r8": 10.0, "peft-lora--@r64": 30.0})
    assert co.delta("layer", "peft-lora--", 16) == 10.0 and co.delta("layer", "peft-lora--", 48) == 30.0
    assert co.delta("layer", "ours-deft-qr", 64) == 0.0
    assert Coefficients.from_dict(json.loads(json.dumps(co.to_dict()))) == co


def test_fake_replay_counts_what_a_real_step_holds():
    """The 32-layer cross-check rests on this: a fake-tensor replay of a step allocates, byte for
    byte, what the real step does (tiny model, checkpointing, an input image, peft)."""
    from benchmarks.full_size.matrix import time_group
    from benchmarks.full_size.trace import trace_case

    cases = [Case(arch="tiny", side=64, rank=4, layers=2, inputs=1),
             Case(arch="tiny", side=64, rank=4, ckpt=True, batch=2, impl="peft", method="lora", basis="-")]
    for real in time_group(cases, repeats=0):
        fake = trace_case(Case(**real["case"]), flops=False)
        for key in ("static_bytes", "batch_bytes", "peak", "per_layer", "held_after_forward", "block_kept"):
            assert real[key] == fake[key], key
        assert real["per_layer"] > 0


def test_gpu_script_cpu_path(tmp_path, capsys):
    from benchmarks.full_size import gpu_check

    out = tmp_path / "rows.json"
    assert gpu_check.main(["--tiny", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert set(rows) == {"ours-deft-qr", "peft-lora--", "peft-deft-qr"}
    for row in rows.values():
        assert row["measured"]["peak"] == row["predicted"]["peak"] > 0
        assert row["case"]["layers"] == 2 and row["case"]["ckpt"] and not row["case"]["interior"]
    printed = capsys.readouterr().out
    assert "peft LoRA" in printed and "deft_omni DEFT / peft LoRA memory" in printed


def test_gpu_script_refuses_without_a_gpu_or_record(tmp_path):
    from benchmarks.full_size import gpu_check

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit):
        gpu_check.main(["--record", str(tmp_path / "missing.json")])


def test_card_recommendations_fit_their_cards():
    from benchmarks.full_size.cards import recommendations, usable_bytes

    co = _coefficients()
    for row in recommendations(co):
        for rec in (row["today"], row["cached"]):
            if rec is not None:
                assert rec["peak_gib"] * GIB <= usable_bytes(row["card_gib"])
