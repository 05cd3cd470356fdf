"""Any SD adapter exported for diffusers' own loader: `pipe.load_lora_weights(DIR)` on a fresh
pipeline gives the live adapter's images (latents compared, float tolerance)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from deft_omni.adapters import AdapterConfig, inject_adapter, load_adapter
from deft_omni.backbones.sd_family import SD15, SDXL, load_parts, make_pipeline, scheduler_from_config
from deft_omni.export import main as export_main
from deft_omni.interop import PIPELINE_LORA_NAME, export_lora

from .test_sd_adapters import PRESETS


def _randomised(networks, config: AdapterConfig, seed: int = 0):
    """An adapter moved far from its identity init, so that it changes the images."""
    inject_adapter(networks, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in networks.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return networks.requires_grad_(False)


def _latents(pipe, family) -> torch.Tensor:
    pipe.scheduler = scheduler_from_config(pipe.scheduler.config)
    return pipe(["a photo of sks dog", "a red car"], height=32, width=32, num_inference_steps=3,
                guidance_scale=family.guidance_scale, output_type="latent",
                generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images


@pytest.mark.parametrize("family,preset,method", [
    (SDXL, "sd_attn_text", "deft"), (SD15, "sd_attn_text", "deft"), (SDXL, "sd_attn", "para")],
    ids=["sdxl-deft", "sd15-deft", "sdxl-para"])
def test_load_lora_weights_matches_the_live_adapter(tiny_sd_dirs, family, preset, method, tmp_path):
    folder = tiny_sd_dirs[family.name]
    targets = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text())
    parts = load_parts(folder, family)
    _randomised(parts.networks, AdapterConfig(method=method, rank=3, decomposition="qr", **targets))
    pipe = make_pipeline(family, parts.networks, parts.vae, parts.tokenizers,
                         scheduler_from_config(parts.scheduler_config))
    live = _latents(pipe, family)
    out = export_lora(parts.networks, tmp_path / "lora", layout="pipeline")
    meta = json.loads((out / "deft_omni.json").read_text())
    assert (out / PIPELINE_LORA_NAME).is_file() and meta["pipeline_lora"]["file"] == PIPELINE_LORA_NAME

    reference = family.pipeline_cls().from_pretrained(folder, local_files_only=True, **(
        {"safety_checker": None, "requires_safety_checker": False} if family is SD15 else {}))
    reference.set_progress_bar_config(disable=True)
    base = _latents(reference, family)
    reference.load_lora_weights(str(out))
    loaded = _latents(reference, family)
    assert (live - base).abs().max() > 1e-2  # the adapter matters, so the comparison can fail
    torch.testing.assert_close(loaded, live, rtol=1e-4, atol=1e-4)

    fresh = load_parts(folder, family).networks  # the same folder reads back as a deft_omni adapter too
    load_adapter(fresh, out)


def test_export_command_defaults_to_the_pipeline_layout(tiny_sd_dirs, tmp_path, capsys):
    parts = load_parts(tiny_sd_dirs["sdxl"], SDXL)
    _randomised(parts.networks, AdapterConfig(method="deft", rank=2, **yaml.safe_load(
        (PRESETS / "sd_attn.yaml").read_text())))
    from deft_omni.adapters import save_adapter

    save_adapter(parts.networks, tmp_path / "adapter")
    out = export_main([str(tmp_path / "adapter"), "--model", "tiny-sdxl", "--out", str(tmp_path / "exported")])
    assert (out / PIPELINE_LORA_NAME).is_file() and "pipeline-layout" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "adapter"), "--model", "tiny-sdxl", "--layout", "original",
                     "--out", str(tmp_path / "original")])
