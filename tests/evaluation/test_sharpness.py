"""Sharpness = variance of the Laplacian: OpenCV's value, scipy's as an independent path, blur lowers it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage

from deft_omni.evaluation import laplacian_variance
from deft_omni.evaluation.demo import shapes_image


def test_value_equals_cv2_and_scipy():
    import cv2

    img = shapes_image(7, size=64)
    gray = np.asarray(img.convert("L"))
    expected_cv2 = cv2.Laplacian(gray, cv2.CV_64F).var()
    # OpenCV's default border (BORDER_REFLECT_101) is scipy's "mirror".
    lap = ndimage.convolve(gray.astype(np.float64), np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], float),
                           mode="mirror")
    value = laplacian_variance(img)
    assert value == pytest.approx(expected_cv2, rel=1e-12)
    assert value == pytest.approx(lap.var(), rel=1e-9)
    assert laplacian_variance(gray) == pytest.approx(value, rel=1e-12)


def test_blur_lowers_sharpness_and_flat_is_zero():
    img = shapes_image(3, size=64)
    blurred = img.filter(ImageFilter.GaussianBlur(2))
    assert laplacian_variance(blurred) < 0.5 * laplacian_variance(img)
    assert laplacian_variance(Image.new("RGB", (32, 32), (90, 120, 30))) == 0.0
