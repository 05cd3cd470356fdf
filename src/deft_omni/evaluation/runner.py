"""Run an evaluation: pick the metrics, load each model once, fill per-image rows, write tables."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .aesthetic import load_aesthetic_head
from .config import METRICS, EvalConfig
from .control import canny_f1, ssim
from .depth import depth_rmse, predict_depth
from .images import EvaluationInputError, load_rgb
from .inputs import EvalItem, collect_items
from .models import load_clip, load_depth_model, load_vision_backbone
from .sharpness import laplacian_variance
from .similarity import embed_images, embed_texts, mean_reference_cosine, paired_cosine
from .tables import write_outputs

_REF_METRICS = ("clip_i", "dino", "dinov2")
NOTES = (
    ("CLIP-I, CLIP-T, DINO, DINOv2: plain cosine similarity in [-1, 1] (CLIPScore = 100 * max(CLIP-T, 0)); "
    "CLIP-I/DINO average over the subject's reference images."),
    ("sharpness: variance of the Laplacian of the 8-bit grayscale image; aesthetic: LAION head on "
    "L2-normalised CLIP image embeddings."),
    ("ssim: torchmetrics SSIM vs the target; canny_f1: cv2.Canny edges of the output vs the condition's edges; "
    "depth_rmse: 0-255 scale after the chosen alignment."),
    "mean ± population std (ddof=0); 'overall' pools all images.",
)


def _requirements(cfg: EvalConfig) -> dict[str, str | None]:
    """For each metric, what is missing for it (None: it can run)."""
    cond_type = cfg.condition_type
    return {
        "clip_i": None if cfg.clip and (cfg.references or cfg.targets) else "--clip and --references (or --targets)",
        "clip_t": None if cfg.clip else "--clip",
        "dino": None if cfg.dino and (cfg.references or cfg.targets) else "--dino and --references (or --targets)",
        "dinov2": None if cfg.dinov2 and (cfg.references or cfg.targets) else
        "--dinov2 and --references (or --targets)",
        "aesthetic": None if cfg.aesthetic_head and cfg.aesthetic_clip_source else
        "--aesthetic-head and --aesthetic-clip (or --clip)",
        "sharpness": None,
        "ssim": None if cfg.targets else "--targets",
        "canny_f1": None if cfg.conditions and cond_type == "canny" else "--conditions with --condition-type canny",
        "depth_rmse": None if cfg.conditions and cond_type == "depth" and cfg.depth_model else
        "--conditions with --condition-type depth, and --depth-model",
    }


def select_metrics(cfg: EvalConfig) -> tuple[str, ...]:
    """The requested metrics (checked), or every metric whose inputs and models are given."""
    req = _requirements(cfg)
    if cfg.metrics is None:
        return tuple(m for m in METRICS if req[m] is None)
    missing = [f"{m} needs {req[m]}" for m in cfg.metrics if req[m] is not None]
    if missing:
        raise EvaluationInputError("--metrics: " + "; ".join(missing))
    return tuple(m for m in METRICS if m in cfg.metrics)


def columns_for(metrics: Sequence[str]) -> list[str]:
    cols = []
    for m in metrics:
        cols.append(m)
        if m == "canny_f1":
            cols += ["canny_precision", "canny_recall"]
    return cols


def _reference_similarity(cfg, loaded, kind, items, gen_emb, load, column, rows):
    refs = sorted({r for it in items for r in it.references})
    index = {r: i for i, r in enumerate(refs)}
    ref_emb = embed_images(loaded, kind, refs, load, cfg.batch_size, cfg.progress)
    scores = mean_reference_cosine(gen_emb, ref_emb, [[index[r] for r in it.references] for it in items])
    for row, s in zip(rows, scores.tolist()):
        row[column] = s


def compute_rows(cfg: EvalConfig, metrics: Sequence[str], items: list[EvalItem]) -> list[dict[str, Any]]:
    """One dict per generated image: image, subject, text and the metric values."""
    load = functools.lru_cache(maxsize=256)(load_rgb)
    rows: list[dict[str, Any]] = [{"image": it.name, "subject": it.subject, "text": it.text} for it in items]
    paths = [it.path for it in items]
    bar = functools.partial(tqdm, unit="img", disable=not cfg.progress, leave=False)
    if "sharpness" in metrics:
        for row, path in zip(rows, bar(paths, desc="sharpness")):
            row["sharpness"] = laplacian_variance(load(path))
    clip_emb = None
    if {"clip_i", "clip_t"} & set(metrics) or ("aesthetic" in metrics and cfg.aesthetic_clip_source == cfg.clip):
        clip = load_clip(cfg.clip, cfg.device)
        clip_emb = embed_images(clip, "clip", paths, load, cfg.batch_size, cfg.progress)
        if "clip_t" in metrics:
            text_emb = embed_texts(clip, [it.text for it in items], cfg.batch_size, cfg.progress)
            for row, s in zip(rows, paired_cosine(clip_emb, text_emb).tolist()):
                row["clip_t"] = s
        if "clip_i" in metrics:
            _reference_similarity(cfg, clip, "clip", items, clip_emb, load, "clip_i", rows)
        del clip
    if "aesthetic" in metrics:
        head = load_aesthetic_head(cfg.aesthetic_head)
        emb = clip_emb
        if cfg.aesthetic_clip_source != cfg.clip or emb is None:
            aclip = load_clip(cfg.aesthetic_clip_source, cfg.device, flag="--aesthetic-clip")
            emb = embed_images(aclip, "clip", paths, load, cfg.batch_size, cfg.progress)
        head.check_width(emb.shape[1], cfg.aesthetic_clip_source)
        for row, s in zip(rows, head(emb).tolist()):
            row["aesthetic"] = s
    for column, source in (("dino", cfg.dino), ("dinov2", cfg.dinov2)):
        if column in metrics:
            backbone = load_vision_backbone(source, cfg.device, flag=f"--{column}")
            emb = embed_images(backbone, "cls", paths, load, cfg.batch_size, cfg.progress)
            _reference_similarity(cfg, backbone, "cls", items, emb, load, column, rows)
            del backbone
    if "ssim" in metrics:
        for row, it in zip(rows, bar(items, desc="ssim")):
            row["ssim"] = ssim(load(it.path), load_rgb(it.target, "target image"))
    if "canny_f1" in metrics:
        for row, it in zip(rows, bar(items, desc="canny F1")):
            score = canny_f1(load(it.path), load_rgb(it.condition, "condition image"), cfg.canny_low,
                             cfg.canny_high, cfg.edge_tolerance)
            row.update(canny_f1=score.f1, canny_precision=score.precision, canny_recall=score.recall)
    if "depth_rmse" in metrics:
        model = load_depth_model(cfg.depth_model, cfg.device)
        for start in bar(range(0, len(items), cfg.batch_size), desc="depth", unit="batch"):
            chunk = items[start:start + cfg.batch_size]
            preds = predict_depth(model, [load(it.path) for it in chunk], cfg.batch_size)
            for row, it, pred in zip(rows[start:start + len(chunk)], chunk, preds):
                row["depth_rmse"] = depth_rmse(pred, load_rgb(it.condition, "condition image"), cfg.depth_align,
                                               cfg.depth_invert)
    return rows


def _versions() -> dict[str, str]:
    import torchmetrics
    import transformers

    from deft_omni import __version__

    out = {"deft_omni": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "torchmetrics": torchmetrics.__version__}
    try:
        import cv2

        out["opencv"] = cv2.__version__
    except ImportError:
        pass
    return out


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate and write ``per_image.csv``, ``per_subject.csv``, ``summary.md``, ``metrics.json``."""
    metrics = select_metrics(cfg)
    need_refs = bool(set(_REF_METRICS) & set(metrics))
    items = collect_items(cfg, need_text="clip_t" in metrics, need_refs=need_refs, need_target="ssim" in metrics,
                          need_condition=bool({"canny_f1", "depth_rmse"} & set(metrics)))
    rows = compute_rows(cfg, metrics, items)
    columns = columns_for(metrics)
    meta = {"generated": cfg.generated, "metrics": list(metrics), "n_images": len(rows),
            "config": dataclasses.asdict(cfg), "versions": _versions(), "conventions": list(NOTES)}
    paths = write_outputs(cfg.out, rows, columns, meta, NOTES)
    return {"paths": paths, "rows": rows, "columns": columns, "metrics": metrics}
