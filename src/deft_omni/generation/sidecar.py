"""The JSON sidecar written beside every generated PNG, and the identity of the base model.

The sidecar holds every setting that the image depends on (prompt, input images with their
sha256, resolved seed, size, steps, guidance scales, dtype, device, base model identity and
each adapter's identity and weight), so ``--from-sidecar`` can make the same image again.
Format: see ``docs/generation.md``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..core.atomic import write_json
from .errors import GenerationError

FORMAT = "deft_omni.generation"
VERSION = 1
_MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".model", ".txt")
_EDGE = 1 << 20


def model_identity(path: Path) -> dict[str, Any]:
    """A cheap content identity of a model folder: sha256 over every weight/config file's relative
    path, size and first and last MiB.  Reading whole 15 GB checkpoints per run would take minutes;
    this still tells different checkpoints apart (their headers and tails differ)."""
    path = Path(path).resolve()
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _MODEL_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}\0{size}\0".encode())
        with open(file, "rb") as fh:
            digest.update(fh.read(_EDGE))
            if size > 2 * _EDGE:
                fh.seek(size - _EDGE)
                digest.update(fh.read(_EDGE))
    return {"path": str(path), "quick_sha256": digest.hexdigest(), "n_files": len(files)}


def write_sidecar(path: Path, data: dict[str, Any]) -> Path:
    """Write atomically (temp file, then rename): a half-written sidecar would not regenerate."""
    return write_json(path, {"format": FORMAT, "version": VERSION, **data}, ensure_ascii=False)


def read_sidecar(path: Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenerationError(f"--from-sidecar {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GenerationError(f"--from-sidecar {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GenerationError(f"--from-sidecar {path}: field 'format' is "
                              f"{data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT!r}; "
                              f"give the .json written beside a generated PNG")
    if data.get("version") != VERSION:
        raise GenerationError(f"--from-sidecar {path}: sidecar version {data.get('version')!r}, this deft_omni "
                              f"reads version {VERSION}")
    missing = [k for k in ("prompt", "seed", "height", "width", "steps", "model", "adapters", "sampler")
               if k not in data]
    if missing:
        raise GenerationError(f"--from-sidecar {path}: missing field(s) {missing}")
    return data
