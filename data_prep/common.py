"""Shared plumbing for the ``data_prep`` converters.

Every converter follows one shape::

    parser = make_parser("insdet objects -> shards", source="insdet_objects")
    ...converter-specific arguments...
    args = parser.parse_args(argv)
    jobs = [...]                      # small picklable descriptions, in a fixed order
    with Conversion(args, source="insdet_objects", options={...}) as conv:
        conv.run(build_fn, jobs)      # build_fn(job) -> [sample dict | Skip, ...]

:class:`Conversion` gives

* atomic output: shards go to ``<out>.tmp-XXXX`` beside ``<out>`` and are moved into
  place with ``os.replace`` only after the manifest is written; a crash, Ctrl-C or SIGTERM
  removes the temporary folder, so ``<out>`` is either absent or complete.  An existing
  complete output (a ``manifest.json``) is replaced only with ``--overwrite``.
* ``--workers N``: a process pool with a bounded window of jobs in flight, results taken
  in submission order, so the shards are byte-identical for any worker count.
* a tqdm bar in images/s, ``--strict`` (the first skip aborts the run), every skip
  recorded in the manifest (``ShardSetWriter.skip``) and a summary line at the end.

Image helpers: :func:`prepare_image` (decode-checked, EXIF-rotated, downscaled to
``--max-side``; bytes already in the output format and size pass through unchanged),
:func:`load_rgb`, :func:`load_mask`.  Expected per-item failures raise
:class:`ImageError` / return :class:`Skip`; fatal input problems raise
:class:`ConversionError` with a message for the user.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from deft_omni.data.schema import (
    IMAGE_EXTS,
    MANIFEST_NAME,
    SampleError,
    ShardSetWriter,
    to_rgb,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_PIL_FORMAT = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]+")
_PID_FILE = ".converter-pid"
MIN_SIDE = 16  # one OmniGen token (VAE 8x times 2x2 patches); the processor drops smaller images


# ----------------------------------------------------------------------------- errors


class ConversionError(Exception):
    """A fatal problem with the inputs or the output; the message says what and how to fix it."""


class OutputExistsError(ConversionError):
    """The output folder already holds something and --overwrite was not given."""


class StrictError(ConversionError):
    """--strict turned a skip into an error."""


class ImageError(Exception):
    """An unreadable/unusable image; converters turn it into a :class:`Skip`."""


@dataclass(frozen=True)
class Skip:
    """An input dropped by a converter, with the reason recorded in the manifest."""

    key: str
    reason: str


# ------------------------------------------------------------------------------- keys


def key_part(text: Any) -> str:
    """One key component: letters, digits, '_' and '-' only (webdataset splits at dots)."""
    part = _KEY_BAD.sub("_", str(text)).strip("_")
    return part or "x"


def make_key(*parts: Any) -> str:
    """A deterministic sample key from its parts, joined with '_' and free of dots."""
    return "_".join(key_part(p) for p in parts)


def words_from_name(name: str, *, drop_leading_number: bool = True, drop_trailing_numbers: bool = True) -> str:
    """``'012_aveda_shampoo'`` -> ``'aveda shampoo'``; ``'office-desk_03'`` -> ``'office desk'``."""
    tokens = [t for t in re.split(r"[\s_\-]+", name) if t]
    if drop_leading_number and len(tokens) > 1 and tokens[0].isdigit():
        tokens = tokens[1:]
    while drop_trailing_numbers and len(tokens) > 1 and tokens[-1].isdigit():
        tokens = tokens[:-1]
    return " ".join(tokens)


# ----------------------------------------------------------------------------- images


def read_bytes(src: str | os.PathLike | bytes) -> bytes:
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    try:
        with open(src, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exn:
        raise ImageError(f"image file not found: {os.fspath(src)}") from exn
    except OSError as exn:
        raise ImageError(f"cannot read image: {os.fspath(src)} ({exn.strerror or exn})") from exn


def _describe(src: Any) -> str:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else "image bytes"


def open_image(data: bytes, src: Any) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exn:
        raise ImageError(f"not a readable image: {_describe(src)}") from exn
    except Exception as exn:  # noqa: BLE001 - PIL raises many types (DecompressionBombError, ...)
        raise ImageError(f"corrupt image: {_describe(src)} ({exn})") from exn


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - broken EXIF blocks are common; ignore them
        return 1


def _fitted_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def decode_image(img: Image.Image, src: Any, max_side: int | None, *, min_scale_side: int | None = None) -> Image.Image:
    """Load (with JPEG draft decoding when shrinking), EXIF-rotate, downscale."""
    try:
        if max_side and img.format == "JPEG" and max(img.size) > max_side:
            # DCT-domain scaling (1/2, 1/4, 1/8) to at least the target size: far faster
            # than decoding 8k scene photos in full.  Uniform scale: orientation-proof.
            want = _fitted_size(img.size, max_side if min_scale_side is None else min_scale_side)
            img.draft("RGB", want)
        img.load()
        img = ImageOps.exif_transpose(img) if _orientation(img) != 1 else img
    except ImageError:
        raise
    except Exception as exn:  # noqa: BLE001 - truncated / corrupt data
        raise ImageError(f"corrupt image: {_describe(src)} ({exn})") from exn
    return img


def shrink(img: Image.Image, max_side: int | None) -> Image.Image:
    size = _fitted_size(img.size, max_side)
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def load_rgb(src: str | os.PathLike | bytes, max_side: int | None = None) -> Image.Image:
    """A fully decoded RGB image (alpha composited on white), longer side <= max_side."""
    data = read_bytes(src)
    img = decode_image(open_image(data, src), src, max_side)
    return shrink(to_rgb(img), max_side)


def load_mask(src: str | os.PathLike | bytes, size: tuple[int, int] | None = None) -> Image.Image:
    """A mask as mode 'L' (0 background .. 255 foreground; 0/1 label masks are stretched),
    resized bilinearly to ``size`` when given."""
    data = read_bytes(src)
    img = decode_image(open_image(data, src), src, None)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        mask = img.convert("RGBA").getchannel("A")
        if mask.getextrema() == (255, 255):  # Opaque: the mask is in the colour channels.
            mask = img.convert("L")
    else:
        mask = img.convert("L")
    if mask.getextrema()[1] == 1:  # 0/1 label masks
        mask = mask.point(lambda v: 255 if v else 0)
    if size is not None and mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.Resampling.BILINEAR)
    return mask


def check_min_side(size: tuple[int, int], what: Any) -> None:
    """ImageError when a side is below 16 px: the training processor could not use it."""
    if min(size) < MIN_SIDE:
        raise ImageError(f"image too small: {_describe(what)} is "
                         f"{size[0]}x{size[1]} px as stored; OmniGen needs sides of at least {MIN_SIDE} px")


def prepare_image(src: str | os.PathLike | bytes, *, max_side: int | None, image_format: str,
                  reencode: bool = False) -> tuple[bytes | Image.Image, tuple[int, int]]:
    """An image ready for ``make_sample``: the original bytes when they already are a fully
    decodable RGB/L ``image_format`` file within ``max_side`` and upright (no quality loss,
    no re-encode), else a decoded, EXIF-rotated, downscaled RGB PIL image.  Returns
    (image, (width, height) as stored).  Raises :class:`ImageError`."""
    data = read_bytes(src)
    img = open_image(data, src)
    fmt = _PIL_FORMAT[image_format.lower()]
    passthrough = (not reencode and img.format == fmt and img.mode in ("RGB", "L")
                   and (not max_side or max(img.size) <= max_side) and _orientation(img) == 1)
    if passthrough:
        decode_image(img, src, None)  # Full decode: truncated files fail here, not at train time.
        check_min_side(img.size, src)
        return data, img.size
    out = shrink(to_rgb(decode_image(img, src, max_side)), max_side)
    check_min_side(out.size, src)
    return out, out.size


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def list_images(directory: str) -> list[str]:
    """Image file names in a folder, sorted (hidden files and non-images ignored)."""
    try:
        return sorted(n for n in os.listdir(directory) if is_image_file(n)
                      and os.path.isfile(os.path.join(directory, n)))
    except FileNotFoundError:
        return []


def parse_colour(text: str) -> tuple[int, int, int]:
    """'white', 'black', 'gray', '#rrggbb' or 'r,g,b' -> an RGB tuple."""
    names = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128),
             "grey": (128, 128, 128)}
    t = text.strip().lower()
    if t in names:
        return names[t]
    if re.fullmatch(r"#[0-9a-f]{6}", t):
        return tuple(int(t[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    parts = t.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and 0 <= int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    raise argparse.ArgumentTypeError(f"colour {text!r}: use white/black/gray, #rrggbb or r,g,b")


# -------------------------------------------------------------------------- callables


def load_callable(spec: str, what: str = "captioner") -> Callable[..., Any]:
    """``'package.module:function'`` -> the function (imported, nothing downloaded)."""
    if ":" not in spec:
        raise ConversionError(f"--{what} {spec!r}: expected 'module:function'")
    mod_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `python -m` puts the cwd first; console scripts do not
    try:
        module = importlib.import_module(mod_name)
    except Exception as exn:  # noqa: BLE001 - report any import failure in the user's module
        raise ConversionError(f"--{what} {spec!r}: cannot import {mod_name!r} ({type(exn).__name__}: {exn})") from exn
    fn: Any = module
    for name in attr.split("."):
        fn = getattr(fn, name, None)
        if fn is None:
            raise ConversionError(f"--{what} {spec!r}: {mod_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ConversionError(f"--{what} {spec!r}: {attr!r} is not callable")
    return fn


# ------------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exn:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exn
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _max_side(text: str) -> int:
    value = _positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"--max-side {value} is below 16 px (one OmniGen token)")
    return value


def add_common_args(parser: argparse.ArgumentParser, *, max_side: int = 1024, maxcount: int = 1000,
                    token: bool = True, image_format: str = "jpg") -> argparse.ArgumentParser:
    """The options every converter shares."""
    g = parser.add_argument_group("output")
    g.add_argument("--out", required=True,
                   help="shard folder to create (shard-NNNNNN.tar + manifest.json); "
                        "written as <out>.tmp-XXXX and moved into place when complete")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder (refused without it)")
    g.add_argument("--workers", type=int, default=1,
                   help="processes decoding/encoding images (output order is the same for any N; "
                        "0 = all CPU cores)")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first input that would be skipped (corrupt image, bad line, ...)")
    g.add_argument("--maxcount", type=_positive_int, default=maxcount, help="samples per shard")
    g.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard (upper bound)")
    g.add_argument("--max-side", type=_max_side, default=max_side,
                   help="downscale images so the longer side is at most this (never upscaled)")
    g.add_argument("--image-format", choices=sorted(set(IMAGE_EXTS) - {"jpeg"}), default=image_format,
                   help="format of the stored images (inputs already in it pass through unchanged)")
    g.add_argument("--reencode", action="store_true",
                   help="re-encode every image even when its bytes could be stored unchanged")
    g.add_argument("--limit", type=_positive_int, default=None,
                   help="convert only the first N items (quick looks)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    if token:
        parser.add_argument("--unique-token", default="sks",
                            help="the rare identifier token in subject instructions (DreamBooth's 'sks')")
    return parser


def make_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def cli_main(run: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None,
             prog: str = "data_prep") -> int:
    """Run a converter: ConversionError -> message on stderr, exit code 2; SIGTERM behaves
    like Ctrl-C (the temporary output is removed), exit code 130/143."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # Not the main thread: leave signals alone.
        previous = None
    try:
        run(argv)
        return 0
    except ConversionError as exn:
        print(f"{prog}: error: {exn}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output was left in place", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------- atomic output


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_temp_dirs(out: str) -> list[str]:
    parent, name = os.path.split(os.path.abspath(out))
    if not os.path.isdir(parent):
        return []
    stale = []
    for entry in os.listdir(parent):
        if not entry.startswith(name + ".tmp-"):
            continue
        path = os.path.join(parent, entry)
        try:
            with open(os.path.join(path, _PID_FILE), encoding="utf-8") as fh:
                pid = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if not pid or not _pid_alive(pid):
            stale.append(path)
    return stale


def check_output(out: str, overwrite: bool) -> None:
    """Refuse to clobber an existing output without --overwrite (before any work is done)."""
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise OutputExistsError(f"--out {out!r} exists and is not a folder; remove it or choose another --out")
    if overwrite:
        return
    if os.path.isfile(os.path.join(out, MANIFEST_NAME)):
        raise OutputExistsError(
            f"--out {out!r} already holds a complete conversion ({MANIFEST_NAME} present); "
            "pass --overwrite to replace it, or choose another --out")
    if os.listdir(out):
        raise OutputExistsError(
            f"--out {out!r} exists, is not empty and is not a finished shard folder (no {MANIFEST_NAME}); "
            "refusing to write into it: remove it, pass --overwrite, or choose another --out")


class AtomicDir:
    """``<out>.tmp-XXXX`` while working; ``commit()`` moves it to ``<out>``; any exit without
    commit removes it."""

    def __init__(self, out: str, overwrite: bool, log: Callable[[str], None] = print):
        self.out = os.path.abspath(out)
        self.overwrite = overwrite
        self.tmp: str | None = None
        self.log = log

    def __enter__(self) -> str:
        check_output(self.out, self.overwrite)
        parent = os.path.dirname(self.out)
        os.makedirs(parent, exist_ok=True)
        for path in _stale_temp_dirs(self.out):
            self.log(f"removing the leftover temporary folder of an interrupted run: {path}")
            shutil.rmtree(path, ignore_errors=True)
        self.tmp = tempfile.mkdtemp(prefix=os.path.basename(self.out) + ".tmp-", dir=parent)
        with open(os.path.join(self.tmp, _PID_FILE), "w", encoding="utf-8") as fh:
            fh.write(str(os.getpid()))
        return self.tmp

    def commit(self) -> None:
        assert self.tmp is not None
        os.unlink(os.path.join(self.tmp, _PID_FILE))
        old = None
        if os.path.lexists(self.out):
            check_output(self.out, self.overwrite)  # Re-check: something may have appeared meanwhile.
            old = tempfile.mkdtemp(prefix=os.path.basename(self.out) + ".old-", dir=os.path.dirname(self.out))
            os.rmdir(old)
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


# ------------------------------------------------------------------------ worker pool


def _resolve_workers(workers: int) -> int:
    if workers is None or workers == 1:
        return 1
    if workers <= 0:
        return max(1, os.cpu_count() or 1)
    return workers


def _worker_init(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """Workers ignore Ctrl-C (the parent handles it and shuts the pool down) and die on
    SIGTERM (not the parent's raise-KeyboardInterrupt handler, inherited through fork)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


def _apply_chunk(fn: Callable[[Any], Any], jobs: list[Any]) -> list[Any]:
    return [fn(job) for job in jobs]


def ordered_map(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int = 1, *,
                initializer: Callable[..., None] | None = None, initargs: tuple = (),
                window: int | None = None, chunk: int = 8) -> Iterator[Any]:
    """``map(fn, jobs)`` over a process pool, yielding results in job order.  Jobs travel
    in chunks of ``chunk`` (less inter-process overhead per small image) with at most
    ``window`` chunks in flight (bounded memory).  ``workers <= 1`` runs in-process."""
    workers = _resolve_workers(workers)
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        for job in jobs:
            yield fn(job)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from itertools import islice

    methods = mp.get_all_start_methods()
    # fork: workers inherit the imported modules (torch comes with deft_omni.data), so
    # they start in milliseconds; spawn elsewhere.
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    window = window or workers * 3
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(initializer, initargs))
    it = iter(jobs)
    chunks = iter(lambda: list(islice(it, max(1, chunk))), [])
    pending: deque = deque()
    try:
        for part in islice(chunks, window):
            pending.append(pool.submit(_apply_chunk, fn, part))
        while pending:
            results = pending.popleft().result()
            for part in islice(chunks, 1):
                pending.append(pool.submit(_apply_chunk, fn, part))
            yield from results
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------- conversion


def count_images(sample: Mapping[str, Any]) -> int:
    return sum(1 for name in sample if name != "__key__" and name.rsplit(".", 1)[-1] in IMAGE_EXTS)


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


def _reason_class(reason: str) -> str:
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
        self._atomic = AtomicDir(args.out, args.overwrite, log=self.log)
        self._writer: ShardSetWriter | None = None
        self._keys: set[str] = set()
        self._bar = None
        self.tmp_dir: str | None = None
        self.out_dir = os.path.abspath(args.out)

    # -- context

    def __enter__(self) -> Conversion:
        self.tmp_dir = self._atomic.__enter__()
        self._writer = ShardSetWriter(self.tmp_dir, source=self.source, prefix=self.prefix,
                                      maxcount=self.args.maxcount, maxsize=self.args.maxsize,
                                      options=self.options)
        if not getattr(self.args, "quiet", False):
            from tqdm import tqdm

            self._bar = tqdm(unit="img", unit_scale=False, desc=self.source, dynamic_ncols=True,
                             mininterval=0.5, smoothing=0.1, file=sys.stderr)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bar is not None:
            self._bar.close()
        try:
            if exc_type is None:
                if self.stats.samples == 0:
                    self._writer.close(write_manifest_file=False)
                    raise ConversionError(self._nothing_message())
                self._writer.options["stats"] = self._stats_dict()
                self._writer.close()  # Writes manifest.json: the folder is complete.
                self._atomic.commit()
                self.log(self.summary())
            else:
                self._writer.close(write_manifest_file=False)
        finally:
            self._atomic.__exit__(exc_type, exc, tb)

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
        self.stats.reasons[_reason_class(reason)] += 1

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
                chunk = max(1, min(8, len(jobs) // (4 * _resolve_workers(self.args.workers))))
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


def write_json_atomic(path: str, obj: Any) -> None:
    """A JSON side file (prompt lists, ...) written via temp file + os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
