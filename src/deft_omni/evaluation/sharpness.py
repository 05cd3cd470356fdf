"""Image sharpness as the variance of the Laplacian (the paper's "Sharpness" column).

Computed on the 8-bit grayscale image at its stored size with OpenCV's 3x3 Laplacian
(``ksize=1``) in float64; a blurred image loses high frequencies, so its value drops.
The number depends on resolution and is not bounded: compare images of one size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .images import to_gray_uint8


def laplacian_variance(img: Image.Image | np.ndarray) -> float:
    """Variance of ``cv2.Laplacian(gray, CV_64F)`` of an RGB/gray PIL image or uint8 array."""
    import cv2

    gray = to_gray_uint8(img) if isinstance(img, Image.Image) else np.asarray(img)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())
