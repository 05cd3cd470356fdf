"""The tiny OmniGen builder: layout, offline reload, tokenizer, forward, cache."""

from __future__ import annotations

import threading

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, OmniGenTransformer2DModel
from transformers import AutoTokenizer

from deft_omni.model import (
    TINY_TRANSFORMER_CONFIG,
    TINY_VERSION,
    build_tiny_tokenizer,
    build_tiny_transformer,
    ensure_tiny_omnigen,
)
from deft_omni.model import tiny as tiny_mod

PROMPT = (
    "<|user|>\nGenerate an image according to the following instructions\n"
    "a photo of sks dog next to <img><|image_1|></img>"
    "<|end|>\n<|assistant|>\n<|diffusion|>"
)


def test_layout(tiny_dir):
    for rel in (
        "model_index.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
    ):
        assert (tiny_dir / rel).is_file(), rel


def test_reload_offline(tiny_dir):
    tr = OmniGenTransformer2DModel.from_pretrained(tiny_dir / "transformer", local_files_only=True)
    for key in ("hidden_size", "num_layers", "vocab_size", "pad_token_id", "pos_embed_max_size"):
        assert tr.config[key] == TINY_TRANSFORMER_CONFIG[key]
    ref = build_tiny_transformer(0).state_dict()
    for k, v in tr.state_dict().items():
        assert torch.equal(v, ref[k]), k
    vae = AutoencoderKL.from_pretrained(tiny_dir / "vae", local_files_only=True)
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor == pytest.approx(0.13025)
    with torch.no_grad():
        lat = vae.encode(torch.rand(1, 3, 32, 32) * 2 - 1).latent_dist.mean
        assert lat.shape == (1, 4, 4, 4)  # 8x downsampling
        assert vae.decode(lat).sample.shape == (1, 3, 32, 32)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_dir / "scheduler", local_files_only=True)
    assert sched.config.invert_sigmas is True and sched.config.num_train_timesteps == 1
    tok = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer", local_files_only=True)
    assert tok.pad_token_id == tr.config.pad_token_id == 0


def test_tokenizer_template_roundtrip(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer", local_files_only=True)
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 0)
    assert len(tok) < TINY_TRANSFORMER_CONFIG["vocab_size"]
    ids = tok(PROMPT).input_ids
    assert ids[0] == 1 and ids.count(1) == 1  # BOS prepended once
    assert max(ids) < TINY_TRANSFORMER_CONFIG["vocab_size"] and 0 not in ids  # never <unk>
    assert tok.decode(ids[1:]) == PROMPT
    for special in ("<|user|>", "<|end|>", "<|assistant|>", "<|diffusion|>"):
        assert tok.convert_tokens_to_ids(special) in ids  # one token each, not split
    # The template's instruction line compresses (trained merges), not one id per byte.
    line = "Generate an image according to the following instructions"
    assert len(tok(line, add_special_tokens=False).input_ids) < len(line) // 3
    batch = tok(["a dog", PROMPT], padding=True)
    assert batch.input_ids[0][0] == tok.pad_token_id  # left padding


def test_tokenizer_deterministic():
    assert build_tiny_tokenizer().get_vocab() == build_tiny_tokenizer().get_vocab()


def test_transformer_deterministic_and_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = build_tiny_transformer(0), build_tiny_transformer(0), build_tiny_transformer(1)
    assert torch.equal(torch.get_rng_state(), before)
    wa, wb, wc = (m.layers[0].self_attn.to_q.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert TINY_TRANSFORMER_CONFIG["rope_scaling"]["short_factor"] == [1.0] * (64 // 4 // 2)


def test_forward_backward(make_inputs):
    model = build_tiny_transformer(0)
    inputs = make_inputs()
    out = model(**inputs).sample
    assert out.shape == inputs["hidden_states"].shape
    assert torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert model.layers[0].self_attn.to_q.weight.grad is not None
    assert model.patch_embedding.input_image_proj.weight.grad.abs().sum() > 0  # image reached


def test_ensure_builds_once(tmp_path, monkeypatch):
    path = ensure_tiny_omnigen(tmp_path)
    assert path == tmp_path / f"tiny-omnigen-v{TINY_VERSION}"
    assert (path / "transformer" / "config.json").is_file()

    def boom(*a, **k):
        raise AssertionError("rebuilt a cached tiny model")

    monkeypatch.setattr(tiny_mod, "save_tiny_omnigen", boom)
    assert ensure_tiny_omnigen(tmp_path) == path
    monkeypatch.setenv("DEFT_OMNI_CACHE", str(tmp_path))
    assert ensure_tiny_omnigen() == path


def test_ensure_concurrent(tmp_path):
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_tiny_omnigen(tmp_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    # Only the final folder is left: losers' temporary copies are removed.
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]
    assert (results[0] / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
