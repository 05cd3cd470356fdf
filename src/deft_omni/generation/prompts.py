"""Prompts for the generation command: from ``--prompt``/``--input-image`` or a prompts file.

A prompts file is either JSONL (``.jsonl``/``.json``: one object per line) or plain text (one
instruction per line; blank lines and lines starting with ``#`` are skipped).  JSONL fields:
``instruction`` (or ``prompt``), ``input_images`` (paths, relative to the file's folder),
``seed``, ``height``, ``width``, ``guidance_scale``, ``img_guidance_scale``, ``negative_prompt``;
fields left out take the command-line values.  Everything is checked before the model loads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from ..data.schema import SampleError, check_image_tags
from .errors import GenerationError

FILE_FIELDS = ("instruction", "prompt", "input_images", "seed", "height", "width", "guidance_scale",
               "img_guidance_scale", "negative_prompt")


@dataclass
class PromptSpec:
    """One image to make.  ``seed`` None: the run's base seed plus the image's index."""

    instruction: str
    input_images: list[Path] = field(default_factory=list)
    height: int = 1024
    width: int = 1024
    seed: Optional[int] = None
    guidance_scale: float = 2.5
    img_guidance_scale: float = 1.6
    negative_prompt: Optional[str] = None
    source: str = "--prompt"  # where it came from, for error messages

    def __post_init__(self) -> None:
        self.input_images = [Path(p).expanduser() for p in self.input_images]
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise GenerationError(f"{self.source}: the instruction is empty; write what to generate")
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 16:
                raise GenerationError(f"{self.source}: {name}={value!r} must be a positive multiple of 16 "
                                      f"(the VAE's 8x times the transformer's 2x2 patches), e.g. 512")
        for name in ("guidance_scale", "img_guidance_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GenerationError(f"{self.source}: {name}={value!r} must be a number, e.g. 2.5")
            setattr(self, name, float(value))
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise GenerationError(f"{self.source}: negative_prompt must be a string")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise GenerationError(f"{self.source}: seed={self.seed!r} must be an integer")
        try:
            check_image_tags(self.instruction, len(self.input_images))
        except SampleError as err:
            raise GenerationError(f"{self.source}: {err.reason}. The prompt has {len(self.input_images)} input "
                                  f"image(s) ({', '.join(map(str, self.input_images)) or 'none'}); fix: {err.fix}"
                                  ) from None

    def check_images(self) -> None:
        """Every input image exists and decodes; the error names the file."""
        for k, path in enumerate(self.input_images, start=1):
            if not path.is_file():
                raise GenerationError(f"{self.source}: input image {k} {str(path)!r} does not exist")
            try:
                with Image.open(path) as img:
                    img.load()
            except Exception as err:  # noqa: BLE001 - any decoder failure means an unusable file
                raise GenerationError(f"{self.source}: input image {k} {str(path)!r} is not a readable image "
                                      f"({type(err).__name__}: {err}); give a PNG/JPEG/WebP file") from None


def read_prompts_file(path: Path, defaults: dict[str, Any]) -> list[PromptSpec]:
    """Prompts from a JSONL or text file; ``defaults`` holds the command-line values."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenerationError(f"--prompts {path}: no such file")
    text = path.read_text(encoding="utf-8")
    out = []
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or (not jsonl and stripped.startswith("#")):
            continue
        source = f"{path}:{n}"
        entry = _parse_json_line(stripped, source, path.parent) if jsonl else {"instruction": line.rstrip()}
        out.append(PromptSpec(**{**defaults, **entry, "source": source}))
    if not out:
        raise GenerationError(f"--prompts {path}: no prompts in the file")
    return out


def _parse_json_line(line: str, source: str, folder: Path) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise GenerationError(f"{source}: not valid JSON ({err}); one object per line") from None
    if not isinstance(obj, dict):
        raise GenerationError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FILE_FIELDS))
    if unknown:
        raise GenerationError(f"{source}: unknown field(s) {unknown}; known fields: {list(FILE_FIELDS)}")
    if "prompt" in obj:
        if "instruction" in obj:
            raise GenerationError(f"{source}: give 'instruction' or 'prompt', not both")
        obj["instruction"] = obj.pop("prompt")
    if "instruction" not in obj:
        raise GenerationError(f"{source}: field 'instruction' is missing")
    images = obj.get("input_images", [])
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise GenerationError(f"{source}: field 'input_images' must be a list of paths")
    obj["input_images"] = [p if Path(p).expanduser().is_absolute() else folder / p for p in images]
    return obj


def prompt_defaults(height: int, width: int, guidance_scale: float, img_guidance_scale: float,
                    negative_prompt: Optional[str]) -> dict[str, Any]:
    return {"height": height, "width": width, "guidance_scale": guidance_scale,
            "img_guidance_scale": img_guidance_scale, "negative_prompt": negative_prompt}


def slugify(instruction: str, max_len: int = 40) -> str:
    """A file-name-safe summary of an instruction (image tags dropped)."""
    text = re.sub(r"<img><\|image_\d+\|></img>", " ", instruction).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:max_len].rstrip("-")
    return slug or "image"
