"""A one-shard set on two DDP ranks (gloo), with the loader's defaults: no crash, equal batch
counts, disjoint samples, and read counts summed across ranks."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ._data_helpers import build_tiny_tokenizer, write_shards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, shards: str, out: str) -> None:
    from deft_omni.data import OmniGenTrainProcessor, build_train_loader
    from deft_omni.data import reduce_counts

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        processor = OmniGenTrainProcessor(build_tiny_tokenizer(), max_image_side=64, cfg_dropout=0.0)
        loader = build_train_loader([shards], processor, batch_size=2)  # defaults: rank from the group
        epochs = [[k for b in loader for k in b["keys"]] for _ in range(2)]
        counts = reduce_counts(loader.counts)
        gathered = [None, None]
        dist.all_gather_object(gathered, {"epochs": epochs, "batches": [len(e) // 2 for e in epochs]})
        if rank == 0:
            torch.save({"ranks": gathered, "counts": counts}, out)
    finally:
        dist.destroy_process_group()


def test_one_shard_set_on_two_ranks_with_defaults(tmp_path):
    shards = write_shards(tmp_path / "one", 1, 12, prefix="o")  # one shard, as converters write small sets
    out = str(tmp_path / "result.pt")
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
    try:
        mp.start_processes(_rank_main, args=(_free_port(), shards, out), nprocs=2, start_method="fork")
    finally:
        os.environ.update(env)
    result = torch.load(out, weights_only=True)
    r0, r1 = result["ranks"]
    assert r0["batches"] == r1["batches"] == [3, 3]  # 12 samples / (2 per batch x 2 ranks), every epoch
    for e0, e1 in zip(r0["epochs"], r1["epochs"]):
        assert not set(e0) & set(e1)  # each rank keeps its own samples
    assert set(r0["epochs"][0]) | set(r1["epochs"][0]) <= {f"o_0_{i}" for i in range(12)}
    assert result["counts"]["data/samples_used"] >= 24  # both ranks' counts, summed
    assert result["counts"]["data/samples_read"] >= result["counts"]["data/samples_used"]
