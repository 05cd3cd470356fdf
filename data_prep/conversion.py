"""One converter run: :class:`Conversion` ties the output folder, the shard writer, the ordered
workers, ``--strict``, the progress bar and the summary together.

Every converter follows one shape::

    parser = make_parser("insdet objects -> shards")
    ...converter-specific arguments...
    args = parser.parse_args(argv)
    jobs = [...]                      # small picklable descriptions, in a fixed order
    with Conversion(args, source="insdet_objects", options={...}) as conv:
        conv.run(build_fn, jobs)      # build_fn(job) -> [sample dict | Skip, ...]

Every skip is recorded in the manifest (``ShardSetWriter.skip``) and counted by reason in the
summary line printed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deft_omni.data.schema import IMAGE_EXTS, MANIFEST_NAME, OUTPUT_MASK_MEMBER, SampleError, ShardSetWriter

from .errors import ConversionError, StrictError
from .output import output_folder
from .pool import ordered_map, resolve_workers


@dataclass(frozen=True)
class Skip:
    """An input dropped by a converter, with the reason recorded in the manifest."""

    key: str
    reason: str


def count_images(sample: Mapping[str, Any]) -> int:
    """The sample's output and input images (its mask is not counted)."""
    return sum(1 for name in sample
               if name not in ("__key__", OUTPUT_MASK_MEMBER) and name.rsplit(".", 1)[-1] in IMAGE_EXTS)


@dataclass
class Stats:
    samples: int = 0
    images: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)  # e.g. rows filtered out: counted, not errors
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def reason_class(reason: str) -> str:
    """Group skip reasons for the summary: reasons read 'class: details'."""
    return reason.split(":", 1)[0].strip()[:60] or "unknown"


class Conversion:
    """One converter run: atomic output folder, ShardSetWriter, ordered workers, strictness,
    progress and summary.  Use as a context manager; call :meth:`run` (or :meth:`write` /
    :meth:`skip` yourself) inside."""

    def __init__(self, args: argparse.Namespace, *, source: str, options: Mapping[str, Any] | None = None,
                 prefix: str = "shard", log: Callable[[str], None] | None = None):
        self.args = args
        self.source = source
        self.options = {k: v for k, v in dict(options or {}).items()}
        self.prefix = prefix
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.stats = Stats()
        self._output = output_folder(args.out, args.overwrite, log=self.log)
        self._writer: ShardSetWriter | None = None
        self._keys: set[str] = set()
        self._bar = None
        self.tmp_dir: str | None = None
        self.out_dir = os.path.abspath(args.out)

    # -- context

    def __enter__(self) -> Conversion:
        self.tmp_dir = self._output.__enter__()
        try:
            self._writer = ShardSetWriter(self.tmp_dir, source=self.source, prefix=self.prefix,
                                          maxcount=self.args.maxcount, maxsize=self.args.maxsize,
                                          options=self.options)
        except BaseException as exn:
            self._output.__exit__(type(exn), exn, exn.__traceback__)
            raise
        if not getattr(self.args, "quiet", False):
            from tqdm import tqdm

            self._bar = tqdm(unit="img", unit_scale=False, desc=self.source, dynamic_ncols=True,
                             mininterval=0.5, smoothing=0.1, file=sys.stderr)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bar is not None:
            self._bar.close()
        if exc_type is not None:
            self._writer.close(write_manifest_file=False)
            self._output.__exit__(exc_type, exc, tb)  # Removes the staging folder.
            return
        try:
            if self.stats.samples == 0:
                self._writer.close(write_manifest_file=False)
                raise ConversionError(self._nothing_message())
            self._writer.options["stats"] = self._stats_dict()
            self._writer.close()  # Writes manifest.json: the folder is complete.
        except BaseException as exn:
            self._output.__exit__(type(exn), exn, exn.__traceback__)
            raise
        self._output.__exit__(None, None, None)  # Moves the folder into place.
        self.log(self.summary())

    # -- writing

    def write(self, sample: Mapping[str, Any]) -> None:
        key = sample["__key__"]
        if key in self._keys:
            self.skip(key, f"duplicate key {key!r} (two inputs map to the same sample key)")
            return
        self._keys.add(key)
        self._writer.write(sample)
        n = count_images(sample)
        self.stats.samples += 1
        self.stats.images += n
        if self._bar is not None:
            self._bar.update(n)
            if self.stats.samples % 25 == 1:
                self._bar.set_postfix(samples=self.stats.samples, skipped=self.stats.skipped, refresh=False)

    def skip(self, key: str, reason: str) -> None:
        if self.args.strict:
            raise StrictError(f"--strict: {key}: {reason}")
        self._writer.skip(key, reason)
        self.stats.skipped += 1
        self.stats.reasons[reason_class(reason)] += 1

    def note(self, what: str, n: int = 1) -> None:
        """Count inputs left out on purpose (filters), reported in the summary and manifest."""
        self.stats.notes[what] += n

    def handle(self, item: Any) -> None:
        if isinstance(item, Skip):
            self.skip(item.key, item.reason)
        elif isinstance(item, Mapping):
            self.write(item)
        elif isinstance(item, (list, tuple)):
            for sub in item:
                self.handle(sub)
        elif item is None:
            return
        else:
            raise TypeError(f"a build function returned {type(item).__name__}; expected a sample dict or Skip")

    def run(self, build: Callable[[Any], Any], jobs: Iterable[Any], *,
            initializer: Callable[..., None] | None = None, initargs: tuple = (),
            chunk: int | None = None) -> Stats:
        """Build every job (in worker processes with --workers) and write the results in order.
        ``chunk``: jobs per inter-process message (default: up to 8, fewer for short lists
        so that every worker gets some; 1 for heavy jobs such as 8k scene photos)."""
        limit = getattr(self.args, "limit", None)
        if limit:
            from itertools import islice

            jobs = list(islice(jobs, limit))
        if chunk is None:
            chunk = 8
            if hasattr(jobs, "__len__"):
                chunk = max(1, min(8, len(jobs) // (4 * resolve_workers(self.args.workers))))
        for result in ordered_map(build, jobs, self.args.workers, initializer=initializer, initargs=initargs,
                                  chunk=chunk):
            self.handle(result)
        return self.stats

    # -- reporting

    def _stats_dict(self) -> dict[str, Any]:
        return {"samples": self.stats.samples, "images": self.stats.images, "skipped": self.stats.skipped,
                "skip_reasons": dict(self.stats.reasons), "left_out": dict(self.stats.notes)}

    def _nothing_message(self) -> str:
        msg = f"no samples were written to {self.args.out!r}"
        if self.stats.skipped:
            top = ", ".join(f"{r} ({n})" for r, n in self.stats.reasons.most_common(3))
            msg += f": all {self.stats.skipped} input(s) were skipped: {top}"
        if self.stats.notes:
            msg += "; left out: " + ", ".join(f"{k} ({v})" for k, v in self.stats.notes.items())
        return msg + "; nothing was left in place"

    def summary(self) -> str:
        s = self.stats
        shards = len(self._writer.counts) if self._writer else 0
        text = (f"{self.source}: wrote {s.samples} samples ({s.images} images) in {shards} shard(s) to "
                f"{self.out_dir} in {s.seconds:.1f}s ({s.images_per_s:.1f} images/s)")
        if s.skipped:
            text += f"; skipped {s.skipped} (" + ", ".join(f"{r}: {n}" for r, n in s.reasons.most_common()) + \
                    f"; listed in {MANIFEST_NAME})"
        if s.notes:
            text += "; left out: " + ", ".join(f"{k}: {v}" for k, v in s.notes.items())
        return text


def skip_from(key: str, exn: Exception, prefix: str = "") -> Skip:
    """A Skip for an ImageError/SampleError/OSError, with an optional location prefix."""
    reason = exn.reason if isinstance(exn, SampleError) else str(exn)
    if isinstance(exn, SampleError) and exn.fix:
        reason += f" (fix: {exn.fix})"
    return Skip(key, f"{prefix}{reason}")
