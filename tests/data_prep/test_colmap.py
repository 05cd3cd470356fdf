"""data_prep.colmap: our own text/binary COLMAP reader against models WRITTEN by pycolmap
(the oracle: it writes what COLMAP writes), cameras on samples, and clear errors."""

from __future__ import annotations

import math
import shutil
import struct

import numpy as np
import pytest

from data_prep import colmap

from ._prep_helpers import add_bom, corrupt_jpeg, loader_batches, manifest, read_samples, save_image, skipped_keys

pycolmap = pytest.importorskip("pycolmap")

# (camera id, model name, width, height, params)
CAMERAS = [
    (1, "SIMPLE_PINHOLE", 64, 48, [70.0, 32.0, 24.0]),
    (2, "OPENCV", 64, 48, [80.0, 82.0, 31.5, 23.5, 0.1, -0.02, 0.001, 0.002]),
    (3, "SIMPLE_RADIAL", 48, 64, [60.0, 24.0, 32.0, 0.05]),
]


def _unit(q):
    n = math.sqrt(sum(v * v for v in q))
    return [v / n for v in q]


# (image id, camera id, name, quaternion w x y z, translation, 2-D points, of which observed)
IMAGES = [
    (1, 1, "frame_001.jpg", _unit([0.9, 0.1, 0.2, 0.3]), [0.5, -1.0, 2.0], 4, 2),
    (2, 2, "frame_002.jpg", _unit([1.0, 0.0, 0.0, 0.0]), [0.0, 0.0, 1.0], 0, 0),
    (3, 3, "sub dir/frame 003.jpg", _unit([0.7, -0.1, 0.6, 0.2]), [3.0, 0.25, -1.5], 3, 1),
    (7, 1, "frame_007.jpg", _unit([0.2, 0.9, 0.1, 0.3]), [-2.0, 1.0, 0.0], 2, 2),
]


def write_model(path, fmt, cameras=CAMERAS, images=IMAGES, extra_cameras=()):
    """Write a reconstruction with pycolmap (trivial rigs/frames, as COLMAP >= 3.12 writes)."""
    rec = pycolmap.Reconstruction()
    for cam_id, model, w, h, params in list(cameras) + list(extra_cameras):
        cam = pycolmap.Camera.create_from_model_name(cam_id, model, 1.0, w, h)
        cam.params = np.asarray(params, dtype=float)
        rec.add_camera_with_trivial_rig(cam)
    tracks = {}
    for image_id, cam_id, name, q, t, n2d, n3d in images:
        pts = [pycolmap.Point2D(np.array([1.5 * k, 2.0 + k])) for k in range(n2d)]
        img = pycolmap.Image(image_id=image_id, name=name, camera_id=cam_id, points2D=pts)
        w, x, y, z = q
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([x, y, z, w])), np.asarray(t, dtype=float))
        rec.add_image_with_trivial_frame(img, pose)
        for k in range(n3d):
            tracks.setdefault(k, []).append((image_id, k))
    for k, elems in sorted(tracks.items()):
        track = pycolmap.Track()
        for image_id, idx in elems:
            track.add_element(image_id, idx)
        rec.add_point3D(np.array([0.1 * k, 0.2, 5.0]), track, np.array([255, 0, 0], dtype=np.uint8))
    path.mkdir(parents=True, exist_ok=True)
    (rec.write_text if fmt == "txt" else rec.write_binary)(str(path))
    return len(tracks)


def make_scene(root, fmt, **kw):
    n_points = write_model(root / "sparse" / "0", fmt, **kw)
    for _, cam_id, name, *_ in kw.get("images", IMAGES):
        w, h = next((c[2], c[3]) for c in CAMERAS if c[0] == cam_id)
        save_image(root / "images" / name, (w, h), (30 * cam_id, 90, 160))
    return n_points


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_reader_reads_what_pycolmap_wrote(tmp_path, fmt):
    n_points = write_model(tmp_path / "m", fmt)
    assert {p.stem for p in (tmp_path / "m").iterdir()} >= {"cameras", "images", "points3D", "rigs", "frames"}
    model = colmap.read_model(str(tmp_path / "m"))
    assert model.format == fmt and model.num_points3D == n_points == 2
    assert sorted(model.extras) == sorted(f"{n}.{fmt}" for n in ("frames", "rigs"))
    for cam_id, name, w, h, params in CAMERAS:
        cam = model.cameras[cam_id]
        assert (cam.model, cam.width, cam.height) == (name, w, h)
        assert np.allclose(cam.params, params, rtol=0, atol=1e-12)
    for image_id, cam_id, name, q, t, n2d, n3d in IMAGES:
        rec = model.images[image_id]
        assert (rec.camera_id, rec.name, rec.num_points2D, rec.num_points3D) == (cam_id, name, n2d, n3d)
        assert np.allclose(rec.qvec, q, atol=1e-12) and np.allclose(rec.tvec, t, atol=1e-12)


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_multi_camera_rig_poses(tmp_path, fmt):
    """A real (non-trivial) rig: images.* hold the composed cam_from_world, which we read."""
    rec = pycolmap.Reconstruction()
    for cam_id, model, w, h, params in CAMERAS[:2]:
        cam = pycolmap.Camera.create_from_model_name(cam_id, model, 1.0, w, h)
        cam.params = np.asarray(params, dtype=float)
        rec.add_camera(cam)
    rig = pycolmap.Rig(rig_id=1)
    rig.add_ref_sensor(rec.cameras[1].sensor_id)
    rig.add_sensor(rec.cameras[2].sensor_id,
                   pycolmap.Rigid3d(pycolmap.Rotation3d(np.array(_unit([0, 0.2, 0, 0.98]))), np.array([0.5, 0, 0])))
    rec.add_rig(rig)
    for f in (1, 2):
        frame = pycolmap.Frame(frame_id=f, rig_id=1)
        frame.rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array(_unit([0.1, 0, 0, 0.99]))),
                                                np.array([0.0, 0.0, float(f)]))
        for cam_id in (1, 2):
            frame.add_data_id(pycolmap.data_t(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, cam_id), 2 * f + cam_id))
        rec.add_frame(frame)
        for cam_id in (1, 2):
            rec.add_image(pycolmap.Image(image_id=2 * f + cam_id, name=f"f{f}_c{cam_id}.jpg", camera_id=cam_id,
                                         frame_id=f))
        rec.register_frame(f)
    expected = {i.image_id: i.cam_from_world() for i in rec.images.values()}
    (tmp_path / "m").mkdir()
    (rec.write_text if fmt == "txt" else rec.write_binary)(str(tmp_path / "m"))
    model = colmap.read_model(str(tmp_path / "m"))
    assert set(model.images) == set(expected)
    for image_id, pose in expected.items():
        x, y, z, w = pose.rotation.quat
        assert np.allclose(model.images[image_id].qvec, [w, x, y, z], atol=1e-9)
        assert np.allclose(model.images[image_id].tvec, pose.translation, atol=1e-9)
        centre = colmap.camera_centre(model.images[image_id].qvec, model.images[image_id].tvec)
        assert np.allclose(centre, pose.inverse().translation, atol=1e-9)


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_converts_scene_with_cameras(tmp_path, fmt, processor):
    root = tmp_path / "south-building"
    make_scene(root, fmt)
    corrupt_jpeg(root / "images" / "frame_007.jpg")
    save_image(root / "images" / "unregistered.jpg")
    out = tmp_path / "out"
    assert colmap.main(["--root", str(root), "--out", str(out), "--max-side", "32", "--quiet"]) == 0
    samples = {s.key: s for s in read_samples(out)}
    assert set(samples) == {"img_000001_frame_001", "img_000002_frame_002", "img_000003_sub_dir_frame_003"}
    s1 = samples["img_000001_frame_001"]
    cam = s1.camera
    assert s1.output.size == (32, 24) and s1.task == "sfm_camera"
    assert cam["fx"] == cam["fy"] == pytest.approx(35.0) and (cam["cx"], cam["cy"]) == (16.0, 12.0)
    assert (cam["width"], cam["height"], cam["model_id"]) == (32.0, 24.0, 0.0)
    assert [cam[k] for k in colmap.POSE_KEYS] == pytest.approx(IMAGES[0][3] + IMAGES[0][4])
    assert s1.meta["model"] == "SIMPLE_PINHOLE" and s1.meta["params"] == [70.0, 32.0, 24.0]
    assert s1.meta["num_points3D"] == 2 and s1.meta["colmap_size"] == [64, 48]
    assert s1.instruction == "a photo of sks south building"  # numbers stay in `camera`
    s2 = samples["img_000002_frame_002"].camera
    assert (s2["fx"], s2["fy"], s2["k1"], s2["p2"]) == pytest.approx((40.0, 41.0, 0.1, 0.002))
    s3 = samples["img_000003_sub_dir_frame_003"]
    assert s3.output.size == (24, 32) and s3.camera["k"] == pytest.approx(0.05)
    assert s3.meta["camera_centre"] == pytest.approx(colmap.camera_centre(IMAGES[2][3], IMAGES[2][4]))
    assert skipped_keys(out)["img_000007_frame_007"].startswith("corrupt image:")
    m = manifest(out)
    assert m["options"]["format"] == fmt and m["options"]["stats"]["left_out"] == {
        "image files not registered in the model": 1}
    loader_batches(out, processor)


def test_original_intrinsics_and_template(tmp_path):
    root = tmp_path / "scene"
    make_scene(root, "txt", images=IMAGES[:1])
    out = tmp_path / "out"
    assert colmap.main(["--root", str(root), "--out", str(out), "--max-side", "32", "--quiet", "--intrinsics",
                        "original", "--template", "{scene} seen with focal {fx}", "--scene-name", "yard"]) == 0
    (s,) = read_samples(out)
    assert s.camera["fx"] == 70.0 and s.camera["width"] == 64.0 and s.instruction == "yard seen with focal 70"


def _patch_text(path, old, new):
    path.write_text(path.read_text().replace(old, new))


def test_unknown_model_and_missing_camera_are_clear(tmp_path, capsys):
    root = tmp_path / "a"
    make_scene(root, "txt")
    _patch_text(root / "sparse/0/cameras.txt", "3 SIMPLE_RADIAL", "3 WEIRD_MODEL")
    assert colmap.main(["--root", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cameras.txt line" in err and "unknown camera model 'WEIRD_MODEL'" in err and "0 SIMPLE_PINHOLE" in err
    root = tmp_path / "b"
    make_scene(root, "bin")
    data = bytearray((root / "sparse/0/cameras.bin").read_bytes())
    # first camera record: u64 count, then i32 id, i32 model id
    struct.pack_into("<i", data, 12, 99)
    (root / "sparse/0/cameras.bin").write_bytes(bytes(data))
    assert colmap.main(["--root", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "cameras.bin: camera" in (err := capsys.readouterr().err) and "unknown camera model id 99" in err
    root = tmp_path / "c"
    make_scene(root, "txt")
    lines = (root / "sparse/0/images.txt").read_text().splitlines()
    lines = [ln.replace(" 2 frame_002.jpg", " 9 frame_002.jpg") for ln in lines]
    (root / "sparse/0/images.txt").write_text("\n".join(lines) + "\n")
    assert colmap.main(["--root", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "image 2 ('frame_002.jpg') refers to camera 9, which cameras.txt does not define (cameras: 1, 2, 3)" in err
    root = tmp_path / "d"
    make_scene(root, "bin")
    write_model(tmp_path / "fewer", "bin", cameras=CAMERAS[:1], images=IMAGES[:1])
    shutil.copy(tmp_path / "fewer/cameras.bin", root / "sparse/0/cameras.bin")
    assert colmap.main(["--root", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "refers to camera 2, which cameras.bin does not define (cameras: 1)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_model_without_focal_length_is_named(tmp_path, capsys):
    root = tmp_path / "pano"
    equi = [(4, "EQUIRECTANGULAR", 64, 32, [64.0, 32.0])]
    write_model(root / "sparse/0", "bin", extra_cameras=equi,
                images=IMAGES[:1] + [(5, 4, "pano.jpg", [1.0, 0, 0, 0], [0, 0, 0], 0, 0)])
    assert colmap.main(["--root", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "camera 4 has model EQUIRECTANGULAR, which has no focal length / principal point" in err
    assert "'pano.jpg'" in err


def test_wrong_root_and_truncated_binary(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert colmap.main(["--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no COLMAP model" in (err := capsys.readouterr().err) and "sparse/0/{cameras" in err
    root = tmp_path / "t"
    make_scene(root, "bin")
    data = (root / "sparse/0/images.bin").read_bytes()
    (root / "sparse/0/images.bin").write_bytes(data[:-10])
    assert colmap.main(["--root", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "images.bin is truncated" in capsys.readouterr().err
    assert colmap.main(["--root", str(root), "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "has no cameras/images" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["text", "embed"])
def test_sfm_camera_experiment_trains_on_converted_scene(tmp_path, monkeypatch, mode):
    """experiment=sfm_camera reads ${DEFT_OMNI_DATA}/sfm_camera/train as the converter wrote it,
    in both camera modes; the adapter folder carries the scene frame of these cameras."""
    import json

    from deft_omni.camera.io import CAMERA_JSON
    from deft_omni.train import train
    from tests.test_train import _compose

    data = tmp_path / "data"
    make_scene(tmp_path / "scene", "bin")
    assert colmap.main(["--root", str(tmp_path / "scene"), "--out", str(data / "sfm_camera" / "train"),
                        "--max-side", "32", "--quiet"]) == 0
    monkeypatch.setenv("DEFT_OMNI_DATA", str(data))
    monkeypatch.setenv("DEFT_OMNI_CACHE", str(tmp_path / "cache"))
    cfg = _compose(["experiment=sfm_camera", f"camera={mode}", "model=omnigen_tiny", "trainer=cpu", "max_steps=3",
                    "data.num_workers=0", "data.max_image_side=32", "data.batch_size=1",
                    "trainer.val_check_interval=3", "callbacks.sample_every_n_steps=3",
                    "callbacks.adapter_every_n_steps=3", "callbacks.resume_every_n_steps=3",
                    "callbacks.camera_sample_views=1", "callbacks.camera_sample_size=32",
                    "callbacks.sample_num_steps=2"], tmp_path / "run")
    summary = train(cfg)
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    info = json.loads((tmp_path / "run" / "adapters" / "final" / CAMERA_JSON).read_text())
    assert info["config"]["mode"] == mode and info["frame"]["num_cameras"] == len(IMAGES)


def test_text_model_with_a_bom(tmp_path):
    """cameras.txt / images.txt re-saved by a Windows editor (UTF-8 with BOM) read as before."""
    write_model(tmp_path / "m", "txt")
    plain = colmap.read_model(str(tmp_path / "m"))
    for name in ("cameras.txt", "images.txt", "points3D.txt"):
        add_bom(tmp_path / "m" / name)
    bom = colmap.read_model(str(tmp_path / "m"))
    assert bom.cameras == plain.cameras and bom.images == plain.images and bom.num_points3D == plain.num_points3D
