"""The converters' shared command line: common options, option types, user hooks, and
:func:`cli_main` (clear one-line errors, SIGTERM handled like Ctrl-C)."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from deft_omni.data.schema import IMAGE_EXTS

from .errors import ConversionError


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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exn:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exn
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _max_side(text: str) -> int:
    value = positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"--max-side {value} is below 16 px (one OmniGen token)")
    return value


def add_common_args(parser: argparse.ArgumentParser, *, max_side: int = 1024, maxcount: int = 1000,
                    token: bool = True, image_format: str = "jpg") -> argparse.ArgumentParser:
    """The options every converter shares."""
    g = parser.add_argument_group("output")
    g.add_argument("--out", required=True,
                   help="shard folder to create (shard-NNNNNN.tar + manifest.json); written as a hidden "
                        ".<name>.deft-tmp-* folder beside it and moved into place when complete")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder (refused without it)")
    g.add_argument("--workers", type=int, default=1,
                   help="processes decoding/encoding images (output order is the same for any N; "
                        "0 = all CPU cores)")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first input that would be skipped (corrupt image, bad line, ...)")
    g.add_argument("--maxcount", type=positive_int, default=maxcount, help="samples per shard")
    g.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard (upper bound)")
    g.add_argument("--max-side", type=_max_side, default=max_side,
                   help="downscale images so the longer side is at most this (never upscaled)")
    g.add_argument("--image-format", choices=sorted(set(IMAGE_EXTS) - {"jpeg"}), default=image_format,
                   help="format of the stored images (inputs already in it pass through unchanged)")
    g.add_argument("--reencode", action="store_true",
                   help="re-encode every image even when its bytes could be stored unchanged")
    g.add_argument("--limit", type=positive_int, default=None,
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
