"""The judge on a folder of generated world images (``python -m deft_omni.evaluate --world``): each
image's sidecar instruction is parsed back into the scene it asks for (:mod:`.parse`), the judge
reads the image, and the folder gets per-image rows and the per-attribute table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

from ..core.atomic import atomic_file, write_json, write_text
from .concept import CONCEPT_JUDGE
from .judge import read_image
from .metrics import ATTRIBUTES, aggregate, format_table, score_reading
from .parse import WorldPromptError, parse_instruction


class WorldFolderError(ValueError):
    """A folder the judge cannot score (no images, a sidecar without a world instruction)."""


def score_folder(generated: Path, out: Path) -> dict:
    images = sorted(p for p in Path(generated).glob("*.png") if p.stem != "grid")
    if not images:
        raise WorldFolderError(f"--generated {generated}: no PNG images (the --out of python -m deft_omni.generate)")
    scores, rows = [], []
    for path in images:
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise WorldFolderError(f"{path}: no sidecar {sidecar.name}: the judge needs the image's instruction")
        instruction = json.loads(sidecar.read_text()).get("instruction", "")
        try:
            scene = parse_instruction(instruction)
        except WorldPromptError as err:
            raise WorldFolderError(f"{sidecar}: instruction: {err}") from None
        with Image.open(path) as img:
            score = score_reading(scene, read_image(img.convert("RGB"), cfg=CONCEPT_JUDGE))
        scores.append(score)
        rows.append({"image": path.name, "instruction": instruction,
                     **{a: sum(score.hits[a]) / len(score.hits[a]) for a in ATTRIBUTES if a in score.hits}})
    total = aggregate(scores)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "per_image.csv", "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = format_table({generated.name: total})
    write_text(out / "summary.md", f"# The world judge on `{generated}`\n\n{table}\n")
    write_json(out / "metrics.json", total.as_dict())
    return {"scores": total, "table": table}
