"""Text: sample keys and caption words made from file and folder names, and text inputs opened
the one way the converters read them."""

from __future__ import annotations

import re
from typing import IO, Any

_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]+")


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


def open_text(path: str) -> IO[str]:
    """A text input (JSONL, captions, prompt lists, model files) opened for reading as UTF-8,
    with or without the byte-order mark that Windows editors put first."""
    return open(path, encoding="utf-8-sig")
