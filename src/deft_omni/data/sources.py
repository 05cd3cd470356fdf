"""The shard sets a loader mixes, this process's rank, and how each set is shared among readers.

Rank splitting uses rank/world size resolved once, in the main process (explicit arguments,
else torch.distributed, else RANK/WORLD_SIZE): ``wds.split_by_node`` would look them up again
inside each worker, where a spawned worker sees no process group and, without RANK/WORLD_SIZE
in the environment, silently reads every shard on every rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .schema import ShardSet

log = logging.getLogger("deft_omni.data.loader")
SPLITS = ("auto", "shard", "sample")


@dataclass
class ShardSource:
    """One shard set in the mix.  ``is_prior`` forces the DreamBooth prior flag on its samples."""

    shards: ShardSet
    weight: float = 1.0
    is_prior: bool | None = None


def as_sources(shard_sets: Iterable[Any]) -> list[ShardSource]:
    """Accept ShardSource, (spec, weight), (spec, weight, is_prior) or a bare spec per entry."""
    if isinstance(shard_sets, (str, os.PathLike, ShardSet, ShardSource)):
        shard_sets = [shard_sets]  # One set given bare; iterating a path would yield characters.
    out = []
    for entry in shard_sets:
        if isinstance(entry, ShardSource):
            src = entry
        elif isinstance(entry, tuple):
            src = ShardSource(ShardSet.resolve(entry[0]), *entry[1:])
        else:
            src = ShardSource(ShardSet.resolve(entry))
        src.shards = ShardSet.resolve(src.shards)
        if not src.weight > 0:
            raise ValueError(f"shard set weights must be > 0, got {src.weight}")
        if not src.shards.urls:
            raise ValueError("a shard set resolved to no shards")
        out.append(src)
    if not out:
        raise ValueError("no shard sets given")
    return out


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else the initialised process group, else RANK/WORLD_SIZE (set by
    torchrun and Lightning before the group exists), else a single process."""
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return 0, 1
    if rank is None or world_size is None or not 0 <= rank < world_size:
        raise ValueError(f"pass both rank and world_size with 0 <= rank < world_size "
                         f"(got rank={rank}, world_size={world_size})")
    return int(rank), int(world_size)


def _name(src: ShardSource, i: int) -> str:
    return src.shards.root or f"shard set {i}"


def plan_modes(sources: list[ShardSource], *, rank: int, world_size: int, num_workers: int, resampled: bool,
               split: str) -> list[str]:
    """How each set is shared among the ranks x workers readers (see :mod:`.shard_reader`).

    ``resampled``: every set is drawn at random.  Else ``split="auto"`` reads a set shard by
    shard when every reader gets a shard, and otherwise splits it by sample (logged once, on
    rank 0), or draws it at random when it holds fewer samples than there are readers.
    ``split="shard"`` forces shard-by-shard reading and fails if a rank would get no shard;
    ``split="sample"`` splits every set by sample.
    """
    if split not in SPLITS:
        raise ValueError(f"data split {split!r} is unknown; choose one of {SPLITS}")
    if resampled:
        return ["resampled"] * len(sources)
    readers = world_size * max(1, num_workers)
    modes = []
    for i, src in enumerate(sources):
        n = len(src.shards.urls)
        if split == "shard":
            if n < world_size:
                raise ValueError(f"{_name(src, i)} has {n} shard(s) for {world_size} ranks: with data.split=shard "
                                 f"ranks {n}..{world_size - 1} get none. Use data.split=auto, or write at least "
                                 f"{world_size} shards (lower the converter's maxcount).")
            modes.append("shard")
            continue
        if split == "sample" or n < readers:
            total = src.shards.total
            mode = "resampled" if total is not None and total < readers else "sample"
            if split == "auto" and rank == 0:
                how = (f"each reader keeps every {readers}th sample of each shard (split by sample)"
                       if mode == "sample" else "every reader draws samples at random (fewer samples than readers)")
                log.info("%s has %d shard(s) for %d rank(s) x %d worker(s): %s.", _name(src, i), n, world_size,
                         max(1, num_workers), how)
            modes.append(mode)
        else:
            modes.append("shard")
    return modes
