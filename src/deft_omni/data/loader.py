"""webdataset pipelines for training and validation.

Per DataLoader worker the training stream is:
shards of each set (shared among ranks x workers: by shard, by sample for small sets, or
resampled; see :mod:`.sources`) -> tar samples, checked against the manifest
(:mod:`.shard_reader`) -> sample shuffle buffer -> repeat -> weighted mix of the sets ->
parse (schema) -> process (processor) -> bucket by output size and kind -> batches.  One DataLoader,
with persistent workers, serves the loader's whole life (workers start once, not per
epoch); each epoch stops after exactly ``epoch_length_batches`` batches on every rank, so
DDP ranks never wait for one another at an epoch end.

Seeds derive from (seed, epoch, resume step, rank, worker) at the start of a stream, so a
fixed seed and worker count give a fixed stream, every epoch differs, and ranks/workers
differ.  The epoch and resume step reach the persistent workers through a small
shared-memory tensor written before a stream starts.  Samples the schema or processor rejects are skipped, counted and
logged with key and shard, or raised with ``strict=True``; what was read, used and skipped is
counted by reason (:mod:`.read_counts`, ``loader.counts``).
"""

from __future__ import annotations

import random
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds

from ..core.seeding import derive_seed
from .processor import OmniGenTrainProcessor, ProcessedSample
from .read_counts import ReadCounts
from .schema import SampleError, parse_sample
from .shard_reader import make_reader
from .sources import ShardSource, as_sources, plan_modes, resolve_rank

_STATS_KEY = "_data_stats"

__all__ = ["ShardSource", "TrainLoader", "ValLoader", "as_sources", "build_train_loader", "build_val_loader",
           "resolve_rank"]


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


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
    """Group samples by output size (and by kind: pixels or cached latents); emit a bucket when it
    holds batch_size samples.

    If more than max_pending samples wait in unfilled buckets (many rare sizes), the
    fullest bucket goes out as a smaller batch rather than holding memory indefinitely.
    """
    buckets: OrderedDict[tuple[tuple[int, int], bool], list[ProcessedSample]] = OrderedDict()
    pending = 0
    for item in items:
        group = item.output_size, item.is_cached
        bucket = buckets.setdefault(group, [])
        bucket.append(item)
        pending += 1
        if len(bucket) >= batch_size:
            pending -= len(buckets.pop(group))
            yield collate(bucket)
        elif pending > max_pending:
            fullest = max(buckets, key=lambda s: len(buckets[s]))
            bucket = buckets.pop(fullest)
            pending -= len(bucket)
            yield collate(bucket)
    if flush_at_end:
        for bucket in buckets.values():
            yield collate(bucket)


def _plan(epoch: int = 0, salt: int = 0, skip: int = 0) -> torch.Tensor:
    return torch.tensor([epoch, salt, skip], dtype=torch.int64)


@dataclass(eq=False)
class _Stream(torch.utils.data.IterableDataset):
    """The per-worker pipeline; built anew in each worker at the start of every epoch."""

    sources: list[ShardSource]
    modes: list[str]  # per set: "shard", "sample" or "resampled" (see shard_reader)
    processor: OmniGenTrainProcessor
    batch_size: int
    rank: int
    world_size: int
    train: bool  # False: one pass, no condition dropout, partial buckets flushed at the end.
    shardshuffle: bool
    shuffle_buffer: int
    seed: int
    strict: bool
    bucket_sizes: Sequence[tuple[int, int]] | None
    max_open_buckets: int
    max_consecutive_bad: int
    # (epoch, salt, skip), in shared memory: the loader writes it before an epoch, persistent
    # workers read it when they start one.  salt is mixed into every seed (the resume step
    # when resuming with workers); skip drops batches first (exact resume, no workers).
    plan: torch.Tensor

    def _raw_stream(self, index: int, src: ShardSource, base: int, stats: ReadCounts) -> Iterator[Any]:
        worker, num_workers = _worker()
        reader = make_reader(src.shards.urls, src.shards.counts, self.modes[index], rank=self.rank,
                             world_size=self.world_size, worker=worker, num_workers=num_workers,
                             shuffle=self.shardshuffle, seed=derive_seed(base, "shards", index), strict=self.strict,
                             stats=stats)
        per_pass: Callable[[Iterator[Any]], Iterator[Any]] = iter
        if self.shuffle_buffer > 1:  # Raw bytes are shuffled: cheaper than decoded images.
            per_pass = wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 64),
                                   rng=random.Random(derive_seed(base, "samples", index)))
        for raw in reader.passes(per_pass) if self.train else per_pass(reader.one_pass()):
            yield index, raw

    def _processed(self, raws: Iterator[tuple[int, dict[str, Any]]], rng: np.random.Generator, epoch: int,
                   stats: ReadCounts) -> Iterator[ProcessedSample]:
        for index, raw in raws:
            try:
                sample = parse_sample(raw)
                item = self.processor(sample, train=self.train, rng=rng, epoch=epoch,
                                      is_prior=self.sources[index].is_prior, bucket_sizes=self.bucket_sizes)
            except SampleError as exn:
                if self.strict:
                    raise
                stats.bad_sample(exn, raw.get("__key__"), raw.get("__url__"))
                if stats.consecutive_bad >= self.max_consecutive_bad:
                    raise RuntimeError(
                        f"{stats.consecutive_bad} bad samples in a row and none usable in between; "
                        f"last: {exn}. Check the shards with the converter that wrote them.") from exn
                continue
            stats.used()
            yield item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, _ = _worker()
        epoch, salt, skip = (int(v) for v in self.plan.tolist())
        stats = ReadCounts()
        base = derive_seed(self.seed, "stream", epoch, salt, self.rank, worker)
        streams = [self._raw_stream(i, src, base, stats) for i, src in enumerate(self.sources)]
        raws = _mix(streams, [s.weight for s in self.sources], random.Random(derive_seed(base, "mix")))
        items = self._processed(raws, np.random.default_rng(derive_seed(base, "cfg")), epoch, stats)
        batches = _bucketize(items, self.batch_size, self.processor.collate,
                             self.batch_size * self.max_open_buckets, flush_at_end=not self.train)
        for i, batch in enumerate(batches):
            if i < skip:  # Exact fast-forward on resume (num_workers == 0 only).
                continue
            batch[_STATS_KEY] = (worker, stats.snapshot(), stats.take_delta())
            yield batch
        delta = stats.take_delta()  # reads counted after the last batch (the end-of-shard checks)
        if delta:
            yield {_STATS_KEY: (worker, stats.snapshot(), delta)}


class _LoaderBase:
    """One DataLoader for the loader's life: with workers, they persist from epoch to epoch."""

    def __init__(self, stream_kwargs: dict[str, Any], num_workers: int, pin_memory: bool = False,
                 prefetch_factor: int | None = None) -> None:
        self._kwargs, self.num_workers = stream_kwargs, num_workers
        self._stream = _Stream(**stream_kwargs, plan=_plan().share_memory_())
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self._dataloader: torch.utils.data.DataLoader | None = None
        self._worker_stats: dict[int, dict[str, Any]] = {}
        self._counts: Counter[str] = Counter()

    @property
    def dataloader(self) -> torch.utils.data.DataLoader:
        """The underlying DataLoader (made on first use; persistent workers when num_workers > 0)."""
        if self._dataloader is None:
            extra: dict[str, Any] = {}
            if self.num_workers > 0:
                extra["persistent_workers"] = True
                if self.prefetch_factor is not None:
                    extra["prefetch_factor"] = self.prefetch_factor
            self._dataloader = torch.utils.data.DataLoader(self._stream, batch_size=None, num_workers=self.num_workers,
                                                           pin_memory=self.pin_memory, **extra)
        return self._dataloader

    def _start(self, epoch: int, salt: int, skip: int) -> Iterator[dict[str, Any]]:
        """A new stream: the DataLoader's iterator, its workers told the plan first."""
        self._stream.plan.copy_(_plan(epoch, salt, skip))
        self._worker_stats = {}
        return iter(self.dataloader)

    def _batches(self, items: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        # Never stored on self: a generator holding self would make a reference cycle, and a
        # DataLoader iterator freed by the cycle collector can wait 5 s per worker to stop.
        for item in items:
            worker, snap, delta = item.pop(_STATS_KEY)
            self._worker_stats[worker] = snap  # Cumulative per worker and epoch: keep the latest.
            self._counts.update(delta)
            if item:  # else the worker's last counts, carried without a batch
                item["output_size"] = tuple(item["output_size"])  # DataLoader turns tuples into lists.
                yield item

    def close(self) -> None:
        """Stop the workers now (call at the end of training); the loader can be iterated again."""
        self._dataloader = None

    @property
    def stats(self) -> dict[str, Any]:
        """Samples used and skipped since the current stream started, summed over workers
        (an epoch without workers; the run, or since the resume, with them; a validation pass)."""
        reasons: Counter[str] = Counter()
        for snap in self._worker_stats.values():
            reasons.update(snap["reasons"])
        return {"samples": sum(s["samples"] for s in self._worker_stats.values()),
                "skipped": sum(s["skipped"] for s in self._worker_stats.values()),
                "reasons": dict(reasons),
                "recent": [r for s in self._worker_stats.values() for r in s["recent"]]}

    @property
    def counts(self) -> dict[str, int]:
        """What this rank's loader read, used and skipped since it was built, summed over its
        workers, as flat ``data/...`` counters (see :mod:`.read_counts`; sum ranks with
        :func:`.read_counts.reduce_counts`).  Counted as batches are consumed."""
        return dict(sorted(self._counts.items()))


class TrainLoader(_LoaderBase):
    """An endless-data loader with epochs of exactly ``epoch_length`` batches and resume.

    Without workers each epoch is a stream of its own, seeded by the epoch.  With workers one
    stream, started once, runs through all epochs (each epoch takes the next
    ``epoch_length`` batches): workers never restart or refill their shuffle buffers at an
    epoch end, which on small sets cost more than the training steps.

    ``state_dict()`` records the epoch and the batches yielded in it.  Resume via
    ``load_state_dict``: with ``num_workers == 0`` the stream of that epoch is regenerated
    and the consumed batches dropped, so the following batches equal an uninterrupted
    run's (cost: re-reading those batches).  With workers the interleaving cannot be
    replayed cheaply, so a new stream starts, seeded with the resume step as salt: the rest
    of the epoch is a fresh shuffle of the data, never a replay of its first samples, and
    still ends after ``epoch_length`` batches in total.  Samples are counted as yielded: a
    trainer that prefetches ahead says what it consumed with :meth:`mark_trained`
    (DeftOmniModule does, with every batch).
    """

    def __init__(self, stream_kwargs: dict[str, Any], *, epoch_length: int, num_workers: int,
                 pin_memory: bool = False, prefetch_factor: int | None = None):
        super().__init__(stream_kwargs, num_workers, pin_memory, prefetch_factor)
        self.epoch_length = int(epoch_length)
        self.epoch, self.batches_in_epoch = 0, 0
        self._started, self._resume = False, False
        self._trained: int | None = None
        self._continuing: Iterator[dict[str, Any]] | None = None

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
        if start < self.epoch_length:
            for batch in self._epoch_source(start):
                self.batches_in_epoch += 1
                yield batch
                if self.batches_in_epoch >= self.epoch_length:
                    break
        if self.batches_in_epoch < self.epoch_length:
            raise RuntimeError(f"the data stream ended after {self.batches_in_epoch} of "
                               f"{self.epoch_length} batches in epoch {self.epoch}: no usable samples "
                               f"left (stats: {self.stats}); check the shards and loader.stats")

    def _epoch_source(self, start: int) -> Iterator[dict[str, Any]]:
        if self.num_workers == 0:  # a fresh stream per epoch: exact resume by fast-forward
            return self._batches(self._start(self.epoch, 0, start))
        if self._continuing is None:  # one stream for this and every following epoch
            self._continuing = self._start(self.epoch, start, 0)
        return self._batches(self._continuing)

    def close(self) -> None:
        self._continuing = None
        super().close()

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
        self._continuing = None


class ValLoader(_LoaderBase):
    """One deterministic pass, no shuffling, no condition dropout, last batches kept."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from self._batches(self._start(0, 0, 0))


def build_train_loader(shard_sets: Iterable[Any], processor: OmniGenTrainProcessor, batch_size: int,
                       num_workers: int = 0, epoch_length_batches: int | None = None, *,
                       resampled: bool = False, split: str = "auto", shardshuffle: bool = True,
                       shuffle_buffer: int = 256, seed: int = 0, strict: bool = False,
                       bucket_sizes: Sequence[tuple[int, int]] | None = None,
                       rank: int | None = None, world_size: int | None = None,
                       max_open_buckets: int = 8, max_consecutive_bad: int = 1000,
                       pin_memory: bool = False, prefetch_factor: int | None = None) -> TrainLoader:
    """The training loader; see :class:`TrainLoader` and the module docstring.

    ``shard_sets``: entries accepted by :func:`as_sources` (a directory with a manifest, a
    brace pattern, a url list or a ShardSet, with an optional sampling weight).
    ``epoch_length_batches`` defaults to the manifests' total samples over
    ``batch_size * world_size``.  ``bucket_sizes`` overrides the processor's.  ``split``
    ("auto", "shard", "sample") says how a set is shared among ranks x workers when not
    ``resampled`` (:func:`.sources.plan_modes`): "auto" splits small sets by sample, so any
    set works on any number of ranks and workers.  ``strict``: a bad sample, an unreadable or
    truncated shard, or one that yields fewer samples than its manifest lists is an error.
    """
    sources = as_sources(shard_sets)
    rank, world_size = resolve_rank(rank, world_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    modes = plan_modes(sources, rank=rank, world_size=world_size, num_workers=num_workers, resampled=resampled,
                       split=split)
    if epoch_length_batches is None:
        totals = [src.shards.total for src in sources]
        if any(t is None for t in totals):
            raise ValueError("epoch_length_batches is required when a shard set has no manifest counts")
        epoch_length_batches = max(1, sum(totals) // (batch_size * world_size))  # type: ignore[arg-type]
    kwargs = dict(sources=sources, modes=modes, processor=processor, batch_size=batch_size, rank=rank,
                  world_size=world_size, train=True, shardshuffle=shardshuffle, shuffle_buffer=shuffle_buffer,
                  seed=seed, strict=strict, bucket_sizes=bucket_sizes, max_open_buckets=max_open_buckets,
                  max_consecutive_bad=max_consecutive_bad)
    return TrainLoader(kwargs, epoch_length=epoch_length_batches, num_workers=num_workers,
                       pin_memory=pin_memory, prefetch_factor=prefetch_factor)


def build_val_loader(shard_set: Any, processor: OmniGenTrainProcessor, batch_size: int,
                     num_workers: int = 0, *, split_by_rank: bool = False, rank: int | None = None,
                     world_size: int | None = None, strict: bool = False,
                     bucket_sizes: Sequence[tuple[int, int]] | None = None) -> ValLoader:
    """One pass over a held-out set in file order.  By default every rank reads all of it
    (identical metrics on every rank); ``split_by_rank=True`` gives each rank its share."""
    sources = as_sources([shard_set])
    rank, world_size = resolve_rank(rank, world_size) if split_by_rank else (0, 1)
    modes = plan_modes(sources, rank=rank, world_size=world_size, num_workers=num_workers, resampled=False,
                       split="auto")
    kwargs = dict(sources=sources, modes=modes, processor=processor, batch_size=batch_size, rank=rank,
                  world_size=world_size, train=False, shardshuffle=False, shuffle_buffer=0, seed=0,
                  strict=strict, bucket_sizes=bucket_sizes, max_open_buckets=8, max_consecutive_bad=10**9)
    return ValLoader(kwargs, num_workers)
