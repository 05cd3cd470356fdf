"""Encode a shard set's latents, resumably.

The run resolves the model and its VAE (``Backbone.load_vae``; its identity:
``deft_omni.model.vae_identity``), then writes into ``OUTPUT.partial/``: each finished shard is
renamed into place there atomically, and a record of it goes to ``OUTPUT.partial/.encode/``
(with the run's settings).  A rerun with the same settings encodes only the shards without a
record; other settings are refused (or, with ``overwrite``, start over).  When every shard is
done, the manifest is written and the folder renamed to ``OUTPUT``: a reader sees no set or a
complete one.  With ``workers`` > 1 the shards are encoded in worker processes (forked on the CPU,
one thread each: OpenMP does not survive a fork with more; spawned for CUDA), and the shards come
out the same for any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

from ..backbones.registry import backbone_class, resolve_model
from ..core.atomic import clean_stale, publish_dir, write_json
from ..data.cached_latents import LATENTS_VERSION, latents_block
from ..data.errors import ManifestError
from ..data.manifest import MANIFEST_NAME, write_manifest
from ..data.schema import ShardSet
from ..model.vae_identity import latent_space
from .settings import PARTIAL_SUFFIX, EncodeSettings
from .shard import EncodeOptions, ShardJob, encode_shard

DEFAULT_MAX_SIDE = 1024  # what train.py makes of a null data.max_image_side, capped to the model
BOOK = ".encode"


class EncodeError(ValueError):
    """A setting or a folder the encoder cannot work with; the message says the fix."""


# ------------------------------------------------------------------------ worker side

_WORKER: dict[str, Any] = {}


def _worker_init(family: str, folder: str, device: str, queue: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)
    _WORKER.update(vae=backbone_class(family).load_vae(folder).to(device), queue=queue)


def _worker_job(job: ShardJob, opts: EncodeOptions) -> dict[str, Any]:
    return encode_shard(_WORKER["vae"], job, opts, progress=_WORKER["queue"].put)


# ------------------------------------------------------------------------ the run


def _resolve(settings: EncodeSettings) -> tuple[type, Path, int]:
    try:
        cls, folder = resolve_model(settings.model, settings.family)
        limit = cls.max_image_side(str(folder))
    except (OSError, ValueError, KeyError) as err:
        raise EncodeError(f"--model {settings.model}: {err}") from None
    side = settings.max_image_side or min(DEFAULT_MAX_SIDE, limit)
    if side > limit or any(max(b) > limit for b in settings.bucket_sizes or []):
        raise EncodeError(f"--max-image-side {side} / --bucket-sizes {settings.bucket_sizes}: the model takes images "
                          f"of at most {limit} px a side")
    return cls, folder, side


def _source(path: str) -> tuple[ShardSet, dict[str, Any]]:
    if not os.path.isdir(path):
        raise EncodeError(f"--in {path!r} is not a shard folder (a folder with {MANIFEST_NAME})")
    try:
        shards = ShardSet.resolve(path)
    except (ManifestError, FileNotFoundError) as err:
        raise EncodeError(f"--in {path}: {err}") from None
    manifest = shards.manifest or {}
    if (manifest.get("latents") or {}).get("pixels") == "dropped":
        raise EncodeError(f"--in {path} holds latents without pixels (encoded with --drop-pixels): encode from the "
                          f"pixel shards it was made from, {manifest['latents'].get('encoded_from')}")
    return shards, manifest


def _check_output(out: str, source: str, overwrite: bool) -> None:
    if os.path.realpath(out) == os.path.realpath(source):
        raise EncodeError(f"--out {out} is the input folder; write the latents beside it")
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise EncodeError(f"--out {out} exists and is not a folder")
    if overwrite:
        return
    if os.path.isfile(os.path.join(out, MANIFEST_NAME)):
        raise EncodeError(f"--out {out} holds a finished shard set; pass --overwrite to replace it (the old one stays "
                          f"until the new one is complete), or choose another --out")
    if os.listdir(out):
        raise EncodeError(f"--out {out} exists and is not empty; remove it or choose another --out")


def _open_partial(partial: Path, state: dict[str, Any], overwrite: bool, log: Callable[[str], None]) -> None:
    """Make (or resume) the partial folder for ``state``: a partial run with other settings is
    refused, or removed with ``overwrite``."""
    record = partial / BOOK / "settings.json"
    if partial.exists():
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError):
            old = None
        started = any((partial / BOOK).glob("*.tar.json")) if (partial / BOOK).is_dir() else False
        if old != state and (old is not None or started):
            changed = sorted(k for k in state if (old or {}).get(k) != state[k])
            if not overwrite:
                raise EncodeError(f"{partial} holds an interrupted encode with other settings ({', '.join(changed)}); "
                                  "rerun with its settings to resume it, or pass --overwrite to start over")
            log(f"removing {partial}: an interrupted encode with other settings ({', '.join(changed)})")
            shutil.rmtree(partial)
    (partial / BOOK).mkdir(parents=True, exist_ok=True)
    for stale in clean_stale(partial, own=False):  # shards a killed worker left half-written
        log(f"removed the leftover temporary {stale}")
    write_json(record, state, sort_keys=True)


def _done(partial: Path, name: str) -> Optional[dict[str, Any]]:
    marker = partial / BOOK / f"{name}.json"
    if marker.is_file() and (partial / name).is_file():
        try:
            return json.loads(marker.read_text())
        except ValueError:
            return None
    return None


def _run_jobs(jobs: list[ShardJob], opts: EncodeOptions, vae: Any, family: str, folder: Path,
              settings: EncodeSettings, on_done: Callable[[dict[str, Any]], None],
              progress: Callable[[int], None]) -> None:
    workers = settings.workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(encode_shard(vae, job, opts, progress))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from queue import Empty

    ctx = mp.get_context("spawn" if torch.device(settings.device).type != "cpu" else "fork")
    queue = ctx.Queue()
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_worker_init,
                               initargs=(family, str(folder), settings.device, queue))
    try:
        pending = {pool.submit(_worker_job, job, opts) for job in jobs}
        while pending:
            finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            try:
                while True:
                    progress(queue.get_nowait())
            except Empty:
                pass
            for future in finished:
                on_done(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_latents(settings: EncodeSettings, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
                   ) -> dict[str, Any]:
    """Run the encode described by ``settings`` (see the module docstring); returns a summary:
    samples, images, skipped, shards encoded now and resumed, the output folder."""
    cls, folder, side = _resolve(settings)
    shards, manifest = _source(settings.input)
    out = os.path.abspath(settings.output)
    _check_output(out, settings.input, settings.overwrite)
    vae = cls.load_vae(str(folder)).to(settings.device)
    space = latent_space(vae)
    fit = settings.fit(side)
    with open(os.path.join(settings.input, MANIFEST_NAME), "rb") as fh:
        source_digest = hashlib.sha256(fh.read()).hexdigest()
    state = {"version": LATENTS_VERSION, "input": os.path.abspath(settings.input), "input_manifest": source_digest,
             "vae": space["fingerprint"], "dtype": settings.dtype, "fitting": fit,
             "drop_pixels": settings.drop_pixels, "thumbnail_side": settings.thumbnail_side}
    partial = Path(out + PARTIAL_SUFFIX)
    _open_partial(partial, state, settings.overwrite, log)
    opts = EncodeOptions(fit=fit, dtype=settings.dtype, drop_pixels=settings.drop_pixels,
                         thumbnail_side=settings.thumbnail_side, batch_size=settings.batch_size,
                         fingerprint=space["fingerprint"])
    names = [os.path.basename(u) for u in shards.urls]
    results = {n: r for n in names if (r := _done(partial, n)) is not None}
    jobs = [ShardJob(url, str(partial / name), name, count)
            for url, name, count in zip(shards.urls, names, shards.counts) if name not in results]
    if results:
        log(f"resuming {partial}: {len(results)} of {len(names)} shards were encoded before")
    bar = None
    if not settings.quiet:
        from tqdm import tqdm

        bar = tqdm(total=shards.total, initial=sum(r["samples"] + len([s for s in r["skipped"] if "key" in s])
                                                   for r in results.values()),
                   unit="sample", desc="encode_latents", dynamic_ncols=True, mininterval=0.5, file=sys.stderr)

    def on_done(result: dict[str, Any]) -> None:
        write_json(partial / BOOK / f"{result['file']}.json", result, sort_keys=True)
        results[result["file"]] = result

    try:
        _run_jobs(jobs, opts, vae, cls.family, folder, settings, on_done, bar.update if bar is not None else lambda n: None)
    finally:
        if bar is not None:
            bar.close()
    done = [results[n] for n in names]
    kept = [r for r in done if r["samples"] > 0]
    if not kept:
        raise EncodeError(f"no sample of {settings.input} could be encoded: "
                          f"{done[0]['skipped'][0]['reason'] if done and done[0]['skipped'] else 'the set is empty'}")
    for r in done:  # a shard left empty is not listed (nor kept)
        if r["samples"] == 0 and (partial / r["file"]).exists():
            (partial / r["file"]).unlink()
    skipped = list(manifest.get("skipped", [])) + [s for r in done for s in r["skipped"]]
    block = latents_block(space=space, model=str(settings.model), dtype=settings.dtype, fit=fit,
                          pixels_dropped=settings.drop_pixels, thumbnail_side=settings.thumbnail_side,
                          encoded_from=os.path.abspath(settings.input))
    write_manifest(str(partial), [(r["file"], r["samples"]) for r in kept], source=manifest.get("source", "-"),
                   options=manifest.get("options", {}), skipped=skipped,
                   output_masks=sum(r["output_masks"] for r in kept), latents=block)
    publish_dir(partial, out, replace=True)
    shutil.rmtree(Path(out) / BOOK, ignore_errors=True)
    summary = {"output": out, "samples": sum(r["samples"] for r in done), "images": sum(r["images"] for r in done),
               "skipped": sum(len(r["skipped"]) for r in done), "shards_encoded": len(jobs),
               "shards_resumed": len(names) - len(jobs), "vae": space["fingerprint"], "fitting": fit}
    log(f"encode_latents: {summary['samples']} samples ({summary['images']} images) in {len(kept)} shards to {out}"
        f" ({summary['shards_resumed']} shards from an earlier run); {summary['skipped']} skipped"
        + (" (listed in manifest.json)" if summary["skipped"] else ""))
    return summary


__all__ = ["EncodeError", "encode_latents"]
