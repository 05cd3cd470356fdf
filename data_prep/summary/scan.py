"""One streaming pass over shard sets: what a data summary counts, in memory that grows only with
the number of distinct images (for the duplicate check) and the samples kept for the sheet."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from deft_omni.data.cached_latents import LATENTS_MEMBER, THUMB_RE, record_header
from deft_omni.data.schema import (
    IMAGE_EXTS,
    INPUT_FIELD_RE,
    OUTPUT_FIELD,
    OUTPUT_MASK_MEMBER,
    SampleError,
    ShardSet,
    check_image_tags,
)

from ..conversion import reason_class

SPLITS = ("train", "val", "validation", "test", "prior")
LENGTH_BINS = (8, 16, 32, 64, 128, 256, 512)
HEADER_FORMATS = ("PNG", "JPEG", "WEBP")  # the schema's formats: PIL need not probe the others


@dataclass
class SetInfo:
    """One shard set as its manifest describes it."""

    path: str
    source: str
    split: str
    shards: int
    samples: int | None  # from the manifest; None without one
    skipped: Counter = field(default_factory=Counter)  # by reason class, from the manifest
    output_masks: int = 0
    latents: dict | None = None  # the manifest's cached-latents block, if the set has one


@dataclass
class Kept:
    """A sample kept for the contact sheet (encoded bytes, decoded only when drawn)."""

    key: str
    instruction: str
    output: bytes
    inputs: list[bytes]


@dataclass
class Summary:
    sets: list[SetInfo] = field(default_factory=list)
    samples: int = 0
    by_task: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    by_split: Counter = field(default_factory=Counter)
    output_sizes: Counter = field(default_factory=Counter)  # (w, h)
    buckets: Counter = field(default_factory=Counter)  # (w, h) as trained, or "too small"
    lengths: Counter = field(default_factory=Counter)  # bin label
    length_unit: str = "words"
    inputs: Counter = field(default_factory=Counter)  # input images per sample
    masks: int = 0
    latents: int = 0  # samples with cached latents
    thumbnails: int = 0  # of those, samples whose pixels were dropped (thumbnails stand in)
    images: int = 0
    duplicates: list[list[str]] = field(default_factory=list)  # groups of "key member" places
    mismatches: list[tuple[str, str, str]] = field(default_factory=list)  # (key, shard, reason)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    kept: list[Kept] = field(default_factory=list)
    seconds: float = 0.0


def fitted_size(w: int, h: int, max_side: int, multiple: int = 16,
                bucket_sizes: Sequence[tuple[int, int]] | None = None) -> tuple[int, int] | None:
    """The (w, h) deft_omni.data.processor.fit_image gives a w x h image (None: a side below
    ``multiple``), computed without touching pixels; tests hold the two to the same results."""
    if bucket_sizes:
        aspect = math.log(w / h)
        bh, bw = min(bucket_sizes, key=lambda s: (abs(math.log(s[1] / s[0]) - aspect), -s[0] * s[1]))
        return bw, bh
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
    cw, ch = (w // multiple) * multiple, (h // multiple) * multiple
    return None if cw == 0 or ch == 0 else (cw, ch)


def length_bin(n: int) -> str:
    low = 0
    for high in LENGTH_BINS:
        if n < high:
            return f"{low}-{high - 1}"
        low = high
    return f"{LENGTH_BINS[-1]}+"


def resolve_sets(specs: Sequence[str]) -> list[tuple[SetInfo, ShardSet]]:
    out = []
    for spec in specs:
        shards = ShardSet.resolve(spec)
        missing = [u for u in shards.urls if ":" not in u.split("/", 1)[0] and not os.path.exists(u)]
        if missing or not shards.urls:
            raise FileNotFoundError(f"{spec!r}: no such shard folder or tar file ({missing[0] if missing else spec}); "
                                    "give shard folders holding manifest.json, brace patterns or tar files")
        manifest = shards.manifest or {}
        folder = shards.root or os.path.dirname(spec)
        split = (manifest.get("options") or {}).get("split")
        if not isinstance(split, str):
            name = os.path.basename(os.path.normpath(folder))
            split = name if name in SPLITS else "-"
        info = SetInfo(path=spec, source=str(manifest.get("source", "-")), split=split, shards=len(shards),
                       samples=shards.total, output_masks=int(manifest.get("output_masks", 0)),
                       latents=manifest.get("latents"),
                       skipped=Counter(reason_class(s.get("reason", "")) for s in manifest.get("skipped", [])))
        out.append((info, shards))
    return out


def _raw_samples(url: str, on_error: Callable[[str, str], None]) -> Iterator[dict[str, Any]]:
    import webdataset as wds

    try:
        yield from wds.WebDataset([url], shardshuffle=False, empty_check=False)
    except Exception as exn:  # noqa: BLE001 - a truncated or unreadable tar: name it, read on
        on_error(url, f"unreadable shard ({type(exn).__name__}: {exn})")


class Scanner:
    """Feed raw webdataset samples (``add``); the counts accumulate in ``summary``."""

    def __init__(self, *, max_side: int, bucket_sizes: Sequence[tuple[int, int]] | None = None,
                 count_tokens: Callable[[str], int] | None = None, keep: int = 24, seed: int = 0):
        self.summary = Summary(length_unit="tokens" if count_tokens else "words")
        self._fit = functools.lru_cache(maxsize=65536)(
            lambda w, h: fitted_size(w, h, max_side, bucket_sizes=bucket_sizes))
        self._count = count_tokens or (lambda text: len(text.split()))
        self._keep, self._rng = keep, random.Random(seed)
        self._first: dict[bytes, str] = {}  # image digest -> first place seen
        self._dups: dict[bytes, list[str]] = {}

    def scan(self, sets: Sequence[tuple[SetInfo, ShardSet]], progress: Callable[[int], None] | None = None) -> Summary:
        started = time.perf_counter()
        s = self.summary
        for info, shards in sets:
            s.sets.append(info)
            for url in shards.urls:
                for raw in _raw_samples(url, lambda where, why: s.unreadable.append((where, why))):
                    self.add(raw, info)
                    if progress is not None:
                        progress(1)
        s.duplicates = sorted(self._dups.values(), key=lambda g: (-len(g), g[0]))
        s.seconds = time.perf_counter() - started
        return s

    def add(self, raw: dict[str, Any], info: SetInfo) -> None:
        s = self.summary
        key, url = raw.get("__key__", "?"), raw.get("__url__", "?")
        try:
            meta = json.loads(raw["json"])
            instruction, task = meta["instruction"], meta["task"]
            if not isinstance(instruction, str) or not isinstance(task, str):
                raise TypeError("instruction and task must be strings")
        except Exception as exn:  # noqa: BLE001 - any broken json: count it, read on
            s.unreadable.append((f"{url}: {key}", f"json ({type(exn).__name__}: {exn})"))
            return
        images = {n: v for n, v in raw.items()  # the mask is not an image of the sample
                  if not n.startswith("__") and n != OUTPUT_MASK_MEMBER and n.rsplit(".", 1)[-1] in IMAGE_EXTS}
        outputs = [n for n in images if n.split(".", 1)[0] == OUTPUT_FIELD]
        inputs = sorted((int(m.group(1)), n) for n in images if (m := INPUT_FIELD_RE.match(n)))
        stored = None  # the output's size from the cached latents' record, when the pixels were dropped
        if LATENTS_MEMBER in raw:
            s.latents += 1
            if not outputs:  # --drop-pixels: the thumbnails stand in for the images
                s.thumbnails += 1
                thumbs = {m.group(1): n for n in images if (m := THUMB_RE.match(n))}
                outputs = [thumbs["output"]] if "output" in thumbs else []
                inputs = sorted((int(k.split("_")[1]), n) for k, n in thumbs.items() if k != "output")
                try:
                    slots = {slot["name"]: slot for slot in record_header(raw[LATENTS_MEMBER])["slots"]}
                    stored = tuple(int(v) for v in slots["output"]["stored"])
                except (ValueError, KeyError, TypeError) as exn:
                    s.unreadable.append((f"{url}: {key}", f"{LATENTS_MEMBER} ({type(exn).__name__}: {exn})"))
                    return
        if len(outputs) != 1:
            s.unreadable.append((f"{url}: {key}", f"expected one output image, found {outputs}"))
            return
        s.samples += 1
        s.by_task[task] += 1
        s.by_source[info.source] += 1
        s.by_split[info.split] += 1
        s.inputs[len(inputs)] += 1
        s.masks += OUTPUT_MASK_MEMBER in raw
        s.lengths[length_bin(self._count(instruction))] += 1
        try:
            check_image_tags(instruction, len(inputs), key=key, url=url)
        except SampleError as exn:
            s.mismatches.append((key, url, exn.reason))
        output = images[outputs[0]]
        try:
            with Image.open(io.BytesIO(output), formats=HEADER_FORMATS) as img:
                size = stored or img.size
        except Exception as exn:  # noqa: BLE001 - PIL raises many types
            s.unreadable.append((f"{url}: {key}", f"{outputs[0]} is not a readable image ({exn})"))
        else:
            s.output_sizes[size] += 1
            s.buckets[self._fit(*size) or "too small"] += 1
        for name, data in images.items():
            self._hash(data, f"{key} {name}")
        self._reservoir(key, instruction, output, [images[n] for _, n in inputs])

    def _hash(self, data: bytes, place: str) -> None:
        self.summary.images += 1
        digest = hashlib.blake2b(data, digest_size=16).digest()
        first = self._first.setdefault(digest, place)
        if first is not place:
            self._dups.setdefault(digest, [first]).append(place)

    def _reservoir(self, key: str, instruction: str, output: bytes, inputs: list[bytes]) -> None:
        kept, n = self.summary.kept, self.summary.samples
        if len(kept) < self._keep:
            kept.append(Kept(key, instruction, output, inputs))
        else:
            j = self._rng.randrange(n)
            if j < self._keep:
                kept[j] = Kept(key, instruction, output, inputs)
