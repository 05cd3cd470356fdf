"""Captions of InsDet samples: a template, or a user's captioner hook run in the workers."""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..cli import load_callable
from ..errors import ConversionError
from ..images import ImageError


DEFAULT_TEMPLATE = "a photo of {token} {words}"
_CAPTIONERS: dict[str, Any] = {}


def caption_for(spec: str | None, image: Image.Image, info: dict[str, Any]) -> str:
    """The template caption, or the captioner's when one is given and returns a string."""
    if not spec:
        return info["caption"]
    fn = _CAPTIONERS.get(spec)
    if fn is None:
        fn = _CAPTIONERS[spec] = load_callable(spec)
    try:
        text = fn(image, dict(info))
    except Exception as exn:  # noqa: BLE001 - a user hook: report, do not crash the run
        raise ImageError(f"captioner failed: {spec} on {info.get('path')} ({type(exn).__name__}: {exn})") from exn
    if text is None:
        return info["caption"]
    if not isinstance(text, str) or not text.strip():
        raise ImageError(f"captioner failed: {spec} returned {text!r} for {info.get('path')} (expected a string)")
    return text.strip()


def check_template(template: str, option: str) -> None:
    try:
        template.format(token="sks", words="w", name="n", id=0, level="easy")
    except (KeyError, IndexError, ValueError) as exn:
        raise ConversionError(f"{option} {template!r}: unknown or malformed field {exn}; "
                              "use {token}, {words}, {name}, {id} (scenes also {level})") from exn
