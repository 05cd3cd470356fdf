"""data_prep.omnigen_jsonl: OmniGen's JSONL -> shards, per-line validation with FILE:LINE."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from data_prep import omnigen_jsonl
from deft_omni.data import MaskWarning
from tests.data._data_helpers import LFS_POINTER

from ._prep_helpers import (
    add_bom,
    corrupt_jpeg,
    loader_batches,
    manifest,
    read_samples,
    save_image,
    save_mask,
    skipped_keys,
    temporaries,
)

REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")
    return str(path)


@pytest.fixture()
def images(tmp_path):
    root = tmp_path / "imgs"
    save_image(root / "a.jpg", (48, 32), (200, 30, 30))
    save_image(root / "sub" / "b.png", (32, 32), (30, 200, 30))
    save_image(root / "c.jpg", (64, 48), (30, 30, 200))
    return root


def test_converts_lines_and_reads_back(tmp_path, images, processor):
    jsonl = _write_jsonl(tmp_path / "train.jsonl", [
        {"task_type": "text_to_image", "instruction": "a red square", "input_images": [], "output_image": "a.jpg"},
        {"task_type": "image_edit", "instruction": "<img><|image_1|></img> turn it green",
         "input_images": ["a.jpg"], "output_image": "sub/b.png"},
        "",  # blank lines are ignored
        {"task_type": "subject", "instruction": "<img><|image_1|></img> and <img><|image_2|></img> together",
         "input_images": ["a.jpg", "sub/b.png"], "output_image": "c.jpg", "source": "x"},
    ])
    out = tmp_path / "out"
    assert omnigen_jsonl.main(["--jsonl", jsonl, "--images", str(images), "--out", str(out), "--quiet"]) == 0
    samples = read_samples(out)
    assert [s.key for s in samples] == ["train_0000001", "train_0000002", "train_0000004"]
    assert [s.task for s in samples] == ["text_to_image", "image_edit", "subject"]
    assert [len(s.inputs) for s in samples] == [0, 1, 2]
    assert samples[0].output.size == (48, 32) and samples[2].output.size == (64, 48)
    assert samples[1].meta["line"] == 2 and samples[1].meta["output_image"] == "sub/b.png"
    assert samples[2].meta["extra"] == {"source": "x"}
    m = manifest(out)
    assert m["total"] == 3 and m["skipped"] == [] and m["source"] == "omnigen_jsonl"
    assert m["options"]["stats"]["images"] == 6
    batches = loader_batches(out, processor)
    assert sum(len(b["input_ids"]) for b in batches) == 3


def test_bad_lines_are_skipped_with_file_and_line(tmp_path, images):
    corrupt_jpeg(images / "broken.jpg")
    save_image(images / "sliver.png", (64, 8))
    jsonl = _write_jsonl(tmp_path / "mixed.jsonl", [
        {"task_type": "t2i", "instruction": "fine", "input_images": [], "output_image": "a.jpg"},
        "{not json",
        {"task_type": "edit", "instruction": "no tag here", "input_images": ["a.jpg"], "output_image": "c.jpg"},
        {"task_type": "edit", "instruction": "<img><|image_2|></img> wrong number", "input_images": ["a.jpg"],
         "output_image": "c.jpg"},
        {"task_type": "t2i", "instruction": "missing", "input_images": [], "output_image": "nope.jpg"},
        {"task_type": "t2i", "instruction": "corrupt", "input_images": [], "output_image": "broken.jpg"},
        {"task_type": "t2i", "instruction": 3, "output_image": "a.jpg"},
        [1, 2],
        {"task_type": "t2i", "instruction": "sliver", "input_images": [], "output_image": "sliver.png"},
    ])
    out = tmp_path / "out"
    assert omnigen_jsonl.main(["--jsonl", jsonl, "--images", str(images), "--out", str(out), "--quiet"]) == 0
    assert [s.key for s in read_samples(out)] == ["mixed_0000001"]
    skipped = skipped_keys(out)
    assert skipped["mixed_0000002"].startswith("invalid JSON: mixed.jsonl:2:")
    assert skipped["mixed_0000003"].startswith("tag/image mismatch: mixed.jsonl:3:")
    assert "0 image tag(s) but the sample has 1 input image(s)" in skipped["mixed_0000003"]
    assert skipped["mixed_0000004"].startswith("tag/image mismatch: mixed.jsonl:4:")
    assert skipped["mixed_0000005"].startswith("image file not found: mixed.jsonl:5:")
    assert skipped["mixed_0000006"].startswith("corrupt image: mixed.jsonl:6:")
    assert "'instruction' must be a string" in skipped["mixed_0000007"]
    assert "expected a JSON object" in skipped["mixed_0000008"]
    assert skipped["mixed_0000009"].startswith("image too small: mixed.jsonl:9:")
    assert "64x8 px" in skipped["mixed_0000009"]


def test_strict_turns_a_skip_into_an_error(tmp_path, images, capsys):
    jsonl = _write_jsonl(tmp_path / "t.jsonl", [
        {"task_type": "t2i", "instruction": "ok", "input_images": [], "output_image": "a.jpg"},
        {"task_type": "edit", "instruction": "<img><|image_1|></img>", "input_images": [], "output_image": "a.jpg"},
    ])
    out = tmp_path / "out"
    assert omnigen_jsonl.main(["--jsonl", jsonl, "--images", str(images), "--out", str(out), "--quiet",
                               "--strict"]) == 2
    err = capsys.readouterr().err
    assert "--strict" in err and "t.jsonl:2" in err and "1 image tag(s) but the sample has 0" in err
    assert not out.exists()
    assert not temporaries(tmp_path)


def test_missing_inputs_give_clear_errors(tmp_path, images, capsys):
    assert omnigen_jsonl.main(["--jsonl", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist (expected an OmniGen JSONL file" in capsys.readouterr().err
    jsonl = _write_jsonl(tmp_path / "t.jsonl", [{"instruction": "x", "output_image": "gone.jpg"}])
    assert omnigen_jsonl.main(["--jsonl", jsonl, "--images", str(images), "--out", str(tmp_path / "o"),
                               "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no samples were written" in err and "image file not found (1)" in err
    assert not (tmp_path / "o").exists()


def test_a_bom_does_not_cost_the_first_line(tmp_path, images):
    """Windows editors start a UTF-8 file with a byte-order mark; json.loads rejects it."""
    jsonl = tmp_path / "bom.jsonl"
    _write_jsonl(jsonl, [{"instruction": "first", "output_image": "a.jpg"},
                         {"instruction": "second", "output_image": "c.jpg"}])
    add_bom(jsonl)
    out = tmp_path / "out"
    assert omnigen_jsonl.main(["--jsonl", str(jsonl), "--images", str(images), "--out", str(out), "--quiet"]) == 0
    assert [s.instruction for s in read_samples(out)] == ["first", "second"]
    assert manifest(out)["skipped"] == []


def test_git_lfs_pointers_are_named(tmp_path, images, capsys):
    (images / "lfs.jpg").write_bytes(LFS_POINTER)
    jsonl = _write_jsonl(tmp_path / "t.jsonl", [{"instruction": "ok", "output_image": "a.jpg"},
                                                {"instruction": "pointer", "output_image": "lfs.jpg"}])
    out = tmp_path / "out"
    assert omnigen_jsonl.main(["--jsonl", jsonl, "--images", str(images), "--out", str(out), "--quiet"]) == 0
    reason = skipped_keys(out)["t_0000002"]
    assert reason.startswith("git-LFS pointer, not an image: t.jsonl:2:") and "lfs.jpg" in reason
    assert "123,456 bytes" in reason and "`git lfs pull` in the repository it came from" in reason
    pointer = tmp_path / "pointer.jsonl"
    pointer.write_bytes(LFS_POINTER)
    assert omnigen_jsonl.main(["--jsonl", str(pointer), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pointer.jsonl' is a git-LFS pointer" in err and "git lfs pull" in err


def test_experiment_omnigen_reads_what_prepare_jsonl_writes(tmp_path, monkeypatch):
    import shutil
    import subprocess

    from tests.test_train import _compose

    data = tmp_path / "data"
    monkeypatch.setenv("DEFT_OMNI_DATA", str(data))
    cfg = _compose(["experiment=omnigen"])
    assert cfg.task_name == "omnigen" and [t.path for t in cfg.data.train] == [str(data / "omnigen" / "train")]
    if shutil.which("make"):
        dry = subprocess.run(["make", "-n", "prepare-jsonl", "JSONL=t.jsonl", f"OUT={data}"], cwd=REPO,
                             env={**os.environ, "MAKEFLAGS": ""}, capture_output=True, text=True)
        assert f"--out {data / 'omnigen' / 'train'} " in dry.stdout, dry.stdout + dry.stderr


def test_output_masks(tmp_path, images):
    """An optional "output_mask" path per line: stored as the sample's output_mask."""
    save_mask(images / "a_mask.png", (48, 32))
    Image.new("L", (48, 32), 255).save(images / "full.png")
    jsonl = _write_jsonl(tmp_path / "m.jsonl", [
        {"instruction": "masked", "output_image": "a.jpg", "output_mask": "a_mask.png"},
        {"instruction": "plain", "output_image": "a.jpg"},
        {"instruction": "no file", "output_image": "a.jpg", "output_mask": "gone.png"},
        {"instruction": "not a path", "output_image": "a.jpg", "output_mask": 3},
        {"instruction": "full", "output_image": "a.jpg", "output_mask": "full.png"},
    ])
    out = tmp_path / "out"
    with pytest.warns(MaskWarning, match="sample 'm_0000005': the output mask is full"):
        assert omnigen_jsonl.main(["--jsonl", jsonl, "--images", str(images), "--out", str(out), "--quiet"]) == 0
    with pytest.warns(MaskWarning, match="sample 'm_0000005' in shard .*shard-000000.tar'"):  # and on reading
        samples = {s.key: s for s in read_samples(out)}
    assert samples["m_0000001"].output_mask.getextrema() == (0, 255)
    assert samples["m_0000001"].meta["output_mask"] == "a_mask.png" and "extra" not in samples["m_0000001"].meta
    assert samples["m_0000002"].output_mask is None
    skipped = skipped_keys(out)
    assert skipped["m_0000003"].startswith("mask file not found: m.jsonl:3:")
    assert "'output_mask' must be a non-empty path" in skipped["m_0000004"]
    assert manifest(out)["output_masks"] == 2 and manifest(out)["options"]["stats"]["images"] == 3  # masks aside
