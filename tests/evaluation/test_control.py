"""Canny F1 on hand-drawn edge maps, SSIM vs torchmetrics, depth RMSE vs a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from deft_omni.evaluation import canny_f1, depth_rmse, edge_f1, predict_depth, ssim
from deft_omni.evaluation.demo import shapes_image


def _square(size=20, lo=5, hi=14, shift=0):
    m = np.zeros((size, size), bool)
    m[lo + shift, lo:hi + 1] = m[hi + shift, lo:hi + 1] = True
    m[lo + shift:hi + shift + 1, lo] = m[lo + shift:hi + shift + 1, hi] = True
    return m


def test_edge_f1_known_answers():
    sq = _square()
    assert edge_f1(sq, sq).f1 == 1.0
    other = np.zeros_like(sq)
    other[0, :] = True  # a line far from the square
    score = edge_f1(other, sq)
    assert (score.precision, score.recall, score.f1) == (0.0, 0.0, 0.0)
    # The prediction keeps 4 of the reference's 8 pixels and adds 4 wrong ones:
    ref = np.zeros((10, 10), bool)
    ref[2, 1:9] = True
    pred = np.zeros_like(ref)
    pred[2, 1:5] = True
    pred[7, 1:5] = True
    score = edge_f1(pred, ref)
    assert score.precision == pytest.approx(0.5) and score.recall == pytest.approx(0.5)
    pred[7, 1:5] = False
    pred[2, 1:3] = False  # now 2 predicted, both right: P = 1, R = 2/8
    score = edge_f1(pred, ref)
    assert score.precision == 1.0 and score.recall == pytest.approx(0.25)
    assert score.f1 == pytest.approx(2 * 1.0 * 0.25 / 1.25)


def test_edge_f1_tolerance_and_empty_maps():
    sq, shifted = _square(), _square(shift=1)
    # A 1-pixel vertical shift: each square has 36 pixels; only the two vertical sides overlap, on 9 pixels each.
    exact = edge_f1(shifted, sq, tolerance=0)
    assert exact.precision == pytest.approx(18 / 36) and exact.recall == pytest.approx(18 / 36)
    assert exact.f1 == pytest.approx(0.5)
    assert edge_f1(shifted, sq, tolerance=1).f1 == 1.0
    empty = np.zeros_like(sq)
    assert edge_f1(empty, empty).f1 == 1.0
    assert edge_f1(empty, sq).f1 == 0.0 and edge_f1(sq, empty).f1 == 0.0
    with pytest.raises(ValueError, match="shape"):
        edge_f1(sq, sq[:5])


def test_canny_f1_of_an_image_against_its_own_edges():
    import cv2

    img = shapes_image(11, size=64)
    cond = Image.fromarray(cv2.Canny(np.asarray(img.convert("L")), 100, 200)).convert("RGB")
    assert canny_f1(img, cond).f1 == 1.0
    blurred = canny_f1(img.filter(ImageFilter.GaussianBlur(2)), cond)
    assert blurred.f1 < 1.0
    # Different sizes: the output is resized to the condition's size first.
    assert canny_f1(img.resize((128, 128), Image.NEAREST), cond).f1 > blurred.f1 - 1.0


def test_ssim_equals_torchmetrics():
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    target = shapes_image(21, size=48)
    gen = target.filter(ImageFilter.GaussianBlur(1))

    def t(img):
        return torch.tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1)[None] / 255

    metric = StructuralSimilarityIndexMeasure(data_range=1.0)
    expected = float(metric(t(gen), t(target)))
    assert ssim(gen, target) == pytest.approx(expected, abs=1e-6)
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-4)  # float32 arithmetic
    assert 0.2 < expected < 0.99


def _minmax(x):
    return (x - x.min()) / (x.max() - x.min())


def test_depth_rmse_matches_hand_computation(loaded):
    depth = loaded["depth"]
    gen = shapes_image(31, size=48)
    cond = shapes_image(32, size=40).convert("L").filter(ImageFilter.GaussianBlur(2)).convert("RGB")
    with torch.no_grad():
        pix = depth.image_processor(images=[gen], return_tensors="pt")["pixel_values"]
        raw = depth.model(pixel_values=pix).predicted_depth[0].double()
    pred = predict_depth(depth, [gen])[0]
    assert np.allclose(pred, raw.numpy(), atol=1e-6) and raw.std() > 1e-3
    up = torch.nn.functional.interpolate(raw[None, None], size=(40, 40), mode="bilinear", align_corners=False)[0, 0]
    c = np.asarray(cond.convert("L"), np.float64) / 255
    expected = np.sqrt(np.mean((_minmax(up.numpy()) - _minmax(c)) ** 2)) * 255
    assert depth_rmse(pred, cond) == pytest.approx(expected, rel=1e-9)
    a = np.stack([up.numpy().ravel(), np.ones(c.size)], 1)
    coef = np.linalg.lstsq(a, c.ravel(), rcond=None)[0]
    expected_ss = np.sqrt(np.mean((a @ coef - c.ravel()) ** 2)) * 255
    assert depth_rmse(pred, cond, align="scale-shift") == pytest.approx(expected_ss, rel=1e-9)


def test_depth_rmse_known_answers():
    c = np.tile(np.linspace(0, 1, 16), (16, 1))
    cond = Image.fromarray((c * 255).round().astype(np.uint8)).convert("RGB")
    cond_values = np.asarray(cond.convert("L"), np.float64) / 255
    affine = 3.0 * cond_values + 7.0  # any positive scale and shift of the condition is a perfect prediction
    assert depth_rmse(affine, cond) == pytest.approx(0.0, abs=1e-9)
    assert depth_rmse(affine, cond, align="scale-shift") == pytest.approx(0.0, abs=1e-9)
    assert depth_rmse(affine, cond, invert=True) > 100  # the opposite polarity is far off
    assert depth_rmse(np.zeros((16, 16)), cond) == pytest.approx(np.sqrt(np.mean(cond_values ** 2)) * 255)
