"""Draw world scenes: anti-aliased filled shapes of equal area per size class (numpy + PIL only).

Every shape is defined in *unit* coordinates, scaled so its area is pi (the area of the unit
circle); an object of "radius" r therefore covers pi r^2 pixels whatever its shape.  A pixel's
coverage is the share of its ``supersample`` x ``supersample`` sample points inside the shape,
and colours are blended by coverage, so edges are smooth and renders are exact functions of the
spec (no PIL rasteriser rounding).  Shapes are placed by the centre of their bounding box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .spec import BACKGROUNDS, COLOURS, Geometry, ObjectSpec, SceneSpec

_SQUARE_HALF = math.sqrt(math.pi) / 2
_DIAMOND_HALF = math.sqrt(math.pi / 2)
_TRIANGLE_HEIGHT = math.sqrt(2 * math.pi)  # isosceles, base = height: area h^2 / 2
_CROSS_ARM = math.sqrt(9 * math.pi / 20)  # plus sign, arm half-width = arm half-length / 3
_CROSS_HALF_WIDTH = _CROSS_ARM / 3
_STAR_INNER = 0.55  # inner / outer radius of the five-pointed concept star


def _star_outer() -> float:
    # Ten triangles of sides R and rho R at 36 degrees: area 5 rho R^2 sin 36.
    return math.sqrt(math.pi / (5 * _STAR_INNER * math.sin(math.radians(36))))


def _star_polygon() -> np.ndarray:
    outer = _star_outer()
    angles = -math.pi / 2 + np.arange(10) * math.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, outer, outer * _STAR_INNER)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    top, bottom = pts[:, 1].min(), pts[:, 1].max()
    pts[:, 1] -= (top + bottom) / 2  # bounding-box centre at the origin, as the other shapes
    return pts


_STAR = _star_polygon()
# Half extents (x, y) of each unit shape's bounding box: where a renderer must look.
HALF_EXTENT: dict[str, tuple[float, float]] = {
    "circle": (1.0, 1.0),
    "square": (_SQUARE_HALF, _SQUARE_HALF),
    "diamond": (_DIAMOND_HALF, _DIAMOND_HALF),
    "triangle": (_TRIANGLE_HEIGHT / 2, _TRIANGLE_HEIGHT / 2),
    "cross": (_CROSS_ARM, _CROSS_ARM),
    "star": (float(np.abs(_STAR[:, 0]).max()), float(np.abs(_STAR[:, 1]).max())),
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over the points."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % n]
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def inside_unit_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of the points (u, v) inside the unit-area-pi shape (y grows downwards)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= _SQUARE_HALF) & (np.abs(v) <= _SQUARE_HALF)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= _DIAMOND_HALF
    if shape == "triangle":
        half = _TRIANGLE_HEIGHT / 2
        # Apex at (0, -half), base from (-half, half) to (half, half): |u| <= (v + half) / 2.
        return (v <= half) & (np.abs(u) <= (v + half) / 2)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= _CROSS_ARM) & (av <= _CROSS_HALF_WIDTH)) | ((av <= _CROSS_ARM) & (au <= _CROSS_HALF_WIDTH))
    if shape == "star":
        return _inside_polygon(u, v, _STAR)
    raise ValueError(f"unknown shape {shape!r}")


def pool_supersamples(hit: np.ndarray) -> np.ndarray:
    """(..., H, s, W, s) booleans -> (..., H, W) float32 coverage (mean over each s x s block).

    Summing strided slices is much faster than numpy's reduction over the tiny sub-sample axes.
    """
    s = hit.shape[-1]
    return sum(hit[..., a, :, b].astype(np.float32) for a in range(s) for b in range(s)) / (s * s)


def shape_coverage(shape: str, radius: float, cx: float, cy: float, height: int, width: int,
                   supersample: int = 4) -> np.ndarray:
    """(height, width) float32 coverage in [0, 1] of a shape centred at (cx, cy) px."""
    out = np.zeros((height, width), dtype=np.float32)
    hx, hy = HALF_EXTENT[shape]
    x0, x1 = max(0, int(math.floor(cx - hx * radius)) - 1), min(width, int(math.ceil(cx + hx * radius)) + 1)
    y0, y1 = max(0, int(math.floor(cy - hy * radius)) - 1), min(height, int(math.ceil(cy + hy * radius)) + 1)
    if x0 >= x1 or y0 >= y1:
        return out
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1)
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1)
    u = (xs[None, :] - cx) / radius
    v = (ys[:, None] - cy) / radius
    u, v = np.broadcast_arrays(u, v)
    cov = pool_supersamples(inside_unit_shape(shape, u, v).reshape(y1 - y0, supersample, x1 - x0, supersample))
    out[y0:y1, x0:x1] = cov
    return out


def object_centre(obj: ObjectSpec, geometry: Geometry) -> tuple[float, float]:
    cx, cy = geometry.cell_centre(obj.cell)
    return cx + obj.dx, cy + obj.dy


def object_coverage(obj: ObjectSpec, geometry: Geometry) -> np.ndarray:
    """(S, S) coverage of one object of a scene, as drawn."""
    cx, cy = object_centre(obj, geometry)
    size = geometry.image_size
    return shape_coverage(obj.shape, geometry.radius(obj.size), cx, cy, size, size, geometry.supersample)


def render_array(scene: SceneSpec, geometry: Geometry = Geometry()) -> np.ndarray:
    """(S, S, 3) float32 RGB in [0, 255] of a scene."""
    return render_objects(scene.objects, scene.background, geometry)


def render_objects(objects: Sequence[ObjectSpec], background: str, geometry: Geometry = Geometry()) -> np.ndarray:
    """(S, S, 3) float32 RGB of any objects on a background (scenes hold at most two; the VAE
    also trains on busier images)."""
    size = geometry.image_size
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = np.asarray(BACKGROUNDS[background], dtype=np.float32)
    for obj in objects:
        cov = object_coverage(obj, geometry)[..., None]
        img = img * (1.0 - cov) + np.asarray(COLOURS[obj.colour], dtype=np.float32) * cov
    return img


def render_scene(scene: SceneSpec, geometry: Geometry = Geometry()) -> Image.Image:
    """The scene as an RGB PIL image of ``geometry.image_size`` pixels a side."""
    arr = np.clip(np.rint(render_array(scene, geometry)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")
