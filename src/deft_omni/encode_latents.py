"""``python -m deft_omni.encode_latents``: store the VAE posterior of every image in a shard set.

    python -m deft_omni.encode_latents --model PATH|tiny|world --in SHARDS --out SHARDS_LATENT
        [--dtype fp16|bf16|fp32] [--max-image-side N] [--bucket-sizes HxW,HxW,...] [--drop-pixels]
        [--workers N] [--batch-size N] [--device cpu|cuda] [--overwrite] [--quiet]

Training on the output never runs the VAE (docs/data.md, "Cached latents").  Give the
``--max-image-side`` and ``--bucket-sizes`` of the runs that will read it (``data.max_image_side``,
``data.bucket_sizes``): a run with other ones, or another model's VAE, is refused before it starts.
An interrupted encode resumes where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import fields
from typing import Any, Optional

from .backbones import NamedModelError
from .core.dtypes import parse_dtype_arg
from .data.errors import ManifestError
from .latent_cache import EncodeError, EncodeSettings, encode_latents

_HELP = {f.name: f.metadata.get("help", "") for f in fields(EncodeSettings)}


def bucket_sizes_arg(text: str) -> list[tuple[int, int]]:
    """``HxW,HxW,...`` (data.bucket_sizes' (height, width) pairs)."""
    try:
        sizes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(len(s) != 2 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW,HxW,... (height x width in px)")
    return sizes  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deft_omni.encode_latents", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help=_HELP["model"])
    p.add_argument("--in", dest="input", required=True, help=_HELP["input"])
    p.add_argument("--out", dest="output", required=True, help=_HELP["output"])
    p.add_argument("--family", default=None, help=_HELP["family"])
    p.add_argument("--dtype", type=parse_dtype_arg, default="float16", help=_HELP["dtype"])
    p.add_argument("--max-image-side", type=int, default=None, help=_HELP["max_image_side"])
    p.add_argument("--bucket-sizes", type=bucket_sizes_arg, default=None, help=_HELP["bucket_sizes"])
    p.add_argument("--drop-pixels", action="store_true", help=_HELP["drop_pixels"])
    p.add_argument("--thumbnail-side", type=int, default=128, help=_HELP["thumbnail_side"])
    p.add_argument("--workers", type=int, default=1, help=_HELP["workers"])
    p.add_argument("--batch-size", type=int, default=8, help=_HELP["batch_size"])
    p.add_argument("--device", default="cpu", help=_HELP["device"])
    p.add_argument("--overwrite", action="store_true", help=_HELP["overwrite"])
    p.add_argument("--quiet", action="store_true", help=_HELP["quiet"])
    return p


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the command; returns its summary.  Bad input exits with status 2 and one message;
    Ctrl-C or SIGTERM with 130 (the shards finished so far stay for the rerun)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = EncodeSettings(**vars(args))
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return encode_latents(settings)
    except (EncodeError, ManifestError, NamedModelError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    except KeyboardInterrupt:
        print("interrupted: the shards encoded so far are kept; run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    main()
