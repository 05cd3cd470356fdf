"""The embedded synthetic data set: deterministic, idempotent, atomic, loadable."""

from __future__ import annotations

import os

import pytest
import webdataset as wds

from deft_omni.data import ShardSet, build_train_loader, make_synthetic_shards, parse_sample, read_manifest


def _samples(path):
    urls = ShardSet.resolve(path).urls
    return [parse_sample(r) for r in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


def test_generates_both_tasks_and_sizes(tmp_path):
    paths = make_synthetic_shards(str(tmp_path / "syn"), n_train=24, n_val=6, maxcount=8)
    assert read_manifest(paths["train"])["total"] == 24 and read_manifest(paths["val"])["total"] == 6
    assert len(ShardSet.resolve(paths["train"])) == 3
    train = _samples(paths["train"])
    assert {s.task for s in train} == {"text_to_image", "image_edit"}
    assert {s.output.size for s in train} == {(32, 32), (48, 48)}
    for s in train:
        if s.task == "image_edit":
            assert s.instruction == f"<img><|image_1|></img> the same shape in {s.meta['colour']}"
            assert len(s.inputs) == 1 and s.inputs[0].size == s.output.size
            assert s.inputs[0].tobytes() != s.output.tobytes()  # another colour
        else:
            assert s.instruction == f"a {s.meta['colour']} {s.meta['shape']} on a {s.meta['background']} background"
            assert s.inputs == []
    assert not any(s.key.startswith("syn_train") for s in _samples(paths["val"]))


def test_idempotent_deterministic_and_replaced_on_new_options(tmp_path):
    out = str(tmp_path / "syn")
    paths = make_synthetic_shards(out, n_train=8, n_val=2, seed=1)
    tar = ShardSet.resolve(paths["train"]).urls[0]
    first_bytes, first_mtime = open(tar, "rb").read(), os.stat(tar).st_mtime_ns
    assert make_synthetic_shards(out, n_train=8, n_val=2, seed=1) == paths
    assert os.stat(tar).st_mtime_ns == first_mtime  # reused, not rewritten
    other = make_synthetic_shards(str(tmp_path / "again"), n_train=8, n_val=2, seed=1)
    assert open(ShardSet.resolve(other["train"]).urls[0], "rb").read() == first_bytes  # byte-identical
    make_synthetic_shards(out, n_train=8, n_val=2, seed=2)  # new options: replaced in place
    assert open(tar, "rb").read() != first_bytes
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp dirs left


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a deft_omni synthetic"):
        make_synthetic_shards(str(tmp_path / "mine"), n_train=4, n_val=1)
    with pytest.raises(ValueError, match="multiples of 16"):
        make_synthetic_shards(str(tmp_path / "x"), image_sizes=[(30, 32)])


def test_loads_through_the_train_loader(tmp_path, processor):
    paths = make_synthetic_shards(str(tmp_path / "syn"), n_train=16, n_val=4, maxcount=4)
    loader = build_train_loader([paths["train"]], processor, batch_size=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 8  # 16 samples / batch 2 by default
    assert {b["output_size"] for b in batches} <= {(32, 32), (48, 48)}
