"""data_prep.summary: counts, sizes as trained, lengths, duplicates, tag mismatches, contact sheet,
on a generated set of 10k small samples with planted duplicates and mismatches."""

from __future__ import annotations

import io
import json
import os
from collections import Counter

import pytest
import webdataset as wds
from PIL import Image

from data_prep import summary
from data_prep.summary.scan import fitted_size
from deft_omni.data.processor import fit_image
from deft_omni.data.schema import write_manifest

SIZES = [(16, 16), (32, 16), (48, 32), (64, 64)]  # (w, h), cycled
AS_TRAINED_32 = {(16, 16): (16, 16), (32, 16): (32, 16), (48, 32): (32, 16), (64, 64): (32, 32)}


def _png(size, serial, mode="RGB"):
    """A tiny PNG whose bytes no other serial gives (the serial is written into three pixels)."""
    img = Image.new(mode, size, (serial * 7 % 256, 90, 160) if mode == "RGB" else 0)
    for k in range(3):
        img.putpixel((k, 0), ((serial >> (8 * k)) & 255,) * (3 if mode == "RGB" else 1))
    if mode == "L":
        img.paste(255, (4, 4, 12, 12))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_set(folder, source, n, start, plan):
    """n samples keyed <source>_<i>; ``plan`` collects what a correct summary must find."""
    os.makedirs(folder)
    serial = start * 10
    with wds.ShardWriter(os.path.join(folder, "shard-%06d.tar"), maxcount=1000, verbose=0, mtime=0) as sink:
        for i in range(start, start + n):
            key = f"{source}_{i:05d}"
            size = SIZES[i % len(SIZES)]
            n_inputs = 2 if i % 10 == 0 else 0 if i % 3 == 0 else 1
            task = {0: "text_to_image", 1: "image_edit", 2: "compose"}[n_inputs]
            tags = " ".join(f"<img><|image_{k}|></img>" for k in range(1, n_inputs + 1))
            instruction = f"{tags} a photo of thing {i}".strip() + (" in a garden" * (i % 7))
            if i % 397 == 5:  # planted tag mismatch: a tag too many or too few
                instruction = instruction + " <img><|image_9|></img>" if n_inputs else "<img><|image_1|></img> x"
                plan["mismatches"].add(key)
            sample = {"__key__": key, "json": json.dumps({"instruction": instruction, "task": task}).encode()}
            serial += 1
            sample["output.png"] = _png(size, serial)
            for k in range(1, n_inputs + 1):
                serial += 1
                sample[f"input_{k}.png"] = _png(size, serial)
            if i % 411 == 17 and i > 17:  # planted duplicate: another sample's output again
                other = plan["outputs"][i - 17]
                sample["output.png"] = other[1]
                plan["duplicates"].append([f"{other[0]} output.png", f"{key} output.png"])
            if n_inputs == 1 and i % 1013 == 1:  # planted duplicate inside a sample: input = output
                sample["input_1.png"] = sample["output.png"]
                plan["duplicates"].append([f"{key} input_1.png", f"{key} output.png"])
            if i % 200 == 3:
                sample["output_mask.png"] = _png(size, 0, mode="L")
                plan["masks"] += 1
            plan["outputs"][i] = (key, sample["output.png"])
            plan["tasks"][task] += 1
            plan["inputs"][n_inputs] += 1
            plan["sizes"][size] += 1
            plan["words"][len(instruction.split())] += 1
            sink.write(sample)
    shards = sorted(f for f in os.listdir(folder) if f.endswith(".tar"))
    counts = [min(1000, n - 1000 * k) for k in range(len(shards))]
    skipped = [{"key": f"{source}_gone_{k}", "reason": f"image file not found: x{k}.jpg"} for k in range(7)]
    skipped += [{"key": f"{source}_bad_{k}", "reason": f"corrupt image: y{k}.jpg (truncated)"} for k in range(3)]
    write_manifest(folder, list(zip(shards, counts, strict=True)), source=source, skipped=skipped,
                   output_masks=plan["masks"] - plan["masks_before"])
    plan["masks_before"] = plan["masks"]
    return folder


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("summary")
    plan = {"mismatches": set(), "duplicates": [], "outputs": {}, "tasks": Counter(), "inputs": Counter(),
            "sizes": Counter(), "words": Counter(), "masks": 0, "masks_before": 0}
    train = make_set(str(root / "a" / "train"), "jsonl", 8000, 0, plan)
    val = make_set(str(root / "b" / "val"), "insdet", 2000, 8000, plan)
    return root, [train, val], plan


def test_summary_of_10k_samples(big):
    root, sets, plan = big
    out = root / "report"
    assert summary.main([*sets, "--out", str(out), "--max-image-side", "32", "--sheet", "12", "--quiet"]) == 0
    got = json.loads((out / "summary.json").read_text())
    assert got["samples"] == 10000 and got["by_task"] == dict(plan["tasks"])
    assert got["by_source"] == {"jsonl": 8000, "insdet": 2000} and got["by_split"] == {"train": 8000, "val": 2000}
    assert got["skipped"] == {"image file not found": 14, "corrupt image": 6}
    assert got["output_sizes"] == {f"{w}x{h}": c for (w, h), c in plan["sizes"].items()}
    trained = Counter()
    for size, c in plan["sizes"].items():
        trained[AS_TRAINED_32[size]] += c
    assert got["trained_sizes"] == {f"{w}x{h}": c for (w, h), c in trained.items()}
    assert got["inputs_per_sample"] == {str(k): v for k, v in sorted(plan["inputs"].items())}
    words = Counter()
    for n, c in plan["words"].items():
        words[summary.scan.length_bin(n)] += c
    assert got["length_unit"] == "words" and got["lengths"] == dict(words)
    assert got["output_masks"] == plan["masks"] == sum(s["output_masks"] for s in got["sets"]) > 0
    assert len(plan["duplicates"]) >= 20 and sorted(got["duplicates"]) == sorted(sorted(g) for g in plan["duplicates"])
    assert len(plan["mismatches"]) >= 20 and {m["key"] for m in got["mismatches"]} == plan["mismatches"]
    assert got["unreadable"] == []
    md = (out / "summary.md").read_text()
    assert f"{len(plan['duplicates'])} images occur more than once" in md
    assert f"{len(plan['mismatches'])} samples (the loader skips them)" in md
    assert f"... and {len(plan['duplicates']) - 20} more" in md and f"... and {len(plan['mismatches']) - 20} more" in md
    assert "<img src='contact_sheet.png'" in (out / "summary.html").read_text()
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.height == 12 * (96 + 8) + 8


def test_tokens_buckets_errors_and_unreadable_shards(big, tmp_path, capsys):
    from tests.data._data_helpers import build_tiny_tokenizer

    root, sets, _ = big
    tok_dir = tmp_path / "model" / "tokenizer"
    tok = build_tiny_tokenizer()
    tok.save_pretrained(str(tok_dir))
    shard = os.path.join(sets[1], "shard-000001.tar")
    cut = tmp_path / "cut"
    cut.mkdir()
    with open(shard, "rb") as fh:
        (cut / "shard-000000.tar").write_bytes(fh.read()[:20_000])  # a shard cut short
    out = tmp_path / "r"
    assert summary.main([str(cut / "shard-000000.tar"), "--out", str(out), "--tokenizer", str(tmp_path / "model"),
                         "--bucket-sizes", "32x32,16x32", "--sheet", "0", "--quiet"]) == 0
    got = json.loads((out / "summary.json").read_text())
    assert got["length_unit"] == "tokens" and 0 < got["samples"] < 1000
    assert [u["where"] for u in got["unreadable"]] == [str(cut / "shard-000000.tar")]
    assert set(got["trained_sizes"]) <= {"32x32", "32x16"} and not (out / "contact_sheet.png").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert summary.main([sets[1], "--out", str(tmp_path / "mine"), "--quiet"]) == 2
    assert "is not an earlier data summary" in capsys.readouterr().err
    assert summary.main([str(tmp_path / "nowhere"), "--quiet", "--out", str(out)]) == 2
    assert "nowhere': no such shard folder or tar file" in capsys.readouterr().err


def test_sizes_as_trained_match_the_processor():
    buckets = [(32, 32), (16, 48), (48, 16)]
    for w in (16, 17, 31, 33, 47, 64, 100, 333):
        for h in (16, 20, 48, 90, 250):
            for b in (None, buckets):
                expected = fitted_size(w, h, 64, bucket_sizes=b)
                if expected is None:  # a side below 16 px once fitted: the processor refuses it
                    with pytest.raises(ValueError, match="below 16 px"):
                        fit_image(Image.new("RGB", (w, h)), 64, bucket_sizes=b)
                else:
                    assert fit_image(Image.new("RGB", (w, h)), 64, bucket_sizes=b).size == expected, (w, h, b)
    assert fitted_size(100, 8, 64) is None and fitted_size(333, 20, 64) is None


def test_shards_with_cached_latents_and_no_pixels_show_their_thumbnails(tmp_path):
    from deft_omni.data import ShardSetWriter
    from deft_omni.data.cached_latents import latents_block
    from tests.data._data_helpers import cached_sample

    folder = tmp_path / "cached"
    space = {"fingerprint": "ab" * 32, "class": "AutoencoderKL", "scaling_factor": 0.13025, "shift_factor": None,
             "latent_channels": 4, "downsampling": 8}
    block = latents_block(space=space, model="tiny", dtype="float16",
                          fit={"max_image_side": 64, "size_multiple": 16, "bucket_sizes": None}, pixels_dropped=True,
                          thumbnail_side=128, encoded_from="/pixels")
    with ShardSetWriter(str(folder), source="test", maxcount=10) as writer:
        writer.write(cached_sample("big", (300, 180), [(48, 32)], drop=True, mask=True))
        writer.write(cached_sample("kept", (64, 32), drop=False))
        writer.write(cached_sample("small", (64, 32), [(32, 32), (32, 32)], drop=True))
    write_manifest(str(folder), [("shard-000000.tar", 3)], source="test", output_masks=1, latents=block)
    out = tmp_path / "report"
    assert summary.main([str(folder), "--out", str(out), "--max-image-side", "64", "--quiet"]) == 0
    got = json.loads((out / "summary.json").read_text())
    assert got["samples"] == 3 and got["unreadable"] == [] and got["mismatches"] == []
    assert got["output_sizes"] == {"300x180": 1, "64x32": 2} and got["trained_sizes"] == {"64x32": 3}
    assert got["inputs_per_sample"] == {"0": 1, "1": 1, "2": 1} and got["output_masks"] == 1
    assert (got["cached_latents"], got["thumbnails_only"]) == (3, 2) and got["images"] == 6
    md = (out / "summary.md").read_text()
    assert "3 of 3 samples carry cached latents; 2 of them only thumbnails" in md and "abababababababab" in md
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.height == 3 * (96 + 8) + 8
