"""Quaternion normalisation and sign, slerp against known rotations, centres on a hand-made model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deft_omni.camera.config import CameraError
from deft_omni.camera.frame import SceneFrame
from deft_omni.camera.pose import (
    camera_centre,
    normalise_quaternion,
    path_parameters,
    quat_to_rotmat,
    rotmat_to_quat,
    slerp,
)
from deft_omni.camera.render import colmap_camera, interpolate_path, key_from_dict


def rodrigues(axis, angle):
    """Rotation matrix from axis-angle, computed independently of the quaternion code."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def quat(axis, angle):
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    return np.array([math.cos(angle / 2), *(math.sin(angle / 2) * k)])


def test_normalise_fixes_sign_and_scale():
    q = quat([1, 2, 3], 0.7)
    assert np.allclose(normalise_quaternion(-q), q)
    assert np.allclose(normalise_quaternion(q * 1.0004), q)
    w0 = np.array([0.0, -0.6, 0.8, 0.0])  # w = 0: first non-zero component made positive
    assert np.allclose(normalise_quaternion(w0), -w0)
    assert np.allclose(quat_to_rotmat(normalise_quaternion(-q)), rodrigues([1, 2, 3], 0.7))


@pytest.mark.parametrize("bad,match", [([1.0, 0, 0, float("nan")], "non-finite.*qz"),
                                       ([float("inf"), 0, 0, 0], "non-finite.*qw"),
                                       ([1.2, 0, 0, 0], "norm 1.2.*COLMAP writes unit quaternions")])
def test_bad_quaternions(bad, match):
    with pytest.raises(CameraError, match=match):
        normalise_quaternion(bad, "cam.json field q")


def test_rotmat_quat_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        axis, angle = rng.normal(size=3), rng.uniform(0, math.pi)
        q = rotmat_to_quat(rodrigues(axis, angle))
        assert np.allclose(quat_to_rotmat(q), rodrigues(axis, angle), atol=1e-12)
        assert q[0] >= 0


def test_slerp_known_rotations():
    q0, q1 = quat([0, 0, 1], 0.0), quat([0, 0, 1], math.pi / 2)
    for s in (0.0, 0.25, 0.5, 1.0):
        assert np.allclose(quat_to_rotmat(slerp(q0, q1, s)), rodrigues([0, 0, 1], s * math.pi / 2), atol=1e-12)
    # q1 given with the other sign: still the short way round, the same result
    assert np.allclose(slerp(q0, -q1, 0.5), slerp(q0, q1, 0.5))
    a, b = quat([1, 1, 0], 0.3), quat([1, 1, 0], 2.1)
    assert np.allclose(quat_to_rotmat(slerp(a, b, 0.5)), rodrigues([1, 1, 0], 1.2), atol=1e-12)


def _write_model(folder, qw_sign=1.0):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.txt").write_text("# cams\n1 PINHOLE 64 48 50 52 32 24\n2 SIMPLE_PINHOLE 64 64 40 32 32\n")
    q = quat([0, 1, 0], math.pi / 2) * qw_sign
    (folder / "images.txt").write_text(
        "# images\n"
        f"1 {q[0]} {q[1]} {q[2]} {q[3]} 1 2 3 1 a.jpg\n\n"
        "2 1 0 0 0 0 0 5 2 b.jpg\n\n"
        "3 1 0 0 0 0 0 0 9 broken.jpg\n\n")
    return folder


def test_centre_on_hand_made_model(tmp_path):
    from data_prep.colmap import read_model

    model = read_model(str(_write_model(tmp_path / "sparse")), "txt")
    a = colmap_camera(model, "a.jpg")
    # R = rotation by 90 deg about y: R^T (1, 2, 3) = (-3, 2, 1), so C = -R^T t = (3, -2, -1)
    assert np.allclose(a.centre, [3, -2, -1])
    assert np.allclose(a.intrinsics, [50 / 64, 52 / 48, 0.5, 0.5])
    b = colmap_camera(model, "2")  # by image id; SIMPLE_PINHOLE: fx = fy = f
    assert np.allclose(b.centre, [0, 0, -5]) and np.allclose(b.intrinsics, [40 / 64, 40 / 64, 0.5, 0.5])
    # the same model written with -q gives the same camera
    neg = read_model(str(_write_model(tmp_path / "neg", -1.0)), "txt")
    assert np.allclose(colmap_camera(neg, "a.jpg").q, a.q) and np.allclose(colmap_camera(neg, "a.jpg").centre, a.centre)
    with pytest.raises(CameraError, match=r"no image 'c.jpg'.*'a.jpg', 'b.jpg'"):
        colmap_camera(model, "c.jpg")
    with pytest.raises(CameraError, match="camera id 9.*camera ids: 1, 2"):
        colmap_camera(model, "broken.jpg")


def test_frame_and_translation():
    frame = SceneFrame.from_centres([[1, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -2, 0]])
    assert np.allclose(frame.centre, 0) and math.isclose(frame.scale, math.sqrt(2.5))
    shifted = SceneFrame((1.0, 2.0, 3.0), 2.0)
    q, centre = quat([1, 0, 1], 0.4), np.array([3.0, 0.0, -1.0])
    t = -quat_to_rotmat(q) @ centre
    t_norm = shifted.normalise_translation(q, t)
    assert np.allclose(camera_centre(q, t_norm), (centre - [1, 2, 3]) / 2)


def test_path_interpolation_and_errors():
    cam = {"fx": 32, "fy": 32, "cx": 16, "cy": 16, "tx": 0, "ty": 0, "tz": 4, "width": 32, "height": 32}
    k0 = key_from_dict({**cam, "qw": 1, "qx": 0, "qy": 0, "qz": 0}, "k0")
    q1 = quat([0, 1, 0], 1.0)
    k1 = key_from_dict({**cam, "fx": 64, "qw": q1[0], "qx": q1[1], "qy": q1[2], "qz": q1[3]}, "k1")
    frames = interpolate_path([k0, k1], 3)
    assert np.allclose(frames[0].q, k0.q) and np.allclose(frames[-1].q, k1.q)
    assert np.allclose(quat_to_rotmat(frames[1].q), rodrigues([0, 1, 0], 0.5))
    assert np.allclose(frames[1].centre, (k0.centre + k1.centre) / 2)
    assert math.isclose(frames[1].intrinsics[0], 1.5)
    assert path_parameters(3, 5) == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (1, 1.0)]
    with pytest.raises(CameraError, match="at least 2 cameras"):
        interpolate_path([k0], 4)
    with pytest.raises(CameraError, match="non-finite.*tz"):
        key_from_dict({**cam, "tz": float("inf"), "qw": 1, "qx": 0, "qy": 0, "qz": 0}, "bad")
