"""What the loader read is accounted for: truncated, unreadable and short shards are named and
counted, counts reach the main process from workers, and workers persist across epochs."""

from __future__ import annotations

import logging
import os

import pytest
from ._data_helpers import write_shards

from deft_omni.data import build_train_loader, build_val_loader
from deft_omni.data.schema import read_manifest, write_manifest


def _cut(directory, name, fraction=0.5):
    path = os.path.join(directory, name)
    with open(path, "r+b") as fh:
        fh.truncate(int(os.path.getsize(path) * fraction))
    return path


@pytest.fixture
def half_cut(tmp_path):
    """Two shards of 16; the second cut in half (10 of its 16 samples remain, the last partial)."""
    d = write_shards(tmp_path / "cut", 2, 16, prefix="c")
    _cut(d, "c-000001.tar")
    return d


def test_truncated_shard_is_named_and_its_losses_counted(processor, half_cut, caplog):
    loader = build_val_loader(half_cut, processor, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="deft_omni.data.loader"):
        keys = [k for b in loader for k in b["keys"]]
    counts = loader.counts
    assert counts["data/shards_read"] == 2 and counts["data/shards_truncated"] == 1
    assert counts["data/shards_short"] == 1
    assert counts["data/skipped/missing_from_shard"] == 6  # the 6 samples that vanished silently before
    assert counts["data/samples_read"] == 26
    assert counts["data/samples_used"] == len(keys) == 26 - sum(
        v for k, v in counts.items() if k.startswith("data/skipped/") and k != "data/skipped/missing_from_shard")
    lines = [r.getMessage() for r in caplog.records]
    assert any("c-000001.tar yielded 10 of the 16 samples its manifest lists (truncated" in m for m in lines)


def test_strict_makes_a_truncated_shard_fatal(processor, half_cut):
    from deft_omni.data import ShardReadError

    with pytest.raises(ShardReadError, match=r"shard .*c-000001.tar is truncated or damaged"):
        list(build_val_loader(half_cut, processor, batch_size=4, strict=True))


def test_short_shard_without_truncation_is_compared_with_the_manifest(processor, tmp_path, caplog):
    d = write_shards(tmp_path / "short", 2, 4, prefix="s")
    manifest = read_manifest(d)
    write_manifest(d, [(s["file"], s["samples"] + (3 if i == 0 else 0)) for i, s in enumerate(manifest["shards"])],
                   source="test")
    loader = build_val_loader(d, processor, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="deft_omni.data.loader"):
        list(loader)
    assert loader.counts["data/skipped/missing_from_shard"] == 3 and "data/shards_truncated" not in {
        k for k, v in loader.counts.items() if v}
    assert any("s-000000.tar yielded 4 of the 7 samples" in r.getMessage() for r in caplog.records)


def test_unreadable_shard_is_named_counted_or_fatal(processor, tmp_path, caplog):
    d = write_shards(tmp_path / "junk", 2, 4, prefix="j")
    with open(os.path.join(d, "j-000001.tar"), "wb") as fh:
        fh.write(os.urandom(3000))
    loader = build_val_loader(d, processor, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="deft_omni.data.loader"):
        keys = [k for b in loader for k in b["keys"]]
    assert len(keys) == 4 and loader.counts["data/shard_errors"] >= 1
    assert loader.counts["data/skipped/missing_from_shard"] == 4
    assert any("j-000001.tar" in r.getMessage() for r in caplog.records)
    from deft_omni.data import ShardReadError

    with pytest.raises(ShardReadError, match=r"j-000001.tar"):
        list(build_val_loader(d, processor, batch_size=2, strict=True))


def test_counts_from_workers_reach_the_main_process(processor, half_cut):
    loader = build_train_loader([half_cut], processor, batch_size=2, num_workers=2, epoch_length_batches=20,
                                shuffle_buffer=0, seed=1)
    batches = list(loader)
    counts = loader.counts
    used = sum(len(b["keys"]) for b in batches)
    assert counts["data/samples_used"] >= used  # workers count what they processed ahead, too
    assert counts["data/shards_truncated"] >= 1 and counts["data/skipped/missing_from_shard"] >= 6
    assert counts["data/skipped/missing_from_shard"] % 6 == 0  # 6 per read of the cut shard, never double-counted


def test_workers_persist_across_epochs(processor, tmp_path):
    d = write_shards(tmp_path / "small", 1, 14, prefix="p")  # a personalisation-sized set: one shard
    loader = build_train_loader([d], processor, batch_size=2, num_workers=2, epoch_length_batches=3, seed=3)
    assert loader.dataloader.persistent_workers and loader.dataloader.num_workers == 2
    epochs, pids = [], []
    for _ in range(3):
        epochs.append([k for b in loader for k in b["keys"]])
        pids.append(sorted(w.pid for w in loader.dataloader._iterator._workers))
    assert pids[0] == pids[1] == pids[2]  # started once, not once per epoch
    assert all(len(e) == 6 for e in epochs) and epochs[0] != epochs[1]  # the epoch reaches the workers
    again = build_train_loader([d], processor, batch_size=2, num_workers=2, epoch_length_batches=3, seed=3)
    assert [[k for b in again for k in b["keys"]] for _ in range(3)] == epochs  # and stays deterministic
    workers = loader.dataloader._iterator._workers
    loader.close()
    assert not any(w.is_alive() for w in workers)  # stopped at once, not whenever the collector runs
    again.close()


def test_one_shard_split_by_sample_among_workers_reads_each_sample_once(processor, tmp_path):
    d = write_shards(tmp_path / "one", 1, 14, prefix="v")
    loader = build_val_loader(d, processor, batch_size=4, num_workers=2)
    keys = sorted(k for b in loader for k in b["keys"])
    assert keys == sorted(f"v_0_{i}" for i in range(14))  # both workers busy, no sample twice
    assert loader.counts["data/shards_read"] == 1 and loader.counts["data/samples_read"] == 14
    loader.close()


def test_a_resume_reaches_running_workers(processor, tmp_path):
    d = write_shards(tmp_path / "res", 2, 6, prefix="r")

    def make():
        return build_train_loader([d], processor, batch_size=2, num_workers=2, epoch_length_batches=4, seed=5)

    fresh = make()
    fresh.load_state_dict(fresh.state_for_step(6))  # epoch 1, 2 batches in: salt 2
    want = [b["keys"] for b in fresh]
    running = make()
    list(running)  # workers started and serving epoch 0
    running.load_state_dict(running.state_for_step(6))  # the same workers must take the new plan
    assert [b["keys"] for b in running] == want and len(want) == 2
    fresh.close()
    running.close()
