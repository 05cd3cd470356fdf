"""webdataset loaders: rank splitting, equal epochs, mixing, bad samples, resume, buckets."""

from __future__ import annotations

import warnings

import pytest
import torch
from ._data_helpers import write_shards

from deft_omni.data import SampleError, build_train_loader, build_val_loader


def keys_of(batches):
    return [b["keys"] for b in batches]


def take(loader, n):
    """The first n batches, crossing epochs (each new ``iter`` starts the next epoch)."""
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def shard_of(key):
    return int(key.split("_")[1])


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("four"), 4, 4, sizes=((32, 32),), with_inputs=True)


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("mixed"), 2, 8, prefix="m", sizes=((32, 32), (48, 48), (48, 48)))


def test_two_ranks_read_disjoint_shards_and_equal_epochs(processor, tmp_path, four_shards):
    uneven = write_shards(tmp_path / "uneven", 3, 4)  # rank 0 gets 2 shards, rank 1 gets 1
    for shards, expect in ((four_shards, ({0, 2}, {1, 3})), (uneven, ({0, 2}, {1}))):
        seen, lengths = [], []
        for rank in (0, 1):
            loader = build_train_loader([shards], processor, batch_size=2, epoch_length_batches=5,
                                        rank=rank, world_size=2, seed=1)
            batches = list(loader)
            lengths.append(len(batches))
            seen.append({shard_of(k) for b in batches for k in b["keys"]})
        assert lengths == [5, 5]  # same number of batches on every rank, repeating shards as needed
        assert tuple(seen) == expect


def test_too_few_shards_split_by_sample_or_fail_when_forced(processor, four_shards, caplog):
    # 4 shards for 2 ranks x 3 workers: split by sample, said once (rank 0), no warning.
    with warnings.catch_warnings(), caplog.at_level("INFO", logger="deft_omni.data.loader"):
        warnings.simplefilter("error")
        loader = build_train_loader([four_shards], processor, 2, num_workers=3, epoch_length_batches=1,
                                    rank=0, world_size=2)
        assert loader._kwargs["modes"] == ["sample"]
        assert [r.getMessage() for r in caplog.records if "split by sample" in r.getMessage()] != []
        # enough shards: by shard, silently
        caplog.clear()
        loader = build_train_loader([four_shards], processor, 2, epoch_length_batches=1, rank=1, world_size=4)
        assert loader._kwargs["modes"] == ["shard"] and not caplog.records
        # rank 4 of 5 gets no whole shard, but its share of samples
        loader = build_train_loader([four_shards], processor, 2, epoch_length_batches=2, rank=4, world_size=5)
        keys = [k for b in loader for k in b["keys"]]
        assert len(keys) == 4
    with pytest.raises(ValueError, match=r"^\S+ has 4 shard\(s\) for 5 ranks: with data.split=shard ranks 4..4 get "
                                         r"none. Use data.split=auto"):
        build_train_loader([four_shards], processor, 2, epoch_length_batches=1, rank=4, world_size=5, split="shard")
    # resampled: every rank draws from all shards; no warning, and batches flow.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = build_train_loader([four_shards], processor, 2, epoch_length_batches=2, rank=4,
                                    world_size=5, resampled=True)
    assert len(list(loader)) == 2


def test_mixing_weights(processor, tmp_path):
    a = write_shards(tmp_path / "a", 2, 8, prefix="a")
    b = write_shards(tmp_path / "b", 2, 8, prefix="b")
    loader = build_train_loader([(a, 3.0), (b, 1.0)], processor, batch_size=4, epoch_length_batches=40, seed=5)
    keys = [k for ks in keys_of(loader) for k in ks]
    share_a = sum(k.startswith("a_") for k in keys) / len(keys)
    assert len(keys) == 160 and 0.65 < share_a < 0.85


def test_prior_source_flags_its_samples(tokenizer, tmp_path):
    from deft_omni.data import OmniGenTrainProcessor, ShardSource, ShardSet

    proc = OmniGenTrainProcessor(tokenizer, max_image_side=64, cfg_dropout=0.0, prior_loss_weight=0.5)
    inst = write_shards(tmp_path / "inst", 1, 4, prefix="i")
    prior = write_shards(tmp_path / "prior", 1, 4, prefix="p")
    loader = build_train_loader([(inst, 1.0), ShardSource(ShardSet.resolve(prior), 1.0, is_prior=True)], proc,
                                batch_size=4, epoch_length_batches=4)
    for batch in loader:
        is_prior = [k.startswith("p_") for k in batch["keys"]]
        assert batch["is_prior"].tolist() == is_prior
        assert batch["loss_weight"].tolist() == [0.5 if p else 1.0 for p in is_prior]


def test_bucketizer_flushes_when_too_many_sizes_wait():
    from deft_omni.data.loader import _bucketize

    class Item:
        is_cached = False  # pixels: the bucketizer groups by size and kind

        def __init__(self, size):
            self.output_size = size

    sizes = [(16, 16), (32, 32), (48, 48), (16, 16), (64, 64), (16, 16)]
    out = list(_bucketize(map(Item, sizes), 3, lambda items: [it.output_size for it in items], 3, False))
    # Pending exceeds 3 at the 4th item: the fullest bucket (two 16x16) leaves early; at the
    # 6th again, and the oldest of the equally full buckets goes.
    assert out == [[(16, 16), (16, 16)], [(32, 32)]]
    tail = list(_bucketize(map(Item, sizes), 3, lambda items: [it.output_size for it in items], 99, True))
    assert tail == [[(16, 16)] * 3, [(32, 32)], [(48, 48)], [(64, 64)]]


def test_bad_samples_skipped_counted_or_fatal(processor, tmp_path):
    shards = write_shards(tmp_path / "bad", 2, 6, prefix="x", bad={1: "png", 4: "tags"})
    loader = build_train_loader([shards], processor, batch_size=2, epoch_length_batches=6, seed=0)
    keys = [k for ks in keys_of(loader) for k in ks]
    bad_keys = {"x_0_1", "x_0_4", "x_1_1", "x_1_4"}
    assert not bad_keys & set(keys)
    stats = loader.stats
    assert stats["skipped"] >= 2 and stats["samples"] >= 12
    assert set(stats["reasons"]) <= {"output.png", "json.instruction"}
    recent = stats["recent"][0]
    assert recent["key"] in bad_keys and recent["url"].endswith(".tar") and recent["key"] in recent["reason"]

    strict = build_train_loader([shards], processor, batch_size=2, epoch_length_batches=6, strict=True)
    with pytest.raises(SampleError, match=r"x_\d_[14].*in shard .*x-00000\d\.tar"):
        list(strict)


def test_all_bad_fails_loudly(processor, tmp_path):
    shards = write_shards(tmp_path / "allbad", 1, 2, prefix="z", bad={0: "png", 1: "png"})
    loader = build_train_loader([shards], processor, batch_size=1, epoch_length_batches=2,
                                max_consecutive_bad=10)
    with pytest.raises(RuntimeError, match="bad samples in a row"):
        list(loader)


def test_deterministic_order_and_epochs_differ(processor, four_shards):
    def run(seed):
        loader = build_train_loader([four_shards], processor, batch_size=2, epoch_length_batches=4, seed=seed)
        return keys_of(loader), keys_of(loader)  # two epochs

    first, again = run(7), run(7)
    assert first == again
    assert first[0] != first[1]  # epoch 1 reshuffles
    assert run(8)[0] != first[0]


def test_resume_fast_forward_is_exact(tokenizer, four_shards):
    from deft_omni.data import OmniGenTrainProcessor

    proc = OmniGenTrainProcessor(tokenizer, max_image_side=64, cfg_dropout=0.5)  # the dropout draws replay too

    def make():
        return build_train_loader([four_shards], proc, batch_size=2, epoch_length_batches=5, seed=3)

    reference = take(make(), 10)  # two uninterrupted epochs
    for cut in (2, 7):  # mid-epoch 0 and mid-epoch 1
        interrupted = make()
        take(interrupted, cut)
        state = interrupted.state_dict()
        assert (state["epoch"], state["batches_in_epoch"]) == divmod(cut, 5)
        resumed = make()
        resumed.load_state_dict(state)
        rest = list(resumed) + (list(resumed) if cut < 5 else [])
        assert keys_of(rest) == keys_of(reference[cut:])
        for got, want in zip(rest, reference[cut:]):
            assert torch.equal(got["input_ids"], want["input_ids"])
            assert torch.equal(got["output_images"], want["output_images"])
            assert torch.equal(got["cfg_dropped"], want["cfg_dropped"])
    assert any(b["cfg_dropped"].any() for b in reference) and not all(b["cfg_dropped"].all() for b in reference)
    state = make().state_for_step(7)
    assert (state["epoch"], state["batches_in_epoch"]) == (1, 2)


def test_buckets_hold_one_size(processor, mixed_sizes):
    loader = build_train_loader([mixed_sizes], processor, batch_size=3, epoch_length_batches=8, seed=2)
    sizes = set()
    for batch in loader:
        per_key = {shard_sizes for shard_sizes in _sizes_from_keys(batch["keys"])}
        assert len(per_key) == 1 and per_key == {batch["output_size"]}
        assert batch["output_images"].shape[-2:] == batch["output_size"]
        sizes.add(batch["output_size"])
    assert sizes == {(32, 32), (48, 48)}


def _sizes_from_keys(keys):
    """write_shards cycles sizes (32, 48, 48) over the running sample number."""
    for key in keys:
        _, shard, i = key.split("_")
        yield [(32, 32), (48, 48), (48, 48)][(int(shard) * 8 + int(i)) % 3]


def test_workers_and_resume_with_workers(processor, four_shards):
    loader = build_train_loader([four_shards], processor, batch_size=2, num_workers=2, epoch_length_batches=4,
                                seed=4)
    batches = list(loader)
    assert len(batches) == 4 and loader.stats["samples"] >= 8 and loader.stats["skipped"] == 0
    resumed = build_train_loader([four_shards], processor, batch_size=2, num_workers=2,
                                 epoch_length_batches=4, seed=4)
    resumed.load_state_dict(loader.state_for_step(2))
    rest = list(resumed)
    assert len(rest) == 2  # the epoch still ends after 4 batches in total
    assert keys_of(rest) != keys_of(batches[:2])  # a reseeded stream, not a replay of the start


def test_validation_loader_one_deterministic_pass(tokenizer, mixed_sizes):
    from deft_omni.data import OmniGenTrainProcessor

    proc = OmniGenTrainProcessor(tokenizer, cfg_dropout=1.0)  # must be ignored for validation
    loader = build_val_loader(mixed_sizes, proc, batch_size=3)
    first, second = list(loader), list(loader)
    keys = [k for ks in keys_of(first) for k in ks]
    assert sorted(keys) == sorted(f"m_{s}_{i}" for s in range(2) for i in range(8))  # each once
    assert keys_of(first) == keys_of(second)
    assert not any(b["cfg_dropped"].any() for b in first)
    assert all(len(set(_sizes_from_keys(b["keys"]))) == 1 for b in first)
