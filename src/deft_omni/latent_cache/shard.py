"""Encode one shard: read its samples, fit every image as the processor does, run the VAE on
batches of one size, and write the samples again with ``latents.safetensors`` (and thumbnails in
place of the images with ``drop_pixels``), atomically."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..core.atomic import atomic_path
from ..core.dtypes import resolve_dtype
from ..data.cached_latents import (
    LATENTS_MEMBER,
    THUMB_RE,
    LatentSlot,
    encode_record,
    make_thumbnail,
    thumb_member,
)
from ..data.errors import SampleError
from ..data.fitting import fit_geometry, fit_image
from ..data.images import PIL_FORMATS, encode_image
from ..data.processor import image_to_tensor
from ..data.schema import INPUT_FIELD_RE, OUTPUT_FIELD, OUTPUT_MASK_MEMBER, parse_sample
from ..model.latents import LatentEncoder

# Samples held at once: enough for full VAE batches of every common size, bounded in memory.
WINDOW_BATCHES = 4


@dataclass(frozen=True)
class ShardJob:
    """One source shard and where its encoded copy goes (picklable, for worker processes)."""

    src: str
    dst: str
    name: str
    expected: Optional[int]  # the source manifest's sample count


@dataclass(frozen=True)
class EncodeOptions:
    fit: dict  # fit_settings(): max_image_side, size_multiple, bucket_sizes
    dtype: str
    drop_pixels: bool
    thumbnail_side: int
    batch_size: int
    fingerprint: str


@dataclass
class _Pending:
    raw: dict[str, Any]
    members: dict[str, str]  # slot -> member name of its stored image
    pixels: dict[str, torch.Tensor]  # slot -> (3, H, W), fitted
    geometry: dict[str, tuple]  # slot -> (stored (w, h), resize, crop)
    thumbs: dict[str, Any] = field(default_factory=dict)  # slot -> PIL thumbnail
    posterior: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _slot_members(raw: dict[str, Any]) -> dict[str, str]:
    members = {}
    for name in raw:
        ext = name.rsplit(".", 1)[-1]
        if ext not in PIL_FORMATS:
            continue
        if name.split(".", 1)[0] == OUTPUT_FIELD and name != OUTPUT_MASK_MEMBER:
            members["output"] = name
        elif (m := INPUT_FIELD_RE.match(name)) is not None:
            members[f"input_{int(m.group(1))}"] = name
    return members


def _prepare(raw: dict[str, Any], opts: EncodeOptions) -> _Pending:
    """Parse and fit one raw sample (a SampleError says why it cannot be encoded)."""
    # A set encoded before is encoded again from its pixels: its old latents and thumbnails go.
    raw = {k: v for k, v in raw.items() if k != LATENTS_MEMBER and not THUMB_RE.match(k)}
    sample = parse_sample(raw)
    if sample.latents is not None or sample.thumbnails:
        raise SampleError("the sample has no pixels to encode", key=sample.key, url=sample.url, field="output")
    fit = opts.fit
    images = {"output": sample.output, **{f"input_{k}": img for k, img in enumerate(sample.inputs, start=1)}}
    pending = _Pending(raw, _slot_members(raw), {}, {})
    for slot, img in images.items():
        buckets = fit["bucket_sizes"] if slot == "output" else None
        try:
            resize, crop = fit_geometry(*img.size, fit["max_image_side"], fit["size_multiple"], buckets)
        except ValueError as exn:
            raise SampleError(str(exn), key=sample.key, url=sample.url, field=slot,
                              fix="drop tiny images in the converter") from exn
        fitted = fit_image(img, fit["max_image_side"], fit["size_multiple"], buckets)
        pending.pixels[slot] = image_to_tensor(fitted)
        pending.geometry[slot] = (img.size, resize, crop)
        if opts.drop_pixels:
            pending.thumbs[slot] = make_thumbnail(img, opts.thumbnail_side)
    return pending


def _encode_window(vae: nn.Module, window: list[_Pending], batch_size: int) -> None:
    """Posteriors of every image of the window, batched by size (the order within a size is the
    samples' order, so the result does not depend on the number of workers)."""
    groups: dict[tuple[int, int], list[tuple[_Pending, str]]] = defaultdict(list)
    for item in window:
        for slot, pixels in item.pixels.items():
            groups[tuple(pixels.shape[-2:])].append((item, slot))
    device = next(vae.parameters()).device
    for places in groups.values():
        for i in range(0, len(places), batch_size):
            chunk = places[i:i + batch_size]
            pixels = torch.stack([item.pixels[slot] for item, slot in chunk]).to(device)
            mean, std = LatentEncoder().posterior(vae, pixels)
            for j, (item, slot) in enumerate(chunk):
                item.posterior[slot] = (mean[j].cpu(), std[j].cpu())


def _sample_out(item: _Pending, opts: EncodeOptions) -> dict[str, Any]:
    dtype = resolve_dtype(opts.dtype)
    slots = []
    for slot, (stored, resize, crop) in item.geometry.items():
        mean, std = item.posterior[slot]
        slots.append(LatentSlot(slot, tuple(stored), resize, crop, mean.to(dtype), std.to(dtype)))
    key = item.raw["__key__"]
    out = {k: v for k, v in item.raw.items() if not k.startswith("__")}
    out["__key__"] = key
    if opts.drop_pixels:
        for slot, member in item.members.items():
            ext = member.rsplit(".", 1)[-1]
            del out[member]
            out[thumb_member(slot, ext)] = encode_image(item.thumbs[slot], ext, key, thumb_member(slot, ext))
    out[LATENTS_MEMBER] = encode_record(slots, opts.fingerprint)
    return out


def _raw_samples(url: str, errors: list[str]) -> Iterator[dict[str, Any]]:
    from webdataset.gopen import gopen
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def handler(exn: Exception) -> bool:
        errors.append(f"{type(exn).__name__}: {exn}")
        return False  # stop reading this shard: what follows a damaged member is not trusted

    stream = gopen(url)
    with contextlib.closing(stream):
        files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        yield from group_by_keys(files, handler=handler)


def encode_shard(vae: nn.Module, job: ShardJob, opts: EncodeOptions,
                 progress: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Encode ``job.src`` into ``job.dst``; returns ``{"file", "samples", "images", "output_masks",
    "skipped"}`` (skipped: ``{"key" or "file", "reason"}`` records for the manifest)."""
    import webdataset as wds

    result: dict[str, Any] = {"file": job.name, "samples": 0, "images": 0, "output_masks": 0, "skipped": []}
    errors: list[str] = []
    read = 0
    window: list[_Pending] = []

    def flush(sink: Any) -> None:
        _encode_window(vae, window, opts.batch_size)
        for item in window:
            sink.write(_sample_out(item, opts))
            result["samples"] += 1
            result["images"] += len(item.pixels)
            result["output_masks"] += OUTPUT_MASK_MEMBER in item.raw
        if progress is not None:
            progress(len(window))
        window.clear()

    with atomic_path(job.dst) as tmp, wds.TarWriter(str(tmp), mtime=0, encoder=False) as sink:
        for raw in _raw_samples(job.src, errors):
            read += 1
            try:
                window.append(_prepare(raw, opts))
            except SampleError as exn:
                reason = exn.reason + (f" (fix: {exn.fix})" if exn.fix else "")
                result["skipped"].append({"key": str(raw.get("__key__")), "reason": f"not encoded: {reason}"})
                if progress is not None:
                    progress(1)
            if len(window) >= WINDOW_BATCHES * opts.batch_size:
                flush(sink)
        flush(sink)
    if errors:
        result["skipped"].append({"file": job.name, "reason": f"unreadable shard after {read} samples: {errors[0]}"})
    if job.expected is not None and read < job.expected:
        result["skipped"].append({"file": job.name, "reason": f"missing_from_shard: {job.expected - read} of the "
                                                              f"{job.expected} samples its manifest lists"})
    return result


__all__ = ["EncodeOptions", "ShardJob", "encode_shard"]
