"""A shard folder's ``manifest.json``: sample counts per shard (so loaders size epochs without
opening tars), what the converter skipped, how many samples carry an output mask, and, for shards
with cached latents, how they were made (see :mod:`.cached_latents`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ..core.atomic import write_json
from .cached_latents import check_latents_block
from .errors import ManifestError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "deft_omni.shards"
MANIFEST_VERSION = 1


def write_manifest(directory: str, shards: Iterable[tuple[str, int]] | Iterable[Mapping[str, Any]],
                   *, source: str, options: Mapping[str, Any] | None = None,
                   skipped: Iterable[Mapping[str, Any]] = (), output_masks: int = 0,
                   latents: Mapping[str, Any] | None = None) -> str:
    """Write ``<directory>/manifest.json`` atomically (deft_omni.core.atomic: fsync, umask modes).

    ``shards``: (file name relative to the directory, sample count) pairs or
    ``{"file", "samples"}`` dicts; ``skipped``: ``{"key" or "file", "reason"}`` records of
    what the converter dropped; ``output_masks``: how many samples carry an
    ``output_mask.png`` (0: none; manifests written before masks existed lack the field);
    ``latents``: how the samples' cached latents were made (:func:`.cached_latents.latents_block`),
    None for pixel shards.  Returns the manifest path.
    """
    entries = []
    for item in shards:
        name, count = (item["file"], item["samples"]) if isinstance(item, Mapping) else item
        if os.path.isabs(name) or os.sep in os.path.normpath(name):
            raise ManifestError(f"shard names must be file names relative to {directory}: {name!r}")
        entries.append({"file": str(name), "samples": int(count)})
    skipped_list = [dict(s) for s in skipped]
    for rec in skipped_list:
        if "reason" not in rec or not ({"key", "file"} & rec.keys()):
            raise ManifestError(f"skipped records need 'key' or 'file' and 'reason': {rec}")
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "shards": entries,
                "total": sum(e["samples"] for e in entries), "source": str(source),
                "options": dict(options or {}), "skipped": skipped_list, "output_masks": int(output_masks)}
    if not 0 <= manifest["output_masks"] <= manifest["total"]:
        raise ManifestError(f"output_masks {output_masks} is not between 0 and the total {manifest['total']}")
    path = os.path.join(directory, MANIFEST_NAME)
    if latents is not None:
        manifest["latents"] = check_latents_block(dict(latents), path)
    write_json(path, manifest, indent=1, sort_keys=True)
    return path


def read_manifest(directory: str) -> dict[str, Any]:
    """Read and check ``<directory>/manifest.json``; raises ManifestError / FileNotFoundError."""
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {directory!r}: shard directories are written by the converters "
            "(data_prep) or deft_omni.data.ShardSetWriter, which put the manifest beside the shards")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except ValueError as exn:
        raise ManifestError(f"{path} is not valid JSON ({exn}); re-run the converter") from exn
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path} is not a deft_omni shard manifest (format != {MANIFEST_FORMAT!r})")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path} has version {manifest.get('version')!r}; this code reads "
                            f"version {MANIFEST_VERSION}: re-run the converter")
    for name in ("shards", "total", "source", "options", "skipped"):
        if name not in manifest:
            raise ManifestError(f"{path} lacks the field {name!r}; re-run the converter")
    shards = manifest["shards"]
    if not all(isinstance(s, dict) and isinstance(s.get("file"), str)
               and isinstance(s.get("samples"), int) for s in shards):
        raise ManifestError(f"{path}: every shard entry needs 'file' (str) and 'samples' (int)")
    if sum(s["samples"] for s in shards) != manifest["total"]:
        raise ManifestError(f"{path}: total {manifest['total']} != sum of shard counts")
    masks = manifest.setdefault("output_masks", 0)
    if not isinstance(masks, int) or not 0 <= masks <= manifest["total"]:
        raise ManifestError(f"{path}: output_masks {masks!r} is not a count between 0 and the total; "
                            "re-run the converter")
    if "latents" in manifest:
        check_latents_block(manifest["latents"], path)
    return manifest
