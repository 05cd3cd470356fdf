"""The embedded synthetic data set: deterministic, idempotent, atomic, loadable."""

from __future__ import annotations

import os

import pytest
import webdataset as wds
from ._data_helpers import modes, umask

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


def test_a_rank_that_loses_the_race_keeps_the_winners_set(tmp_path):
    """Two ranks write the same set: the one that finishes second discards its copy."""
    from deft_omni.data import synthetic

    out = str(tmp_path / "syn")
    options = synthetic._options(4, 2, ((32, 32),), 0, 64, 0.5)
    counts = {"train": 4, "val": 2}

    def make(i, split):
        return synthetic.synthetic_sample(i, split, 0, ((32, 32),), 0.5)

    inner = {}

    def make_while_another_rank_finishes(i, split):
        if not inner:  # the other rank starts later and installs its set first
            inner["paths"] = synthetic.write_generated_set(out, synthetic.SOURCE, options, counts, make, 64)
            inner["tar"] = os.stat(ShardSet.resolve(inner["paths"]["train"]).urls[0]).st_ino
        return make(i, split)

    paths = synthetic.write_generated_set(out, synthetic.SOURCE, options, counts, make_while_another_rank_finishes, 64)
    assert paths == inner["paths"]
    assert os.stat(ShardSet.resolve(paths["train"]).urls[0]).st_ino == inner["tar"]  # the winner's files
    assert read_manifest(paths["train"])["total"] == 4
    assert sorted(os.listdir(tmp_path)) == ["syn"]  # the loser's staging folder is gone


def _rank(out, barrier, results):
    barrier.wait()
    try:
        results.put(make_synthetic_shards(out, n_train=32, n_val=4, maxcount=8))
    except BaseException as exn:  # noqa: BLE001 - reported to the parent
        results.put(repr(exn))


def test_concurrent_ranks_get_one_complete_set(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    out = str(tmp_path / "syn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(out, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(g, dict) for g in got), got
    assert got[0] == got[1] and read_manifest(got[0]["train"])["total"] == 32
    assert len(_samples(got[0]["train"])) == 32
    assert sorted(os.listdir(tmp_path)) == ["syn"]


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_set_takes_the_umask_modes(tmp_path, mask):
    """Folders 0o777 & ~umask and files 0o666 & ~umask, as any file the user makes (not mkdtemp's 0700)."""
    with umask(mask):
        paths = make_synthetic_shards(str(tmp_path / "syn"), n_train=4, n_val=1)
    folders = [tmp_path / "syn", *map(str, paths.values())]
    files = [os.path.join(p, n) for p in paths.values() for n in os.listdir(p)] + [tmp_path / "syn" / "synthetic.json"]
    assert len(files) == 5
    assert modes(*folders) == [0o777 & ~mask] * 3
    assert modes(*files) == [0o666 & ~mask] * 5
