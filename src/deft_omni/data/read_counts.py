"""What the data loader read, used and skipped, as flat counters the training side can log.

Counts are made where the reading happens, in DataLoader workers, and cannot be seen from
the main process directly: each batch carries its worker's increments since the previous
batch (``ReadCounts.take_delta``), and the loader adds them up as batches are consumed
(``TrainLoader.counts``).  Across DDP ranks, :func:`reduce_counts` sums them (every rank must
call it); :func:`merge_counts` adds plain dicts.

Keys (all numbers, summed across workers and ranks):

* ``data/samples_read``: samples taken from the shards by this reader;
* ``data/samples_used``: samples that parsed and processed, i.e. reached a batch;
* ``data/skipped/<reason>``: samples dropped, by reason: the schema or processor field at
  fault (``output.png``, ``json.instruction``, ...), or ``missing_from_shard`` for samples a
  shard's manifest lists that its read did not yield (a truncated or damaged tar);
* ``data/shards_read``: complete reads of a shard (a shard read in each of N passes counts N);
* ``data/shards_truncated``: of those, reads of a tar that ends inside a member or without
  its end-of-archive blocks;
* ``data/shards_short``: of those, reads that yielded fewer samples than the manifest lists;
* ``data/shard_errors``: shard files that could not be opened or read (each event once).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("deft_omni.data.loader")

PREFIX = "data/"
SKIPPED = PREFIX + "skipped/"
SAMPLES_READ = PREFIX + "samples_read"
SAMPLES_USED = PREFIX + "samples_used"
SHARDS_READ = PREFIX + "shards_read"
SHARDS_TRUNCATED = PREFIX + "shards_truncated"
SHARDS_SHORT = PREFIX + "shards_short"
SHARD_ERRORS = PREFIX + "shard_errors"
MISSING = SKIPPED + "missing_from_shard"


class ReadCounts:
    """One reader's counters (cumulative), its recent skips, and the increments not yet sent."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self._sent: Counter[str] = Counter()
        self.consecutive_bad = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=20)

    def add(self, key: str, n: int = 1) -> None:
        self.total[key] += n

    @property
    def samples(self) -> int:
        return self.total[SAMPLES_USED]

    @property
    def skipped(self) -> int:
        return sum(v for k, v in self.total.items() if k.startswith(SKIPPED))

    def bad_sample(self, exn: Exception, key: str | None, url: str | None) -> None:
        reason = getattr(exn, "field", None) or type(exn).__name__
        self.add(SKIPPED + reason)
        self.consecutive_bad += 1
        self.recent.append({"key": key, "url": url, "reason": str(exn)})
        n = self.skipped
        if n <= 20 or n % 100 == 0:
            log.warning("skipping bad sample (%d skipped so far in this worker): %s", n, exn)

    def used(self) -> None:
        self.add(SAMPLES_USED)
        self.consecutive_bad = 0

    def take_delta(self) -> dict[str, int]:
        """The increments since the previous call (what the next batch carries)."""
        delta = {k: v - self._sent[k] for k, v in self.total.items() if v != self._sent[k]}
        self._sent = Counter(self.total)
        return delta

    def snapshot(self) -> dict[str, Any]:
        """The pass summary of ``loader.stats``: samples used and skipped, reasons, recent skips."""
        reasons = {k[len(SKIPPED):]: v for k, v in self.total.items() if k.startswith(SKIPPED) and v}
        return {"samples": self.samples, "skipped": self.skipped, "reasons": reasons, "recent": list(self.recent)}


def merge_counts(*counts: Mapping[str, float]) -> dict[str, float]:
    """Key-wise sums of flat count dicts (e.g. one per rank, gathered by the caller)."""
    out: Counter[str] = Counter()
    for c in counts:
        out.update(dict(c))
    return dict(sorted(out.items()))


def reduce_counts(counts: Mapping[str, float], group: Any = None) -> dict[str, float]:
    """The sums of `counts` over the ranks of `group` (default: the world), on every rank.

    A collective: every rank of the group must call it, at the same point.  Without an
    initialised process group it returns the counts as they are.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return merge_counts(counts)
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, dict(counts), group=group)
    return merge_counts(*gathered)
