"""train(cfg) in both camera modes, the adapter folder's camera files, loading and rendering a path."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from safetensors.torch import load_file

from deft_omni.camera.io import CAMERA_JSON, ENCODER_FILE, load_camera_files
from deft_omni.camera.render import CameraRenderer, main
from deft_omni.camera.synthetic import scene_camera
from deft_omni.train import CONFIG_DIR, train

from fixtures.configs import tiny_default


def _compose(overrides, out_dir):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=tiny_default(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg


def _cam_arg(i):
    c = scene_camera(i, "val", 0, 32)
    return ",".join(str(c[k]) for k in ("fx", "fy", "cx", "cy", "qw", "qx", "qy", "qz", "tx", "ty", "tz"))


@pytest.mark.parametrize("mode", ["embed", "text"])
def test_train_save_load_render(mode, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEFT_OMNI_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    cfg = _compose([f"camera={mode}", "data=synthetic_camera", "max_steps=4", "data.synthetic.n_train=16",
                    "data.synthetic.n_val=4", "data.batch_size=4", "trainer.val_check_interval=4",
                    "callbacks.sample_every_n_steps=4", "callbacks.adapter_every_n_steps=4",
                    "callbacks.camera_sample_views=2", "callbacks.sample_prompts=[]", "callbacks.sample_num_steps=2",
                    "callbacks.progress_refresh_rate=0", "+trainer.enable_progress_bar=false"], run)
    summary = train(cfg)
    final = run / "adapters" / "final"
    assert summary["steps"] == 4 and (run / "camera_samples" / "step_000004.png").exists()
    info = json.loads((final / CAMERA_JSON).read_text())
    assert info["config"]["mode"] == mode and info["instruction"] == "a photo of sks scene"
    assert info["frame"]["num_cameras"] == 16
    bundle = load_camera_files(final)
    if mode == "embed":
        saved = load_file(str(final / ENCODER_FILE))
        assert set(saved) == {n for n in bundle.encoder.state_dict()} and saved["ray_gate"].abs().sum() > 0
        trainable_report = summary["trainable_params"]
        assert trainable_report > sum(t.numel() for t in saved.values())  # adapter + encoder counted
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
        assert any(k.startswith("extension_modules.camera_encoder.") for k in ckpt["state_dict"])
    else:
        assert not (final / ENCODER_FILE).exists() and bundle.encoder is None

    renderer = CameraRenderer.load(str(final))
    assert (renderer.hook is not None) == (mode == "embed")
    out = tmp_path / "render"
    assert main([str(final), "--camera", _cam_arg(0), "--camera", _cam_arg(1), "--frames", "2", "--steps", "2",
                 "--size", "32x32", "--out", str(out), "--mp4"]) == 0
    frames = json.loads((out / "cameras.json").read_text())["frames"]
    assert [f["frame"] for f in frames] == [0, 1] and (out / "frame_001.png").exists() and (out / "path.gif").exists()
    assert frames[0]["vector"] != frames[1]["vector"]
    assert "<|camera|>" in frames[0]["instruction"]
    if mode == "text":
        assert len(frames[0]["instruction"].split("<|camera|>")[1].split()) == 11


def test_render_bad_input(tmp_path, capsys):
    from .test_pose import _write_model

    model = _write_model(tmp_path / "sparse")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert main([str(adapter), "--camera", _cam_arg(0), "--out", str(tmp_path / "o")]) == 2
    assert "camera.mode=none" in capsys.readouterr().err
    from deft_omni.camera import CameraConfig, SceneFrame
    from deft_omni.camera.io import CameraBundle, save_camera_files

    save_camera_files(adapter, CameraBundle(CameraConfig(mode="text"), SceneFrame(), 400, "a photo"))
    cases = [(["--colmap", str(model), "--path", "a.jpg", "--frames", "4"], "at least 2 cameras"),
             (["--colmap", str(model), "--image", "nope.jpg"], "no image 'nope.jpg'"),
             (["--colmap", str(model), "--image", "broken.jpg"], "camera id 9"),
             (["--camera", "1,1,1,1,2,0,0,0,0,0,0"], "COLMAP writes unit quaternions"),
             (["--camera", "1,1,1,1,1,0,0,0,0,nan,0"], "non-finite.*ty"),
             (["--camera", "1,2,3"], "has 3 numbers")]
    for args, match in cases:
        assert main([str(adapter), *args, "--out", str(tmp_path / "o")]) == 2, args
        err = capsys.readouterr().err
        assert re.search(match, err), (args, err)
