"""Reading one shard set for one reader (a rank's DataLoader worker), with its accounting.

A set is shared among the R = ranks x workers readers in one of three ways (see
:mod:`.sources` for how the way is chosen):

* ``"shard"``: reader i reads shards i, i + R, ... (each shard once per pass);
* ``"sample"``: every reader reads every shard and keeps the samples at positions p with
  (shard index + p) % R == i: for sets with fewer shards than readers (a personalisation
  set is often one shard), so that no reader starves and each sample is still used once
  per pass, at the cost of every reader scanning the (few) shards' bytes;
* ``"resampled"``: every reader draws shards at random, with replacement, without end.

Every complete read of a shard is checked: a local tar that ends inside a member, or without
its end-of-archive blocks, is reported as truncated, and the samples found are compared with
the count the manifest lists for it.  Problems are logged with the shard's name and counted
(:mod:`.read_counts`); with ``strict`` they raise :class:`ShardReadError`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from .read_counts import (
    MISSING,
    SAMPLES_READ,
    SHARD_ERRORS,
    SHARDS_READ,
    SHARDS_SHORT,
    SHARDS_TRUNCATED,
    ReadCounts,
)

log = logging.getLogger("deft_omni.data.loader")
MODES = ("shard", "sample", "resampled")


class ShardReadError(RuntimeError):
    """A shard that is unreadable, truncated, or holds fewer samples than its manifest lists."""


def tar_problem(path: str) -> str | None:
    """Why the local tar at `path` is incomplete, or None (headers only: no member is read)."""
    size = os.path.getsize(path)
    end = 0
    with open(path, "rb") as fh:
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            for member in tar:
                end = member.offset_data + member.size
                if end > size:
                    return f"member {member.name!r} needs {end} bytes but the file has {size}"
        fh.seek(tar.offset)
        if fh.read(1024) != bytes(1024):
            return f"no end-of-archive blocks after the last member (at byte {end} of {size})"
    return None


_CHECKED: dict[tuple[str, int, int], str | None] = {}
_WARNED: set[str] = set()


def _warn_once(url: str, message: str) -> None:
    """Each damaged shard is named once per process, not once per pass over it (the counts
    keep counting every read)."""
    if url not in _WARNED:
        _WARNED.add(url)
        log.warning(message)


def _checked_problem(url: str) -> str | None:
    """tar_problem for local files, remembered per (path, size, mtime); None for remote urls."""
    try:
        st = os.stat(url)
    except OSError:
        return None  # not a local path, or unreadable: the open reports it
    key = (url, st.st_size, st.st_mtime_ns)
    if key not in _CHECKED:
        try:
            _CHECKED[key] = tar_problem(url)
        except (OSError, tarfile.TarError) as exn:
            _CHECKED[key] = f"not a readable tar ({exn})"
    return _CHECKED[key]


@dataclass
class ShardReader:
    """The raw samples one reader takes from one set; iterate :meth:`passes` or :meth:`one_pass`."""

    urls: list[str]
    counts: list[int | None]  # the manifest's samples per shard (None: unknown)
    mode: str
    reader: int  # this reader's index among `readers` (rank * workers + worker)
    readers: int
    rank: int
    world_size: int
    worker: int
    num_workers: int
    shuffle: bool
    seed: int
    strict: bool
    stats: ReadCounts

    def passes(self, per_pass: Callable[[Iterator[Any]], Iterator[Any]] = iter) -> Iterator[dict[str, Any]]:
        """Samples without end: pass after pass (a fresh shard order each), or resampled draws.

        ``per_pass`` wraps each pass (a sample shuffle buffer, so samples mix within a pass
        and each is used once per pass).  Ends only if a whole pass yields nothing (no shard,
        or nothing readable, for this reader)."""
        if self.mode == "resampled":
            rng = random.Random(self.seed)
            draws = (self._read(rng.randrange(len(self.urls))) for _ in itertools.count())
            yield from per_pass(itertools.chain.from_iterable(draws))
            return
        n = 0
        while True:
            got = 0
            for sample in per_pass(self.one_pass(n)):
                got += 1
                yield sample
            if got == 0:
                return
            n += 1

    def one_pass(self, number: int = 0) -> Iterator[dict[str, Any]]:
        order = self._mine()
        if self.shuffle:
            random.Random(self.seed + 7919 * number).shuffle(order)
        for index in order:
            yield from self._read(index)

    def _mine(self) -> list[int]:
        if self.mode == "sample":
            return list(range(len(self.urls)))
        by_rank = list(range(len(self.urls)))[self.rank::self.world_size]
        return by_rank[self.worker::self.num_workers]

    def _read(self, index: int) -> Iterator[dict[str, Any]]:
        url, expected = self.urls[index], self.counts[index]

        def handler(exn: Exception) -> bool:
            if self.strict:
                raise ShardReadError(f"shard {url} is unreadable: {exn}") from exn
            self.stats.add(SHARD_ERRORS)
            _warn_once(url, f"shard {url}: unreadable data, the rest of the shard is skipped: {exn!r}")
            return True

        truncated = _checked_problem(url)
        if truncated is not None and self.strict:
            raise ShardReadError(f"shard {url} is truncated or damaged: {truncated}. Re-run the converter "
                                 f"that wrote it (or copy it again).")
        found = 0
        try:
            stream = gopen(url)
        except Exception as exn:  # noqa: BLE001 - any opener error is this shard's problem
            handler(exn)
            self._finish(index, url, expected, found, truncated)
            return
        with contextlib.closing(stream):  # also when the consumer stops mid-shard
            files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
            for sample in group_by_keys(files, handler=handler):
                found += 1
                if self.mode != "sample" or (index + found - 1) % self.readers == self.reader:
                    self.stats.add(SAMPLES_READ)
                    yield sample
        self._finish(index, url, expected, found, truncated)

    def _finish(self, index: int, url: str, expected: int | None, found: int, truncated: str | None) -> None:
        # In "sample" mode every reader scans the whole shard: one of them (the shard's
        # owner) counts the shard and its losses, so that sums over readers stay true.
        accounts = self.mode != "sample" or index % self.readers == self.reader
        if accounts:
            self.stats.add(SHARDS_READ)
            self.stats.add(SHARDS_TRUNCATED, int(truncated is not None))
        short = expected is not None and found < expected
        if short:
            if accounts:
                self.stats.add(SHARDS_SHORT)
                self.stats.add(MISSING, expected - found)
            message = (f"shard {url} yielded {found} of the {expected} samples its manifest lists"
                       f"{f' (truncated: {truncated})' if truncated else ''}: "
                       f"{expected - found} samples are lost. Re-run the converter that wrote it.")
            if self.strict:
                raise ShardReadError(message)
            if accounts:
                _warn_once(url, message)
        elif truncated is not None and accounts:
            _warn_once(url, f"shard {url} is truncated or damaged ({truncated}); {found} samples were read from it")


def make_reader(urls: list[str], counts: list[int | None], mode: str, *, rank: int, world_size: int,
                worker: int, num_workers: int, shuffle: bool, seed: int, strict: bool,
                stats: ReadCounts) -> ShardReader:
    if mode not in MODES:
        raise ValueError(f"unknown shard split mode {mode!r}; choose one of {MODES}")
    num_workers = max(1, num_workers)
    return ShardReader(urls, counts, mode, rank * num_workers + worker, world_size * num_workers, rank,
                       world_size, worker, num_workers, shuffle, seed, strict, stats)
