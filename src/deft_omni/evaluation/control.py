"""Structure metrics of VisualCloze-style conditional generation: SSIM and canny F1.

SSIM is torchmetrics' ``structural_similarity_index_measure`` (Gaussian window 11,
sigma 1.5, data range 1) on RGB images in [0, 1]; the generated image is resized
(bicubic) to the target's size first when they differ.

Canny controllability re-extracts edges from the generated image with ``cv2.Canny``
(thresholds ``low``/``high`` on the 8-bit grayscale image, resized to the condition's
size) and compares them with the condition's edge map (pixels >= 128 in grayscale).
A predicted edge pixel is a hit when a condition edge lies within Euclidean distance
``tolerance`` pixels of it, and a condition edge pixel is recovered when a predicted
edge lies that close; precision = hits / predicted edges, recall = recovered /
condition edges, F1 their harmonic mean. ``tolerance=0`` (the default) is plain
pixel-wise F1 as in ControlNet++/OmniControl-style evaluations. An empty edge set
counts as precision (or recall) 1, so two empty maps give F1 = 1 and exactly one
empty map gives F1 = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .images import resize_to, to_gray_uint8

EDGE_THRESHOLD = 128


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)


def ssim(generated: Image.Image, target: Image.Image) -> float:
    """torchmetrics SSIM of the generated image (resized to the target's size) against the target."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    gen = resize_to(generated.convert("RGB"), target.size)
    return float(structural_similarity_index_measure(_to_tensor(gen), _to_tensor(target.convert("RGB")),
                                                     data_range=1.0))


def canny_edges(img: Image.Image, low: float = 100.0, high: float = 200.0) -> np.ndarray:
    """Boolean edge map of ``cv2.Canny`` on the 8-bit grayscale image."""
    import cv2

    return cv2.Canny(to_gray_uint8(img), low, high) > 0


def condition_edges(img: Image.Image, threshold: int = EDGE_THRESHOLD) -> np.ndarray:
    """Boolean edge map of a canny condition image (white edges on black)."""
    return to_gray_uint8(img) >= threshold


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (xx * xx + yy * yy <= radius * radius).astype(np.uint8)


def _near(edges: np.ndarray, radius: int) -> np.ndarray:
    if radius == 0:
        return edges
    import cv2

    return cv2.dilate(edges.astype(np.uint8), _disk(radius)) > 0


@dataclass(frozen=True)
class EdgeScore:
    precision: float
    recall: float
    f1: float


def edge_f1(predicted: np.ndarray, reference: np.ndarray, tolerance: int = 0) -> EdgeScore:
    """Precision, recall and F1 of boolean edge maps of one shape, with a distance tolerance in pixels."""
    predicted, reference = np.asarray(predicted, bool), np.asarray(reference, bool)
    if predicted.shape != reference.shape:
        raise ValueError(f"edge maps differ in shape: {predicted.shape} vs {reference.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    n_pred, n_ref = int(predicted.sum()), int(reference.sum())
    precision = float((predicted & _near(reference, tolerance)).sum() / n_pred) if n_pred else 1.0
    recall = float((reference & _near(predicted, tolerance)).sum() / n_ref) if n_ref else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return EdgeScore(precision, recall, f1)


def canny_f1(generated: Image.Image, condition: Image.Image, low: float = 100.0, high: float = 200.0,
             tolerance: int = 0) -> EdgeScore:
    """Edges re-extracted from the generated image (at the condition's size) against the condition's edges."""
    gen = resize_to(generated.convert("RGB"), condition.size)
    return edge_f1(canny_edges(gen, low, high), condition_edges(condition), tolerance)
