"""python -m deft_omni.encode_latents: the latents are those training computes, thumbnails stand in
for dropped pixels, an interrupted encode resumes, workers change nothing, bad input is one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import webdataset as wds

from deft_omni.backbones import load_backbone
from deft_omni.data import build_val_loader, parse_sample, read_manifest
from deft_omni.data.cached_latents import LATENTS_MEMBER
from deft_omni.encode_latents import main
from deft_omni.latent_cache import EncodeError
from deft_omni.latent_cache import engine as engine_mod
from deft_omni.model.latents import LatentEncoder

from .conftest import SAMPLES, encode


def _raws(folder: str) -> list[dict]:
    urls = [os.path.join(folder, s["file"]) for s in read_manifest(folder)["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def _tars(folder: str) -> dict[str, bytes]:
    return {name: Path(folder, name).read_bytes() for name in sorted(os.listdir(folder)) if name.endswith(".tar")}


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


def test_latents_are_the_posteriors_of_the_processors_images(pixel_set, tmp_path, backbone):
    summary = encode(pixel_set, str(tmp_path / "fp32"), dtype="fp32")
    out = summary["output"]
    manifest = read_manifest(out)
    assert [s["samples"] for s in manifest["shards"]] == [3, 2] and summary["samples"] == 5
    assert [s["key"] for s in manifest["skipped"]] == ["tiny"] and "below 16 px" in manifest["skipped"][0]["reason"]
    block = manifest["latents"]
    assert block["fitting"] == {"max_image_side": 64, "size_multiple": 16, "bucket_sizes": None}
    assert block["dtype"] == "float32" and block["pixels"] == "kept" and block["vae"]["model"] == "tiny"
    assert block["vae"]["scaling_factor"] == pytest.approx(0.13025) and len(block["vae"]["fingerprint"]) == 64
    assert manifest["output_masks"] == 1 and manifest["source"] == "test" and manifest["options"]["split"] == "train"
    assert not any(name.endswith(".partial") for name in os.listdir(tmp_path))

    processor = backbone.make_processor(max_image_side=64)
    pixels = {raw["__key__"]: raw for raw in _raws(pixel_set)}
    seen = set()
    for raw in _raws(out):
        cached = parse_sample(raw)
        del raw[LATENTS_MEMBER]
        plain = processor(parse_sample(pixels[cached.key]), train=False)
        assert cached.latents is not None and not cached.thumbnails
        slots = cached.latents.slots
        assert list(slots) == ["output"] + [f"input_{k}" for k in range(1, len(plain.input_images) + 1)]
        for name, image in [("output", plain.output_image), *zip(list(slots)[1:], plain.input_images)]:
            mean, std = LatentEncoder().posterior(backbone.vae, image.unsqueeze(0))
            torch.testing.assert_close(slots[name].mean, mean[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(slots[name].std, std[0], rtol=0, atol=1e-5)
            assert slots[name].pixel_size == tuple(image.shape[-2:])
        seen.add(cached.key)
    assert seen == {k for k, *_ in SAMPLES} - {"tiny"}
    resized = next(parse_sample(r) for r in _raws(out) if r["__key__"] == "resized").latents.slots["output"]
    assert (resized.stored, resized.resize, resized.crop) == ((300, 180), (64, 38), (64, 32))


def test_drop_pixels_keeps_thumbnails_and_the_mask(pixel_set, tmp_path, backbone):
    out = encode(pixel_set, str(tmp_path / "thumbs"), drop_pixels=True)["output"]
    raws = {raw["__key__"]: raw for raw in _raws(out)}
    originals = {raw["__key__"]: raw for raw in _raws(pixel_set)}
    assert set(raws["two_inputs"]) - {"__key__", "__url__", "__local_path__"} == {
        "json", "output_mask.png", "output_thumb.png", "input_1_thumb.png", "input_2_thumb.png", LATENTS_MEMBER}
    assert raws["two_inputs"]["output_mask.png"] == originals["two_inputs"]["output_mask.png"]
    assert "output_thumb.jpg" in raws["jpeg"] and "input_1_thumb.jpg" in raws["jpeg"]
    sample = parse_sample(raws["resized"])
    assert sample.thumbnails and sample.output.size == (128, 77)
    output, inputs = sample.stored_size_images()
    assert output.size == (300, 180) and [im.size for im in inputs] == [(48, 32)]
    assert read_manifest(out)["latents"]["thumbnail_side"] == 128
    batches = list(build_val_loader(out, backbone.make_processor(max_image_side=64), batch_size=2))
    assert sum(len(b["keys"]) for b in batches) == 5
    assert all("output_latents" in b and "output_images" not in b for b in batches)
    masked = next(b for b in batches if "two_inputs" in b["keys"])
    assert masked["output_masks"].shape[-2:] == (32, 48) and masked["output_latents"].dtype == torch.float16


def test_an_interrupted_encode_resumes_and_workers_change_nothing(pixel_set, tmp_path, monkeypatch):
    whole = _tars(encode(pixel_set, str(tmp_path / "whole"))["output"])
    out = str(tmp_path / "resumed")
    calls = []
    real = engine_mod.encode_shard

    def dies_on_the_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_mod, "encode_shard", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        encode(pixel_set, out)
    monkeypatch.setattr(engine_mod, "encode_shard", real)
    assert not os.path.exists(out) and sorted(os.listdir(out + ".partial")) == [".encode", "shard-000000.tar"]
    with pytest.raises(EncodeError, match=r"interrupted encode with other settings \(dtype\).*--overwrite"):
        encode(pixel_set, out, dtype="bf16")
    summary = encode(pixel_set, out)
    assert (summary["shards_resumed"], summary["shards_encoded"]) == (1, 1)
    assert _tars(out) == whole and not os.path.exists(out + ".partial") and ".encode" not in os.listdir(out)

    parallel = encode(pixel_set, str(tmp_path / "parallel"), workers=2)["output"]
    assert _tars(parallel) == whole


def test_bad_input_is_one_line(pixel_set, tmp_path, capsys):
    out = encode(pixel_set, str(tmp_path / "done"), drop_pixels=True)["output"]
    for argv, message in [
        (["--model", "tiny", "--in", pixel_set, "--out", out], "holds a finished shard set; pass --overwrite"),
        (["--model", "tiny", "--in", out, "--out", str(tmp_path / "again")], "holds latents without pixels"),
        (["--model", "tiny", "--in", pixel_set, "--out", pixel_set], "is the input folder"),
        (["--model", "tiny", "--in", pixel_set, "--out", str(tmp_path / "x"), "--dtype", "fp64"], "stored as one of"),
        (["--model", "tiny", "--in", pixel_set, "--out", str(tmp_path / "x"), "--max-image-side", "1024"],
         "at most 512 px"),
        (["--model", str(tmp_path / "nowhere"), "--in", pixel_set, "--out", str(tmp_path / "x")], "does not exist"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and err.count("\n") == 1, err
    again = main(["--model", "tiny", "--in", pixel_set, "--out", out, "--overwrite", "--quiet",
                  "--max-image-side", "64", "--bucket-sizes", "32x32,32x48", "--batch-size", "2"])
    assert read_manifest(again["output"])["latents"]["fitting"]["bucket_sizes"] == [[32, 32], [32, 48]]
    assert json.loads(Path(out, "manifest.json").read_text())["latents"]["pixels"] == "kept"
