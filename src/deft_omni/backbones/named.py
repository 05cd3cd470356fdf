"""Named models that ship with deft_omni as data: the world base (trained by the project's own
``python -m deft_omni.world.build``, committed with its sha256 sums).

A named model is refused, with one line naming the file and the rebuild command, when a file is
missing or its sha256 differs (a git-LFS pointer, a partial checkout): it is never loaded
half-way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

WORLD_BASE = Path(__file__).resolve().parents[1] / "assets" / "world_base"
CHECKSUMS = "SHA256SUMS"
WORLD_REBUILD = "python -m deft_omni.world.build"


class NamedModelError(FileNotFoundError):
    """A shipped model folder is missing a file or holds a file with another checksum."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_folder(folder: Path, rebuild: str) -> Path:
    """Check every file listed in ``folder/SHA256SUMS``; returns ``folder``."""
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise NamedModelError(f"{sums} is missing: the model folder is incomplete; rebuild it with `{rebuild}`")
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        file = folder / name.strip().lstrip("*")
        if not file.is_file():
            raise NamedModelError(f"{file} is missing; rebuild it with `{rebuild}`")
        if sha256_file(file) != digest:
            head = file.read_bytes()[:40]
            what = " (a git-LFS pointer: run `git lfs pull`)" if head.startswith(b"version https://git-lfs") else ""
            raise NamedModelError(f"{file} does not match its sha256 in {sums}{what}; rebuild it with `{rebuild}`")
    return folder


def world_base_folder() -> Path:
    """The committed world base (diffusers layout), verified against its checksums."""
    return verify_folder(WORLD_BASE, WORLD_REBUILD)


def world_base_info() -> dict:
    """The world base's ``world.json``: recipe, sampler defaults and the judge scores it reached."""
    return json.loads((world_base_folder() / "world.json").read_text())
