"""A Summary as Markdown, HTML and JSON, from one list of sections so the three always agree."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .scan import LENGTH_BINS, Summary, length_bin

FORMAT = "deft_omni.data_summary"
JSON_LIST_CAP = 100_000


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]


@dataclass
class Section:
    title: str
    blocks: list[str | Table] = field(default_factory=list)


def _size(size: Any) -> str:
    return f"{size[0]}x{size[1]}" if isinstance(size, tuple) else str(size)


def _share(name: str, counter: Counter, total: int, order: Sequence[Any] | None = None, top: int | None = None,
           label=str) -> Table:
    keys = list(order) if order is not None else [k for k, _ in counter.most_common()]
    keys = [k for k in keys if counter.get(k)]
    rows = [[label(k), counter[k], f"{100 * counter[k] / max(total, 1):.1f}%"] for k in keys[:top]]
    rest = sum(counter[k] for k in keys[top:]) if top is not None else 0
    if rest:
        rows.append([f"({len(keys) - top} others)", rest, f"{100 * rest / max(total, 1):.1f}%"])
    return Table([name, "samples", "share"], rows)


def _listed(header: list[str], rows: list[list[Any]], top: int) -> list[str | Table]:
    """The first ``top`` rows, and a line saying where the rest are."""
    if not rows:
        return []
    more = [f"... and {len(rows) - top} more (summary.json lists them all)."] if len(rows) > top else []
    return [Table(header, rows[:top]), *more]


def sections(s: Summary, *, max_side: int, bucket_sizes: Any, top: int, sheet: str | None) -> list[Section]:
    n = s.samples
    rate = n / s.seconds if s.seconds else 0.0
    out = [Section("Shard sets", [
        Table(["set", "source", "split", "shards", "samples (manifest)", "output masks (manifest)"],
              [[i.path, i.source, i.split, i.shards, "-" if i.samples is None else i.samples, i.output_masks]
               for i in s.sets]),
        f"Read {n} samples ({s.images} images) in {s.seconds:.1f} s ({rate:.0f} samples/s); "
        f"{len(s.unreadable)} unreadable.",
    ])]
    out.append(Section("Samples by task, source and split", [_share("task", s.by_task, n),
                                                             _share("source", s.by_source, n),
                                                             _share("split", s.by_split, n)]))
    skipped = sum((i.skipped for i in s.sets), Counter())
    out.append(Section("Skipped by the converters (from the manifests)", [
        Table(["reason", "inputs"], [[r, c] for r, c in skipped.most_common()]) if skipped else "None recorded."]))
    out.append(Section("Output image sizes", [_share("stored (w x h)", s.output_sizes, n, top=top, label=_size)]))
    how = f"bucket_sizes {bucket_sizes}" if bucket_sizes else f"max_image_side {max_side}"
    out.append(Section(f"Output sizes as trained ({how}: resized and cropped as the processor does)",
                       [_share("trained (w x h)", s.buckets, n, top=top, label=_size)]))
    bins = [length_bin(b - 1) for b in LENGTH_BINS] + [f"{LENGTH_BINS[-1]}+"]
    unit = ("Tokens of the instruction text (the processor adds its template and the image tokens)"
            if s.length_unit == "tokens" else
            "Whitespace-separated words (pass --tokenizer for tokens)")
    out.append(Section(f"Instruction length in {s.length_unit}", [unit + ".", _share(s.length_unit, s.lengths, n, order=bins)]))
    out.append(Section("Input images per sample", [_share("inputs", s.inputs, n, order=sorted(s.inputs))]))
    out.append(Section("Output masks", [f"{s.masks} of {n} samples carry an output_mask."]))
    if s.latents or any(i.latents for i in s.sets):
        out.append(Section("Cached latents", [
            f"{s.latents} of {n} samples carry cached latents; {s.thumbnails} of them only thumbnails of their "
            "images (the sizes above come from the latents' record; the duplicates and the sheet use the "
            "thumbnails).",
            Table(["set", "VAE fingerprint", "model", "dtype", "max_image_side", "bucket sizes", "pixels"],
                  [[i.path, i.latents["vae"]["fingerprint"][:16], i.latents["vae"].get("model"), i.latents["dtype"],
                    i.latents["fitting"]["max_image_side"], i.latents["fitting"]["bucket_sizes"], i.latents["pixels"]]
                   for i in s.sets if i.latents])]))
    extra = sum(len(g) - 1 for g in s.duplicates)
    out.append(Section("Duplicate images (identical bytes)", [
        f"{len(s.duplicates)} images occur more than once ({extra} extra copies).",
        *_listed(["copies", "places (key and member)"],
                 [[len(g), ", ".join(g[:4]) + (" ..." if len(g) > 4 else "")] for g in s.duplicates], top)]))
    out.append(Section("Instruction image tags that do not match the input images", [
        f"{len(s.mismatches)} samples (the loader skips them).",
        *_listed(["key", "shard", "reason"], [list(m) for m in s.mismatches], top)]))
    if s.unreadable:
        out.append(Section("Unreadable", _listed(["where", "reason"], [list(u) for u in s.unreadable], top)))
    out.append(Section("Contact sheet", [f"![{len(s.kept)} random samples]({sheet})" if sheet else "No samples."]))
    return out


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, secs: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for sec in secs:
        lines += [f"## {sec.title}", ""]
        for block in sec.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def to_html(title: str, secs: Sequence[Section], sheet: str | None) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    for sec in secs:
        parts.append(f"<h2>{e(sec.title)}</h2>")
        for block in sec.blocks:
            if isinstance(block, Table):
                parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in block.header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in block.rows]
                parts.append("</table>")
            elif sheet and block.startswith("!["):
                parts.append(f"<img src='{e(sheet)}' alt='contact sheet' style='max-width:100%'>")
            else:
                parts.append(f"<p>{e(block)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def to_json(s: Summary, *, max_side: int, bucket_sizes: Any) -> dict[str, Any]:
    def sizes(counter: Counter) -> dict[str, int]:
        return {_size(k): v for k, v in counter.most_common()}

    return {"format": FORMAT, "version": 1, "samples": s.samples, "images": s.images, "seconds": s.seconds,
            "sets": [vars(i) | {"skipped": dict(i.skipped)} for i in s.sets],
            "by_task": dict(s.by_task), "by_source": dict(s.by_source), "by_split": dict(s.by_split),
            "skipped": dict(sum((i.skipped for i in s.sets), Counter())),
            "output_sizes": sizes(s.output_sizes), "max_image_side": max_side, "bucket_sizes": bucket_sizes,
            "trained_sizes": sizes(s.buckets), "length_unit": s.length_unit, "lengths": dict(s.lengths),
            "inputs_per_sample": {str(k): v for k, v in sorted(s.inputs.items())}, "output_masks": s.masks,
            "cached_latents": s.latents, "thumbnails_only": s.thumbnails,
            "duplicates": s.duplicates[:JSON_LIST_CAP],
            "mismatches": [{"key": k, "shard": u, "reason": r} for k, u, r in s.mismatches[:JSON_LIST_CAP]],
            "unreadable": [{"where": w, "reason": r} for w, r in s.unreadable[:JSON_LIST_CAP]]}
