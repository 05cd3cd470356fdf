"""The converters' output folder: absent or complete, never half-written.

Shards go to a hidden staging folder beside ``--out`` (deft_omni.core.atomic's recognisable
temporary name, the process umask's modes), which replaces ``--out`` only once the manifest is
in it; a crash, Ctrl-C or SIGTERM removes it, and the next run removes those that killed runs
left behind.  An existing complete output is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from deft_omni.core.atomic import atomic_dir, clean_stale
from deft_omni.data.schema import MANIFEST_NAME

from .errors import OutputExistsError


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


@contextlib.contextmanager
def output_folder(out: str, overwrite: bool, log: Callable[[str], None] = print) -> Iterator[str]:
    """Yield the staging folder of ``out``; a clean exit moves it to ``out``, any error removes it."""
    out = os.path.abspath(out)
    check_output(out, overwrite)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    # Only temporaries whose writer is gone: another converter may be writing beside us.
    for path in clean_stale(parent, own=False):
        log(f"removing the leftover temporary folder of an interrupted run: {path}")
    # replace=True: check_output has allowed what is there (nothing, an empty folder, or
    # anything under --overwrite); it is checked again just before the rename.
    with atomic_dir(out, replace=True) as staging:
        yield str(staging)
        check_output(out, overwrite)  # Something may have appeared meanwhile.
