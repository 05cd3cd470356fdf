"""Markdown building blocks shared by the run and sweep pages, and a small Markdown -> HTML step.

The HTML converter only needs the Markdown these pages write (headings, bullet lists, images,
pipe tables, paragraphs), so no Markdown package is required.
"""

from __future__ import annotations

from ..core.atomic import write_text

import html
import math
import os
import re
from pathlib import Path
from typing import Any, Optional

_IMAGE = re.compile(r"^!\[(.*)\]\((.*)\)$")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, tuple) and len(value) == 2:  # (mean, std)
        mean, std = value
        return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"
    return str(value).replace("|", "\\|")


def table(columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> list[str]:
    """A pipe table; columns are (key, title)."""
    lines = ["| " + " | ".join(t for _, t in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return lines


def rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def image(path: Optional[Path], start: Path, alt: str = "") -> list[str]:
    return [] if path is None else [f"![{alt or path.stem}]({rel(path, start)})", ""]


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = _BOLD.sub(r"<b>\1</b>", text)
    return _CODE.sub(r"<code>\1</code>", text)


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def to_html(markdown: str, title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
            "img{max-width:100%}</style></head><body>")]
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            head = _cells(line)
            i += 2  # the header separator
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            while i < len(lines) and lines[i].startswith("|"):
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(lines[i])) + "</tr>")
                i += 1
            out.append("</table>")
            continue
        elif line.startswith("- "):
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
            continue
        elif _IMAGE.match(line):
            alt, src = _IMAGE.match(line).groups()
            out.append(f"<p><img src='{html.escape(src)}' alt='{html.escape(alt)}'><br><small>"
                       f"{html.escape(alt)}</small></p>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out)


def write_pages(out: Path, markdown: str, title: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.md", markdown)
    write_text(out / "report.html", to_html(markdown, title))
    return out / "report.md"
