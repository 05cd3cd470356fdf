"""The judge's reader: an image back into world attributes, deterministically (numpy + OpenCV).

It never abstains: every image gets a reading (possibly "no object").  Steps:

1. **background**: the per-channel median of all pixels (objects cover well under half of
   any world image), labelled with the nearest background palette colour;
2. **objects**: pixels farther than ``threshold`` (RGB units) from that median, split into
   8-connected components; a component is an object when its area is plausible (between
   ``min_area_frac`` of a small object's and ``max_area_frac`` of a large object's area), so
   specks and noise fields are not objects.  **count** = the number of objects;
3. per object, from its *soft alpha*, the share of the way each pixel lies from the
   background colour to the object's colour (blur moves alpha around but keeps its sum):
   **colour** = nearest palette colour of the object's core pixels; **position** = the grid
   cell of the alpha-weighted centroid; **size** = large when the alpha mass exceeds the
   geometric mean of the small and large areas; **shape** = the candidate whose reference
   coverage, rendered at the measured area and centroid (and +-``shift`` px around it),
   has the best soft IoU (sum of minima over sum of maxima) with the alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image
import cv2

from .render import inside_unit_shape, pool_supersamples, shape_coverage
from .spec import BACKGROUNDS, COLOURS, SHAPES, Geometry

_BG_NAMES = tuple(BACKGROUNDS)
_BG_RGB = np.asarray([BACKGROUNDS[n] for n in _BG_NAMES], dtype=np.float32)
_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_RGB = np.asarray([COLOURS[n] for n in _COLOUR_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class JudgeConfig:
    """The reader's settings; the defaults are what the accuracy tests hold it to."""

    threshold: float = 50.0  # RGB distance from the background that marks object pixels
    min_area_frac: float = 0.3  # smallest object: this share of a small object's area
    max_area_frac: float = 2.5  # largest object: this multiple of a large object's area
    shift: float = 0.5  # reference renders are also tried this many px off the centroid
    shapes: tuple[str, ...] = SHAPES  # candidate shapes (add "star" to read the concept)
    blurs: tuple[float, ...] = (1.5, 2.5)  # references are also tried blurred by these sigmas (px)

    def __post_init__(self) -> None:
        if self.threshold <= 0 or not 0 < self.min_area_frac < 1 < self.max_area_frac:
            raise ValueError("JudgeConfig: need threshold > 0 and 0 < min_area_frac < 1 < max_area_frac")
        if not self.shapes:
            raise ValueError("JudgeConfig.shapes must name at least one shape")


@dataclass(frozen=True)
class ReadObject:
    """One object as read: attributes, plus what fidelity needs (alpha map, measured colour)."""

    shape: str
    colour: str
    size: str
    cell: int
    area: float  # alpha mass in px
    centroid: tuple[float, float]  # (x, y) px
    shape_iou: float  # soft IoU of the best reference render
    rgb: tuple[float, float, float]  # measured object colour
    alpha: np.ndarray = field(repr=False, compare=False)  # (S, S) soft alpha of this object


@dataclass(frozen=True)
class Reading:
    background: str
    background_rgb: tuple[float, float, float]
    objects: tuple[ReadObject, ...]  # largest first

    @property
    def count(self) -> int:
        return len(self.objects)


def to_array(image, geometry: Geometry) -> np.ndarray:
    """(S, S, 3) float32 RGB of a PIL image or uint8/float array, resized to the world's size."""
    if isinstance(image, Image.Image):
        img = image.convert("RGB")
        if img.size != (geometry.image_size, geometry.image_size):
            img = img.resize((geometry.image_size, geometry.image_size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.float32)
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"judge: expected an RGB image (H, W, 3), got shape {arr.shape}")
    if arr.shape[:2] != (geometry.image_size, geometry.image_size):
        return to_array(Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)), geometry)
    return arr


@lru_cache(maxsize=64)
def _centroid_offset(shape: str) -> tuple[float, float]:
    """Centroid of a unit-radius shape relative to its bounding-box centre (the render anchor)."""
    size, r = 128, 40.0
    cov = shape_coverage(shape, r, size / 2, size / 2, size, size, 8).astype(np.float64)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    m = cov.sum()
    return float((cov * xs).sum() / m - size / 2) / r, float((cov * ys).sum() / m - size / 2) / r


def _window(alpha: np.ndarray, radius: float, blur: float = 0.0) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) around the alpha's support, with room for a reference that sticks out."""
    height, width = alpha.shape
    ys, xs = np.nonzero(alpha > 0.02)
    pad = int(0.5 * radius + 2 * blur) + 2
    return (max(0, ys.min() - pad), min(height, ys.max() + pad + 1),
            max(0, xs.min() - pad), min(width, xs.max() + pad + 1))


def shape_ious(alpha: np.ndarray, centroid: tuple[float, float], shape: str, radius: float, shift: float,
               box: tuple[int, int, int, int] | None = None, supersample: int = 2,
               blurs: tuple[float, ...] = ()) -> np.ndarray:
    """Soft IoUs (sum of minima / sum of maxima) of the alpha with a reference render of ``shape``
    whose centroid sits on ``centroid``, shifted by each of {-shift, 0, +shift}^2 px, sharp and
    blurred by each Gaussian sigma of ``blurs`` (px)."""
    y0, y1, x0, x1 = box or _window(alpha, radius)
    window = alpha[y0:y1, x0:x1]
    grid = (-shift, 0.0, shift) if shift else (0.0,)
    shifts = np.asarray([(sx, sy) for sx in grid for sy in grid], dtype=np.float64)
    offsets = (np.arange(supersample) + 0.5) / supersample
    px = (np.arange(x0, x1)[:, None] + offsets).reshape(-1)
    py = (np.arange(y0, y1)[:, None] + offsets).reshape(-1)
    ox, oy = _centroid_offset(shape)
    cx = centroid[0] - ox * radius + shifts[:, 0]
    cy = centroid[1] - oy * radius + shifts[:, 1]
    u = (px[None, None, :] - cx[:, None, None]) / radius
    v = (py[None, :, None] - cy[:, None, None]) / radius
    u, v = np.broadcast_arrays(u, v)
    refs = pool_supersamples(inside_unit_shape(shape, u, v).reshape(
        len(shifts), y1 - y0, supersample, x1 - x0, supersample))
    if blurs:
        refs = np.concatenate([refs] + [np.stack([cv2.GaussianBlur(r, (0, 0), b) for r in refs]) for b in blurs if b > 0])
    return np.minimum(refs, window).sum(axis=(1, 2)) / np.maximum(np.maximum(refs, window).sum(axis=(1, 2)), 1e-9)


def read_shape(alpha: np.ndarray, area: float, centroid: tuple[float, float], cfg: JudgeConfig) -> tuple[str, float]:
    """(best shape, its soft IoU): references rendered at the measured area, on the centroid."""
    radius = math.sqrt(max(area, 1.0) / math.pi)
    box = _window(alpha, radius, max(cfg.blurs, default=0.0))
    best, best_iou = cfg.shapes[0], -1.0
    for shape in cfg.shapes:
        # Strictly better only: candidates are tried in a fixed order, so ties resolve the same way.
        iou = float(shape_ious(alpha, centroid, shape, radius, cfg.shift, box, blurs=cfg.blurs).max())
        if iou > best_iou + 1e-9:
            best, best_iou = shape, iou
    return best, best_iou


def reference_iou(alpha: np.ndarray, centroid: tuple[float, float], shape: str, radius: float,
                  shift: float = 0.5) -> float:
    """Shape fidelity: best soft IoU of the alpha with ``shape`` at the reference ``radius``."""
    if not alpha.any():
        return 0.0
    return float(shape_ious(alpha, centroid, shape, radius, shift).max())


def read_image(image, geometry: Geometry = Geometry(), cfg: JudgeConfig = JudgeConfig()) -> Reading:
    """Read one image (PIL or (S, S, 3) array in 0..255) into world attributes."""
    arr = to_array(image, geometry)
    bg = np.median(arr.reshape(-1, 3), axis=0)
    bg_name = _BG_NAMES[int(np.argmin(np.linalg.norm(_BG_RGB - bg, axis=1)))]
    diff = arr - bg
    dist = np.linalg.norm(diff, axis=2)
    n, labels = cv2.connectedComponents((dist > cfg.threshold).astype(np.uint8), connectivity=8)
    small_area = math.pi * geometry.small_radius ** 2
    large_area = math.pi * geometry.large_radius ** 2
    size_cut = math.sqrt(small_area * large_area)
    objects = []
    ys, xs = np.mgrid[0:arr.shape[0], 0:arr.shape[1]] + 0.5
    for k in range(1, n):
        comp = labels == k
        n_px = int(comp.sum())
        if not cfg.min_area_frac * small_area <= n_px <= cfg.max_area_frac * large_area:
            continue
        core = comp & (dist >= 0.8 * np.percentile(dist[comp], 90))
        rgb = np.median(arr[core], axis=0)
        colour = _COLOUR_NAMES[int(np.argmin(np.linalg.norm(_COLOUR_RGB - rgb, axis=1)))]
        # Soft alpha around the component (dilated, so blurred rims count), excluding other objects.
        zone = cv2.dilate(comp.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=3).astype(bool)
        zone &= (labels == 0) | comp
        direction = rgb - bg
        norm2 = float(direction @ direction)
        alpha = np.zeros(dist.shape, dtype=np.float32)
        if norm2 > 0:
            alpha[zone] = np.clip((diff[zone] @ direction) / norm2, 0.0, 1.0)
        area = float(alpha.sum())
        if area <= 0:
            continue
        centroid = (float((alpha * xs).sum() / area), float((alpha * ys).sum() / area))
        shape, iou = read_shape(alpha, area, centroid, cfg)
        objects.append(ReadObject(shape=shape, colour=colour, size="large" if area >= size_cut else "small",
                                  cell=geometry.cell_of(*centroid), area=area, centroid=centroid, shape_iou=iou,
                                  rgb=tuple(float(c) for c in rgb), alpha=alpha))
    objects.sort(key=lambda o: (-o.area, o.cell))
    return Reading(background=bg_name, background_rgb=tuple(float(c) for c in bg), objects=tuple(objects))
