"""Evaluation metrics of the DEFT paper: CLIP-I/CLIP-T/DINO/DINOv2, sharpness, aesthetic, SSIM, canny F1, depth RMSE.

``python -m deft_omni.evaluate`` is the command; docs/evaluation.md describes the input
contract and the conventions.
"""

from .aesthetic import AestheticHead, AestheticHeadError, load_aesthetic_head
from .config import CONDITION_TYPES, METRICS, EvalConfig
from .control import EdgeScore, canny_edges, canny_f1, condition_edges, edge_f1, ssim
from .depth import depth_rmse, predict_depth
from .images import EvaluationInputError, load_rgb
from .inputs import EvalItem, clip_text, collect_items, read_eval_prompts
from .models import (
    LoadedModel,
    MetricModelError,
    load_clip,
    load_depth_model,
    load_vision_backbone,
)
from .runner import run_evaluation, select_metrics
from .sharpness import laplacian_variance
from .similarity import embed_images, embed_texts, mean_reference_cosine, paired_cosine
from .tables import aggregate, markdown_table

__all__ = [
    "CONDITION_TYPES",
    "METRICS",
    "AestheticHead",
    "AestheticHeadError",
    "EdgeScore",
    "EvalConfig",
    "EvalItem",
    "EvaluationInputError",
    "LoadedModel",
    "MetricModelError",
    "aggregate",
    "canny_edges",
    "canny_f1",
    "clip_text",
    "collect_items",
    "condition_edges",
    "depth_rmse",
    "edge_f1",
    "embed_images",
    "embed_texts",
    "laplacian_variance",
    "load_aesthetic_head",
    "load_clip",
    "load_depth_model",
    "load_rgb",
    "load_vision_backbone",
    "markdown_table",
    "mean_reference_cosine",
    "paired_cosine",
    "predict_depth",
    "read_eval_prompts",
    "run_evaluation",
    "select_metrics",
    "ssim",
]
