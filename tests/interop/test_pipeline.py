"""``deft_omni.load_into_pipeline``: adapters in diffusers' OmniGenPipeline, whose ``__call__`` runs
unmodified (only torchvision's four transforms are shimmed for its processor: torchvision_shim.py).

The pipeline's images equal ``python -m deft_omni.generate``'s under the settings listed in
deft_omni/interop/parity.py; unloading restores the base bit for bit, live or merged.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import deft_omni
from deft_omni.adapters import AdapterConfig, AdapterLoadError, save_adapter
from deft_omni.data import OmniGenTrainProcessor
from deft_omni.generate import main as generate_main
from deft_omni.generation import SamplePrompt, generate_latents_batch
from deft_omni.generation.adapters_spec import AdapterSpec, apply_adapters
from deft_omni.interop import diffusers_negative_prompt, unload_from_pipeline
from deft_omni.interop.pipeline import STATE_ATTR
from deft_omni.model import load_omnigen

from .conftest import BLOCK_LINEARS, QKV, train_adapter

STEPS = 3
# diffusers reads RoPE from row 0 (the prompt): the prompts tokenize longer than the negative prompt.
TEXT = "a small red cat with green eyes sits on a long wooden table beside a window in warm light, " * 5
EDIT = "make <img><|image_1|></img> " + "look like a watercolour of a quiet harbour with boats at dawn, " * 10
SEEDS = {"text": 40, "edit": 41}


def _adapters(adapter_dirs):
    return {adapter_dirs["deft_fused"]: 0.8, adapter_dirs["lora"]: 0.5}


def _pipeline_call(pipe, prompt, input_png, output_type):
    kwargs = {"input_images": [str(input_png)]} if "<img>" in prompt else {}
    return pipe(prompt, height=32, width=48, num_inference_steps=STEPS, output_type=output_type,
                generator=torch.Generator().manual_seed(SEEDS["edit" if kwargs else "text"]), **kwargs).images


@pytest.fixture(scope="module")
def generated(sharp_dir, adapter_dirs, input_png, tmp_path_factory):
    """PNGs of `python -m deft_omni.generate` (in-process), adapters live and merged."""
    root = tmp_path_factory.mktemp("generated")
    prompts = root / "prompts.jsonl"
    prompts.write_text(json.dumps({"instruction": TEXT, "seed": SEEDS["text"]}) + "\n"
                       + json.dumps({"instruction": EDIT, "input_images": [str(input_png)], "seed": SEEDS["edit"]}))
    adapters = [a for path, w in _adapters(adapter_dirs).items() for a in ("--adapter", f"{path}:{w}")]
    out = {}
    for merge in (False, True):
        argv = ["--model", str(sharp_dir), *adapters, "--prompts", str(prompts), "--height", "32", "--width", "48",
                "--steps", str(STEPS), "--negative-prompt", diffusers_negative_prompt(), "--dtype", "fp32",
                "--no-grid", "--no-progress", "--out", str(root / str(merge))] + (["--merge"] if merge else [])
        text_png, edit_png = generate_main(argv)
        out[merge] = {"text": np.asarray(Image.open(text_png)), "edit": np.asarray(Image.open(edit_png))}
    return out


@pytest.mark.parametrize("prompt", [TEXT, EDIT], ids=["text", "edit"])
def test_the_prompt_row_is_the_longest(prompt, make_pipe, sharp_dir, input_png):
    """The condition for equality: the pipeline's row 0 (the prompt) carries no padding."""
    images = [[str(input_png)]] if "<img>" in prompt else None
    rows = make_pipe(sharp_dir).multimodal_processor([prompt], images, height=32, width=48,
                                                     use_img_cfg=images is not None)
    assert rows["position_ids"][0, :2].tolist() == [0, 1]


@pytest.mark.parametrize("merge", [False, True], ids=["live", "merged"])
@pytest.mark.parametrize("kind", ["text", "edit"])
def test_pipeline_images_equal_generate(kind, merge, make_pipe, sharp_dir, adapter_dirs, input_png, generated):
    pipe = make_pipe(sharp_dir)
    prompt = TEXT if kind == "text" else EDIT
    base_latents = _pipeline_call(pipe, prompt, input_png, "latent")
    handle = deft_omni.load_into_pipeline(pipe, _adapters(adapter_dirs), merge=merge)
    latents = _pipeline_call(pipe, prompt, input_png, "latent")
    images = _pipeline_call(pipe, prompt, input_png, "np")

    # deft_omni's own sampler (the generate command's Python entry point), same adapters.
    parts = load_omnigen(sharp_dir)
    apply_adapters(parts.transformer, [AdapterSpec(p, w) for p, w in _adapters(adapter_dirs).items()], merge=merge)
    processor = OmniGenTrainProcessor(parts.tokenizer, cfg_dropout=0.0)
    inputs = [input_png] if kind == "edit" else []
    ours = generate_latents_batch(parts.transformer, parts.vae, processor,
                                  [SamplePrompt(prompt, inputs, 32, 48, seed=SEEDS[kind])], STEPS,
                                  negative_prompt=diffusers_negative_prompt())
    assert (latents - base_latents).abs().max() > 0.05  # the adapters matter
    torch.testing.assert_close(latents, ours, rtol=0, atol=1e-5)
    # The command's PNG is the rounded image: the pipeline's float image rounds to it.
    png = generated[merge][kind].astype(np.float64)
    assert np.abs(images[0].astype(np.float64) * 255 - png).max() <= 0.5 + 1e-3
    handle.unload()


def _snapshot(transformer):
    return ({k: v.clone() for k, v in transformer.state_dict().items()},
            {n: type(m) for n, m in transformer.named_modules()},
            {n: p.requires_grad for n, p in transformer.named_parameters()})


def _assert_restored(transformer, snapshot):
    weights, types, flags = snapshot
    now = transformer.state_dict()
    assert sorted(now) == sorted(weights)
    assert all(torch.equal(now[k], v) for k, v in weights.items())
    assert {n: type(m) for n, m in transformer.named_modules()} == types
    assert {n: p.requires_grad for n, p in transformer.named_parameters()} == flags
    assert not hasattr(transformer, STATE_ATTR) and not hasattr(transformer, "deft_adapter_configs")


@pytest.mark.parametrize("merge", [False, True], ids=["live", "merged"])
def test_unload_restores_the_base_bit_for_bit(merge, make_pipe, tiny_dir, adapter_dirs, forward_batch):
    pipe = make_pipe(tiny_dir)
    snapshot = _snapshot(pipe.transformer)
    base_out = pipe.transformer(**forward_batch)[0]
    handle = deft_omni.load_into_pipeline(pipe, [(adapter_dirs["deft_fused"], 0.7), adapter_dirs["para"]], merge=merge)
    assert handle.names == ["deft_fused", "para"] and handle.weights == {"deft_fused": 0.7, "para": 1.0}
    assert (pipe.transformer(**forward_batch)[0] - base_out).abs().max() > 1e-2
    assert deft_omni.unload_from_pipeline(pipe) == ["deft_fused", "para"]
    _assert_restored(pipe.transformer, snapshot)
    assert torch.equal(pipe.transformer(**forward_batch)[0], base_out)
    assert not handle.loaded
    handle.unload()  # a second unload is a no-op


METHODS = [("deft", b) for b in ("qr", "relu", "relaxed", "relu2", "tsvd", "lrmf", "eigen", "nmf")] \
    + [("para", "qr"), ("para", "tsvd"), ("lora", "qr")]


@pytest.fixture(scope="module")
def shared_pipe(pipeline_class, tiny_dir):
    pipe = pipeline_class.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("method,decomposition", METHODS)
def test_every_method_and_basis(method, decomposition, shared_pipe, tiny_dir, forward_batch, tmp_path):
    """Live in the pipeline == the model it was trained on; merged too; the base comes back."""
    fused = QKV if METHODS.index((method, decomposition)) % 2 == 0 else []
    config = AdapterConfig(method=method, rank=3, alpha=5, decomposition=decomposition,
                           target_modules=BLOCK_LINEARS, fused_groups=fused)
    trained = train_adapter(load_omnigen(tiny_dir).transformer, config, seed=7)
    folder = save_adapter(trained, tmp_path / f"{method}_{decomposition}")
    with torch.no_grad():
        expected = trained(**forward_batch)[0]
        snapshot = _snapshot(shared_pipe.transformer)
        for merge in (False, True):
            # Merged weights round W0 + dW once in fp32; on one thread the relaxed basis differed by
            # 5e-5 from the live path (tolerance 1e-5 held on two): merged gets 1e-4, live stays 1e-5.
            tol = 1e-4 if merge else 1e-5
            with deft_omni.load_into_pipeline(shared_pipe, folder, merge=merge):
                torch.testing.assert_close(shared_pipe.transformer(**forward_batch)[0], expected, rtol=tol, atol=tol)
            _assert_restored(shared_pipe.transformer, snapshot)


def test_calls_add_up_and_unload_one_by_one(make_pipe, tiny_dir, adapter_dirs, forward_batch):
    pipe = make_pipe(tiny_dir)
    snapshot = _snapshot(pipe.transformer)

    def reference(specs):
        transformer = load_omnigen(tiny_dir).transformer
        apply_adapters(transformer, [AdapterSpec(p, w) for p, w in specs])
        return transformer(**forward_batch)[0]

    first = deft_omni.load_into_pipeline(pipe, adapter_dirs["deft_fused"], weight=0.6)
    second = deft_omni.load_into_pipeline(pipe, [adapter_dirs["lora"], adapter_dirs["deft_fused"]], weight=[0.5, 0.3])
    assert second.names == ["lora", "deft_fused_2"]
    both = [(adapter_dirs["deft_fused"], 0.6), (adapter_dirs["lora"], 0.5), (adapter_dirs["deft_fused"], 0.3)]
    torch.testing.assert_close(pipe.transformer(**forward_batch)[0], reference(both), rtol=1e-5, atol=1e-5)
    first.unload()
    torch.testing.assert_close(pipe.transformer(**forward_batch)[0], reference(both[1:]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"already has adapters loaded live .*merge=False"):
        deft_omni.load_into_pipeline(pipe, adapter_dirs["para"], merge=True)
    second.unload()
    _assert_restored(pipe.transformer, snapshot)


def test_merged_calls_re_merge_from_w0(make_pipe, tiny_dir, adapter_dirs, forward_batch):
    """DEFT's update reads W0: a second merged load must not read W0 + dW of the first."""
    pipe = make_pipe(tiny_dir)
    deft_omni.load_into_pipeline(pipe, adapter_dirs["deft_fused"], weight=0.9, merge=True)
    deft_omni.load_into_pipeline(pipe, adapter_dirs["para"], weight=0.7, merge=True)
    transformer = load_omnigen(tiny_dir).transformer
    apply_adapters(transformer, [AdapterSpec(adapter_dirs["deft_fused"], 0.9), AdapterSpec(adapter_dirs["para"], 0.7)])
    torch.testing.assert_close(pipe.transformer(**forward_batch)[0], transformer(**forward_batch)[0],
                               rtol=1e-5, atol=1e-5)
    unload_from_pipeline(pipe)


def test_a_failed_call_leaves_nothing_loaded(make_pipe, tiny_dir, adapter_dirs, tmp_path):
    pipe = make_pipe(tiny_dir)
    snapshot = _snapshot(pipe.transformer)
    with pytest.raises(AdapterLoadError, match="does not exist"):
        deft_omni.load_into_pipeline(pipe, [adapter_dirs["lora"], tmp_path / "missing"], merge=True)
    _assert_restored(pipe.transformer, snapshot)
    with pytest.raises(ValueError, match="2 adapters but 1 weights"):
        deft_omni.load_into_pipeline(pipe, [adapter_dirs["lora"], adapter_dirs["para"]], weight=[1.0])
    with pytest.raises(TypeError, match="OmniGenPipeline"):
        deft_omni.load_into_pipeline(object(), adapter_dirs["lora"])


def test_an_adapter_trained_with_dropout_is_deterministic(make_pipe, tiny_dir, forward_batch, tmp_path):
    """Injected layers start in training mode; in the eval-mode pipeline they must not drop out."""
    config = AdapterConfig(method="lora", rank=2, dropout=0.5, target_modules=BLOCK_LINEARS)
    trained = train_adapter(load_omnigen(tiny_dir).transformer, config, seed=3).eval()
    folder = save_adapter(trained, tmp_path / "dropout")
    pipe = make_pipe(tiny_dir)
    deft_omni.load_into_pipeline(pipe, folder)
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(**forward_batch)[0], trained(**forward_batch)[0],
                                   rtol=1e-5, atol=1e-5)
