"""A contact sheet: one row per sample, its input images, an arrow, its output, its instruction."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from deft_omni.core.atomic import atomic_path
from deft_omni.data.images import to_rgb

from .scan import Kept

PAD = 8
TEXT_WIDTH = 460
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _thumb(data: bytes, height: int) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = to_rgb(img)
            width = max(1, round(img.width * height / img.height))
            return img.resize((min(width, 4 * height), height), Image.Resampling.BILINEAR)
    except Exception:  # noqa: BLE001 - an unreadable image still gets its cell, marked
        cell = Image.new("RGB", (height, height), (200, 200, 200))
        ImageDraw.Draw(cell).text((4, height // 2 - 6), "unreadable", fill=INK)
        return cell


def _row(inputs: list[Image.Image], output: Image.Image, text: str, inputs_width: int, height: int,
         font: ImageFont.ImageFont) -> Image.Image:
    """Inputs right-aligned in a column ``inputs_width`` wide, so that the outputs line up."""
    arrow = 28
    width = inputs_width + arrow + output.width + PAD + TEXT_WIDTH
    row = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(row)
    x = inputs_width - sum(i.width + PAD for i in inputs)
    for img in inputs:
        row.paste(img, (x, 0))
        x += img.width + PAD
    if inputs:
        draw.text((x + 4, height // 2 - 6), "->", fill=INK, font=font)
    x = inputs_width + arrow
    row.paste(output, (x, 0))
    x += output.width + PAD
    lines = textwrap.wrap(text, width=TEXT_WIDTH // 7)
    max_lines = max(1, height // 14)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [lines[max_lines - 1][:-3] + "..."]
    draw.multiline_text((x, 2), "\n".join(lines), fill=INK, font=font, spacing=2)
    return row


def contact_sheet(samples: Sequence[Kept], path: str, height: int = 96) -> str | None:
    """Write the sheet of ``samples`` to ``path`` (PNG, atomically); None when there is nothing to draw."""
    if not samples:
        return None
    font = ImageFont.load_default()
    thumbs = [([_thumb(d, height) for d in s.inputs], _thumb(s.output, height)) for s in samples]
    inputs_width = max(sum(i.width + PAD for i in inputs) for inputs, _ in thumbs)
    rows = [_row(inputs, output, f"{s.key}: {s.instruction}", inputs_width, height, font)
            for s, (inputs, output) in zip(samples, thumbs, strict=True)]
    sheet = Image.new("RGB", (max(r.width for r in rows) + 2 * PAD, len(rows) * (height + PAD) + PAD), BACKGROUND)
    for i, row in enumerate(rows):
        sheet.paste(row, (PAD, PAD + i * (height + PAD)))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
