"""Shards with cached latents: parsing (pixels opened, or thumbnails), the processor (same tokens as
the pixel path, fitting checked), collate and the loader (never a batch of both kinds), bad records."""

from __future__ import annotations

import pytest
import torch

from deft_omni.data import (
    ManifestError,
    SampleError,
    ShardSetWriter,
    build_train_loader,
    build_val_loader,
    parse_sample,
    read_manifest,
)
from deft_omni.data.cached_latents import LATENTS_MEMBER
from deft_omni.data.processor import collate_processed
from deft_omni.data.schema import write_manifest

from ._data_helpers import cached_sample, write_shards


def _plain(raw):
    return parse_sample({k: v for k, v in raw.items() if k != LATENTS_MEMBER})


def test_cached_samples_give_the_pixel_paths_tokens_and_their_posteriors(processor):
    raw = cached_sample("k", (100, 60), [(48, 32), (80, 80)], mask=True)
    sample = parse_sample(raw)
    assert sample.latents is not None and not sample.thumbnails and sample.output.size == (100, 60)
    item, plain = processor(sample, train=False), processor(_plain(raw), train=False)
    assert item.output_image is None and item.input_images == [] and item.is_cached and not plain.is_cached
    assert (item.input_ids, item.image_spans) == (plain.input_ids, plain.image_spans)
    assert item.output_size == plain.output_size == (32, 64)
    slots = sample.latents.slots
    assert torch.equal(item.output_latent, torch.stack([slots["output"].mean, slots["output"].std]))
    assert [tuple(t.shape) for t in item.input_latents] == [(2, 4, 4, 6), (2, 4, 8, 8)]
    torch.testing.assert_close(item.output_mask, plain.output_mask)
    batch = collate_processed([item, processor(parse_sample(cached_sample("k2", (64, 32))), train=False)])
    assert batch["output_latents"].shape == (2, 2, 4, 4, 8) and "output_images" not in batch
    assert len(batch["input_latents"]) == 2 and batch["latents_vae"] == ["ab" * 32]
    with pytest.raises(ValueError, match="all pixels or all cached latents"):
        collate_processed([item, processor(_plain(cached_sample("k3", (100, 60))), train=False)])


def test_thumbnails_stand_in_when_the_pixels_were_dropped(processor):
    raw = cached_sample("k", (300, 180), [(48, 32)], drop=True, mask=True)
    assert "output.png" not in raw and "output_thumb.png" in raw and "input_1_thumb.png" in raw
    sample = parse_sample(raw)
    assert sample.thumbnails and sample.output.size == (128, 77) and sample.output_mask.size == (300, 180)
    item = processor(sample, train=False)
    assert item.output_size == (32, 64) and item.output_mask.shape == (1, 32, 64)


@pytest.mark.parametrize("change,match", [
    (lambda raw: raw.update({LATENTS_MEMBER: b"not a safetensors blob"}), "cached latents cannot be read"),
    (lambda raw: raw.pop("input_1.png"), "stores the images \\['output'\\] but latents of \\['output', 'input_1'\\]"),
    (lambda raw: raw.update({"output.png": cached_sample("x", (50, 50))["output.png"]}),
     "output is 50x50 px but its latents were made from a 100x60 px image"),
])
def test_unusable_records_name_the_sample(change, match):
    raw = cached_sample("k", (100, 60), [(48, 32)])
    raw["json"] = b'{"instruction": "<img><|image_1|></img> x", "task": "t", "meta": {}}'
    change(raw)
    with pytest.raises(SampleError, match=match) as info:
        parse_sample(raw)
    assert "sample 'k'" in str(info.value)


def test_latents_fitted_otherwise_are_refused(tokenizer):
    from deft_omni.data import OmniGenTrainProcessor

    sample = parse_sample(cached_sample("k", (100, 60), max_side=64))
    narrow = OmniGenTrainProcessor(tokenizer, max_image_side=48, cfg_dropout=0.0)
    with pytest.raises(SampleError, match="resized to \\(64, 38\\).*fits it to \\(48, 29\\).*re-encode") as info:
        narrow(sample, train=False)
    assert info.value.field == LATENTS_MEMBER


def test_a_run_mixing_cached_and_pixel_sets_batches_each_kind_apart(tmp_path, processor):
    pixels = write_shards(tmp_path / "pixels", 1, 6, sizes=((32, 64),))
    with ShardSetWriter(str(tmp_path / "cached"), source="test", maxcount=6) as writer:
        for i in range(6):
            writer.write(cached_sample(f"c{i}", (64, 32), drop=i % 2 == 0))
    cached = [("output_latents" in b, len(b["keys"])) for b in build_val_loader(str(tmp_path / "cached"), processor, 4)]
    assert cached == [(True, 4), (True, 2)]  # with pixels kept or dropped alike
    mixed = build_train_loader([pixels, str(tmp_path / "cached")], processor, batch_size=3, epoch_length_batches=8,
                               shuffle_buffer=4)
    batches = list(mixed)
    assert {("output_latents" in b) for b in batches} == {True, False}
    for b in batches:
        assert all(k.startswith("c") for k in b["keys"]) == ("output_latents" in b)


def test_a_broken_latents_block_in_a_manifest_is_refused(tmp_path):
    write_manifest(str(tmp_path), [("a.tar", 1)], source="x")
    manifest = (tmp_path / "manifest.json").read_text().replace('"source"', '"latents": {"format": "other"}, "source"')
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(ManifestError, match="'latents' block is not a deft_omni.latents description"):
        read_manifest(str(tmp_path))
