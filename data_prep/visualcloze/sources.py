"""Row access to a Graph200K copy: a ``save_to_disk`` dataset (arrow) or VisualCloze's folder export."""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import ConversionError
from ..text import open_text
from .columns import COLUMNS


LAYOUTS = ("a DatasetDict saved with save_to_disk (dataset_dict.json + <split>/data-*.arrow), one split of it "
           "(state.json + data-*.arrow), or VisualCloze's folder export (<split>/data.json + one folder per column)")


class Source:
    """Row access shared by both layouts: images as bytes or a path (None when absent)."""

    name: str

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def has(self, column: str) -> list[bool]:  # pragma: no cover - interface
        raise NotImplementedError

    def image(self, i: int, column: str) -> bytes | str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def info(self, i: int) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def qualities(self) -> list[Any]:  # pragma: no cover - interface
        raise NotImplementedError


class ArrowSource(Source):
    def __init__(self, path: str, split: str | None):
        try:
            import datasets
        except ImportError as exn:  # pragma: no cover - datasets is in the dev extra
            raise ConversionError("reading a save_to_disk dataset needs the 'datasets' package "
                                  "(pip install datasets)") from exn
        try:
            loaded = datasets.load_from_disk(path)
        except Exception as exn:  # noqa: BLE001 - surface datasets' reason with the path
            raise ConversionError(f"cannot load {path!r} with datasets.load_from_disk "
                                  f"({type(exn).__name__}: {exn}); expected {LAYOUTS}") from exn
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConversionError(f"--split {split!r} is not in {path!r} (splits: {', '.join(loaded)})")
            ds = loaded[split]
        else:
            ds = loaded
        if getattr(ds, "_indices", None) is not None:
            ds = ds.flatten_indices()
        self.ds = ds
        self.table = ds.data.table
        self.name = f"{path}[{split}]" if isinstance(loaded, datasets.DatasetDict) else path
        self.names = set(self.table.column_names)

    def __len__(self) -> int:
        return self.table.num_rows

    def _arrow_name(self, column: str) -> str:
        return COLUMNS[column][0]

    def has_column(self, column: str) -> bool:
        return self._arrow_name(column) in self.names

    def has(self, column: str) -> list[bool]:
        import pyarrow.compute as pc

        if not self.has_column(column):
            return [False] * len(self)
        return [not v for v in pc.is_null(self.table.column(self._arrow_name(column))).to_pylist()]

    def image(self, i: int, column: str) -> bytes | str | None:
        if not self.has_column(column):
            return None
        value = self.table.column(self._arrow_name(column))[i].as_py()
        if value is None:
            return None
        if isinstance(value, dict):
            return value.get("bytes") or value.get("path")
        return value  # bytes stored directly

    def qualities(self) -> list[Any]:
        if "quality_assessment" not in self.names:
            return [None] * len(self)
        return self.table.column("quality_assessment").to_pylist()

    def info(self, i: int) -> dict[str, Any]:
        out = {}
        for name in ("quality_assessment", "description", "collection"):
            if name in self.names:
                out[name] = self.table.column(name)[i].as_py()
        return out


class FolderSource(Source):
    def __init__(self, split_dir: str):
        path = os.path.join(split_dir, "data.json")
        try:
            with open_text(path) as fh:
                rows = json.load(fh)
        except ValueError as exn:
            raise ConversionError(f"{path} is not valid JSON ({exn}); re-export it with VisualCloze's "
                                  "processing.py") from exn
        except OSError as exn:
            raise ConversionError(f"cannot read {path} ({exn.strerror or exn})") from exn
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ConversionError(f"{path} must hold a JSON list of row objects (VisualCloze's data.json)")
        self.rows, self.split_dir, self.name = rows, split_dir, path

    def __len__(self) -> int:
        return len(self.rows)

    def _path(self, i: int, column: str) -> str | None:
        cond = self.rows[i].get("condition") or {}
        value = cond.get(COLUMNS[column][1])
        if not isinstance(value, str) or not value:
            return None
        if os.path.isabs(value) and os.path.exists(value):
            return value
        # A moved export: keep "<column folder>/<file>" and look beside data.json.
        local = os.path.join(self.split_dir, os.path.basename(os.path.dirname(value)), os.path.basename(value))
        if os.path.exists(local):
            return local
        return value if os.path.isabs(value) else os.path.join(self.split_dir, value)

    def has(self, column: str) -> list[bool]:
        return [self._path(i, column) is not None for i in range(len(self))]

    def image(self, i: int, column: str) -> bytes | str | None:
        return self._path(i, column)

    def qualities(self) -> list[Any]:
        return [r.get("quality_assessment") for r in self.rows]

    def info(self, i: int) -> dict[str, Any]:
        return {k: self.rows[i].get(k) for k in ("quality_assessment", "description", "collection")}


def open_source(root: str, split: str) -> Source:
    if not os.path.exists(root):
        raise ConversionError(f"--root {root!r} does not exist; expected {LAYOUTS}")
    if os.path.isfile(os.path.join(root, "dataset_dict.json")):
        return ArrowSource(root, split)
    if os.path.isfile(os.path.join(root, "state.json")):
        return ArrowSource(root, None)
    split_dir = os.path.join(root, split)
    if os.path.isfile(os.path.join(split_dir, "state.json")):
        return ArrowSource(split_dir, None)
    if os.path.isfile(os.path.join(split_dir, "data.json")):
        return FolderSource(split_dir)
    if os.path.isfile(os.path.join(root, "data.json")):
        return FolderSource(root)
    held = ", ".join(sorted(os.listdir(root))[:10]) if os.path.isdir(root) else "(not a folder)"
    raise ConversionError(f"--root {root!r} (split {split!r}) is not a Graph200K copy (it holds: {held}); "
                          f"expected {LAYOUTS}")
