"""webdataset pipelines for training and validation.

Per DataLoader worker the training stream is:
shards of each set (split by rank, then by worker, shard order shuffled) -> tar samples
-> sample shuffle buffer -> repeat -> weighted mix of the sets -> parse (schema) ->
process (processor) -> bucket by output size -> batches.  ``wds.WebLoader(batch_size=None)``
collects the batches and ``with_epoch`` caps each epoch at ``epoch_length_batches`` on every
rank, so DDP ranks never wait for one another at an epoch end.

Rank splitting uses rank/world size resolved once, in the main process (explicit
arguments, else torch.distributed, else RANK/WORLD_SIZE): ``wds.split_by_node`` would look
them up again inside each worker, where a spawned worker sees no process group and,
without RANK/WORLD_SIZE in the environment, silently reads every shard on every rank.

Seeds derive from (seed, epoch, resume step, rank, worker), so a fixed seed and worker
count give a fixed stream, every epoch differs, and ranks/workers differ.  Samples the
schema or processor rejects are skipped, counted (``loader.stats``) and logged with key
and shard, or raised with ``strict=True``.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds

from ..core.seeding import derive_seed
from .processor import OmniGenTrainProcessor, ProcessedSample
from .schema import SampleError, ShardSet, parse_sample

log = logging.getLogger(__name__)
_STATS_KEY = "_data_stats"


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


class _RankSplitter:
    """Like wds.split_by_node, with the rank fixed at build time (see module docstring)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        for i, item in enumerate(src):
            if i % self.world_size == self.rank:
                yield item


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _Stats:
    """Per-worker counters; a snapshot rides along with every batch to the main process."""

    def __init__(self) -> None:
        self.samples = self.skipped = self.consecutive_bad = 0
        self.reasons: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=20)

    def bad(self, exn: Exception, key: str | None, url: str | None) -> None:
        self.skipped += 1
        self.consecutive_bad += 1
        reason = getattr(exn, "field", None) or type(exn).__name__
        self.reasons[reason] += 1
        self.recent.append({"key": key, "url": url, "reason": str(exn)})
        if self.skipped <= 20 or self.skipped % 100 == 0:
            log.warning("skipping bad sample (%d skipped so far in this worker): %s", self.skipped, exn)

    def snapshot(self) -> dict[str, Any]:
        return {"samples": self.samples, "skipped": self.skipped, "reasons": dict(self.reasons),
                "recent": list(self.recent)}


def _mix(streams: Sequence[Iterator[Any]], weights: Sequence[float], rng: random.Random) -> Iterator[Any]:
    """Draw from the streams with the given weights; a finished stream leaves the draw."""
    streams, weights = list(streams), list(weights)
    while streams:
        i = rng.choices(range(len(streams)), weights=weights)[0] if len(streams) > 1 else 0
        try:
            yield next(streams[i])
        except StopIteration:
            del streams[i], weights[i]


def _bucketize(items: Iterable[ProcessedSample], batch_size: int,
               collate: Callable[[list[ProcessedSample]], dict[str, Any]], max_pending: int,
               flush_at_end: bool) -> Iterator[dict[str, Any]]:
    """Group samples by output size; emit a bucket when it holds batch_size samples.

    If more than max_pending samples wait in unfilled buckets (many rare sizes), the
    fullest bucket goes out as a smaller batch rather than holding memory indefinitely.
    """
    buckets: OrderedDict[tuple[int, int], list[ProcessedSample]] = OrderedDict()
    pending = 0
    for item in items:
        size = item.output_size
        bucket = buckets.setdefault(size, [])
        bucket.append(item)
        pending += 1
        if len(bucket) >= batch_size:
            pending -= len(buckets.pop(size))
            yield collate(bucket)
        elif pending > max_pending:
            fullest = max(buckets, key=lambda s: len(buckets[s]))
            bucket = buckets.pop(fullest)
            pending -= len(bucket)
            yield collate(bucket)
    if flush_at_end:
        for bucket in buckets.values():
            yield collate(bucket)


@dataclass(eq=False)
class _Stream(torch.utils.data.IterableDataset):
    """The per-worker pipeline; pickled into each worker and built anew on every ``iter``."""

    sources: list[ShardSource]
    processor: OmniGenTrainProcessor
    batch_size: int
    rank: int
    world_size: int
    train: bool  # False: one pass, no condition dropout, partial buckets flushed at the end.
    resampled: bool
    shardshuffle: bool
    shuffle_buffer: int
    seed: int
    epoch: int
    salt: int  # Mixed into every seed; the resume step when resuming with workers.
    skip: int  # Batches to drop first (exact resume with num_workers == 0).
    strict: bool
    bucket_sizes: Sequence[tuple[int, int]] | None
    max_open_buckets: int
    max_consecutive_bad: int

    def _tar_handler(self, exn: Exception) -> bool:
        if self.strict:
            raise exn
        log.warning("skipping unreadable shard data: %r", exn)
        self._stats.bad(exn, None, None)
        return True

    def _raw_stream(self, index: int, src: ShardSource, base: int) -> Iterator[dict[str, Any]]:
        urls = src.shards.urls
        seed = derive_seed(base, "shards", index)
        if self.resampled:
            # WebDataset(resampled=True) seeds from time and pid; ResampledShards with a
            # fixed seed keeps the stream reproducible.  Every rank/worker draws on its own.
            ds = wds.DataPipeline(
                wds.ResampledShards(urls, seed=seed, deterministic=True, worker_seed=lambda: 0),
                wds.tarfile_to_samples(handler=self._tar_handler))
        else:
            ds = wds.WebDataset(
                urls, handler=self._tar_handler, resampled=False,
                shardshuffle=len(urls) if self.shardshuffle else False, detshuffle=True, seed=seed,
                nodesplitter=_RankSplitter(self.rank, self.world_size),
                workersplitter=wds.split_by_worker, empty_check=False)
            if self.train:
                ds = ds.repeat()  # Epochs are counted in batches (with_epoch), not shard passes.
        if self.shuffle_buffer > 1:  # Raw bytes are shuffled: cheaper than decoded images.
            ds = ds.compose(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 64),
                                        rng=random.Random(derive_seed(base, "samples", index))))
        for raw in ds:
            yield index, raw

    def _processed(self, raws: Iterator[tuple[int, dict[str, Any]]],
                   rng: np.random.Generator) -> Iterator[ProcessedSample]:
        stats = self._stats
        for index, raw in raws:
            try:
                sample = parse_sample(raw)
                item = self.processor(sample, train=self.train, rng=rng, epoch=self.epoch,
                                      is_prior=self.sources[index].is_prior, bucket_sizes=self.bucket_sizes)
            except SampleError as exn:
                if self.strict:
                    raise
                stats.bad(exn, raw.get("__key__"), raw.get("__url__"))
                if stats.consecutive_bad >= self.max_consecutive_bad:
                    raise RuntimeError(
                        f"{stats.consecutive_bad} bad samples in a row and none usable in between; "
                        f"last: {exn}. Check the shards with the converter that wrote them.") from exn
                continue
            stats.samples += 1
            stats.consecutive_bad = 0
            yield item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, _ = _worker()
        self._stats = _Stats()
        base = derive_seed(self.seed, "stream", self.epoch, self.salt, self.rank, worker)
        streams = [self._raw_stream(i, src, base) for i, src in enumerate(self.sources)]
        raws = _mix(streams, [s.weight for s in self.sources], random.Random(derive_seed(base, "mix")))
        items = self._processed(raws, np.random.default_rng(derive_seed(base, "cfg")))
        batches = _bucketize(items, self.batch_size, self.processor.collate,
                             self.batch_size * self.max_open_buckets, flush_at_end=not self.train)
        for i, batch in enumerate(batches):
            if i < self.skip:  # Exact fast-forward on resume (num_workers == 0 only).
                continue
            batch[_STATS_KEY] = (worker, self._stats.snapshot())
            yield batch


class _LoaderBase:
    def __init__(self) -> None:
        self._worker_stats: dict[int, dict[str, Any]] = {}

    def _unwrap(self, batch: dict[str, Any]) -> dict[str, Any]:
        worker, snap = batch.pop(_STATS_KEY)
        self._worker_stats[worker] = snap  # Cumulative per worker: keep the latest.
        batch["output_size"] = tuple(batch["output_size"])  # DataLoader turns tuples into lists.
        return batch

    @property
    def stats(self) -> dict[str, Any]:
        """Samples used and skipped so far in the current pass, summed over workers."""
        reasons: Counter[str] = Counter()
        for snap in self._worker_stats.values():
            reasons.update(snap["reasons"])
        return {"samples": sum(s["samples"] for s in self._worker_stats.values()),
                "skipped": sum(s["skipped"] for s in self._worker_stats.values()),
                "reasons": dict(reasons),
                "recent": [r for s in self._worker_stats.values() for r in s["recent"]]}


class TrainLoader(_LoaderBase):
    """An endless-data loader with epochs of exactly ``epoch_length`` batches and resume.

    ``state_dict()`` records the epoch and the batches yielded in it.  Resume via
    ``load_state_dict``: with ``num_workers == 0`` the stream of that epoch is regenerated
    and the consumed batches dropped, so the following batches equal an uninterrupted
    run's (cost: re-reading those batches).  With workers the interleaving cannot be
    replayed cheaply, so the epoch's seeds are re-derived with the resume step as salt:
    the rest of the epoch is a fresh shuffle of the data, never a replay of its first
    samples, and still ends after ``epoch_length`` batches in total.  Samples are counted
    as yielded: a trainer that prefetches ahead says what it consumed with :meth:`mark_trained`
    (DeftOmniModule does, after every batch).
    """

    def __init__(self, stream_kwargs: dict[str, Any], *, epoch_length: int, num_workers: int,
                 pin_memory: bool = False, prefetch_factor: int | None = None):
        super().__init__()
        self._kwargs, self.epoch_length = stream_kwargs, int(epoch_length)
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.epoch, self.batches_in_epoch = 0, 0
        self._started, self._resume = False, False
        self._trained: int | None = None

    def __len__(self) -> int:
        return self.epoch_length

    def mark_trained(self, batches_done: int) -> None:
        """A trainer that prefetches ahead says how many batches it has consumed in total;
        :meth:`state_dict` then describes the stream right after them (what a resume needs)."""
        self._trained = int(batches_done)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._resume:
            self._resume = False
            if self.batches_in_epoch >= self.epoch_length:
                self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        else:
            if self._started:
                self.epoch += 1
            self.batches_in_epoch = 0
        self._started = True
        start = self.batches_in_epoch
        exact = self.num_workers == 0
        stream = _Stream(**self._kwargs, epoch=self.epoch, salt=0 if exact else start,
                         skip=start if exact else 0)
        extra = {} if self.num_workers == 0 or self.prefetch_factor is None else \
            {"prefetch_factor": self.prefetch_factor}
        loader = wds.WebLoader(stream, batch_size=None, num_workers=self.num_workers,
                               pin_memory=self.pin_memory, **extra).with_epoch(self.epoch_length - start)
        self._worker_stats = {}
        for batch in loader:
            self.batches_in_epoch += 1
            yield self._unwrap(batch)
        if self.batches_in_epoch < self.epoch_length:
            raise RuntimeError(f"the data stream ended after {self.batches_in_epoch} of "
                               f"{self.epoch_length} batches in epoch {self.epoch}: no usable samples "
                               f"left (stats: {self.stats}); check the shards and loader.stats")

    def state_dict(self) -> dict[str, Any]:
        state = {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                 "epoch_length": self.epoch_length, "seed": self._kwargs["seed"],
                 "num_workers": self.num_workers}
        if self._trained is not None:
            state.update(epoch=self._trained // self.epoch_length, batches_in_epoch=self._trained % self.epoch_length)
        return state

    def state_for_step(self, batches_done: int) -> dict[str, Any]:
        """The state after ``batches_done`` batches in total (e.g. optimizer steps)."""
        state = self.state_dict()
        state.update(epoch=batches_done // self.epoch_length, batches_in_epoch=batches_done % self.epoch_length)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("epoch_length", self.epoch_length) != self.epoch_length:
            warnings.warn(f"resuming with epoch_length {self.epoch_length} (saved "
                          f"{state['epoch_length']}): epoch boundaries move", stacklevel=2)
        if state.get("seed", self._kwargs["seed"]) != self._kwargs["seed"]:
            warnings.warn("resuming with a different seed: the stream will not continue the saved one",
                          stacklevel=2)
        self.epoch, self.batches_in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])
        self._resume, self._trained = True, None


class ValLoader(_LoaderBase):
    """One deterministic pass, no shuffling, no condition dropout, last batches kept."""

    def __init__(self, stream_kwargs: dict[str, Any], num_workers: int):
        super().__init__()
        self._kwargs, self.num_workers = stream_kwargs, num_workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = _Stream(**self._kwargs, epoch=0, salt=0, skip=0)
        self._worker_stats = {}
        for batch in wds.WebLoader(stream, batch_size=None, num_workers=self.num_workers):
            yield self._unwrap(batch)


def _warn_starved(sources: list[ShardSource], rank: int, world_size: int, num_workers: int) -> None:
    readers = world_size * max(1, num_workers)
    for i, src in enumerate(sources):
        if len(src.shards.urls) < readers:
            warnings.warn(
                f"shard set {i} has {len(src.shards.urls)} shard(s) for {world_size} rank(s) x "
                f"{max(1, num_workers)} worker(s): some readers get no shard and sit idle or starve. "
                "Write more, smaller shards (lower the converter's maxcount), use fewer workers, "
                "or pass resampled=True.", stacklevel=3)
    if all(len(src.shards.urls[rank::world_size]) == 0 for src in sources):
        raise ValueError(f"rank {rank} of {world_size} receives no shard from any set: it could never "
                         "yield a batch. Use resampled=True or write at least world_size shards.")


def build_train_loader(shard_sets: Iterable[Any], processor: OmniGenTrainProcessor, batch_size: int,
                       num_workers: int = 0, epoch_length_batches: int | None = None, *,
                       resampled: bool = False, shardshuffle: bool = True, shuffle_buffer: int = 256,
                       seed: int = 0, strict: bool = False,
                       bucket_sizes: Sequence[tuple[int, int]] | None = None,
                       rank: int | None = None, world_size: int | None = None,
                       max_open_buckets: int = 8, max_consecutive_bad: int = 1000,
                       pin_memory: bool = False, prefetch_factor: int | None = None) -> TrainLoader:
    """The training loader; see :class:`TrainLoader` and the module docstring.

    ``shard_sets``: entries accepted by :func:`as_sources` (a directory with a manifest, a
    brace pattern, a url list or a ShardSet, with an optional sampling weight).
    ``epoch_length_batches`` defaults to the manifests' total samples over
    ``batch_size * world_size``.  ``bucket_sizes`` overrides the processor's.
    """
    sources = as_sources(shard_sets)
    rank, world_size = resolve_rank(rank, world_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not resampled:
        _warn_starved(sources, rank, world_size, num_workers)
    if epoch_length_batches is None:
        totals = [src.shards.total for src in sources]
        if any(t is None for t in totals):
            raise ValueError("epoch_length_batches is required when a shard set has no manifest counts")
        epoch_length_batches = max(1, sum(totals) // (batch_size * world_size))  # type: ignore[arg-type]
    kwargs = dict(sources=sources, processor=processor, batch_size=batch_size, rank=rank,
                  world_size=world_size, train=True, resampled=resampled, shardshuffle=shardshuffle,
                  shuffle_buffer=shuffle_buffer, seed=seed, strict=strict, bucket_sizes=bucket_sizes,
                  max_open_buckets=max_open_buckets, max_consecutive_bad=max_consecutive_bad)
    return TrainLoader(kwargs, epoch_length=epoch_length_batches, num_workers=num_workers,
                       pin_memory=pin_memory, prefetch_factor=prefetch_factor)


def build_val_loader(shard_set: Any, processor: OmniGenTrainProcessor, batch_size: int,
                     num_workers: int = 0, *, split_by_rank: bool = False, rank: int | None = None,
                     world_size: int | None = None, strict: bool = False,
                     bucket_sizes: Sequence[tuple[int, int]] | None = None) -> ValLoader:
    """One pass over a held-out set in file order.  By default every rank reads all of it
    (identical metrics on every rank); ``split_by_rank=True`` gives each rank its shards."""
    sources = as_sources([shard_set])
    rank, world_size = resolve_rank(rank, world_size) if split_by_rank else (0, 1)
    kwargs = dict(sources=sources, processor=processor, batch_size=batch_size, rank=rank,
                  world_size=world_size, train=False, resampled=False, shardshuffle=False,
                  shuffle_buffer=0, seed=0, strict=strict, bucket_sizes=bucket_sizes,
                  max_open_buckets=8, max_consecutive_bad=10**9)
    return ValLoader(kwargs, num_workers)
