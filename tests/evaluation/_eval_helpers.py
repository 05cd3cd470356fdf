"""Writing small generated sets (PNGs + sidecars) for the evaluation tests."""

from __future__ import annotations

import json
import os

from PIL import Image


def write_generated(folder, name: str, img: Image.Image, **sidecar) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), name)
    img.save(path)
    if sidecar:
        with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as fh:
            json.dump(sidecar, fh)
    return path


def cosine(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
