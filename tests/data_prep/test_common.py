"""data_prep.common: atomic output, --overwrite, interruption, ordered workers, images, keys."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from data_prep import common, omnigen_jsonl

from ._prep_helpers import corrupt_jpeg, manifest, save_image

REPO = Path(__file__).resolve().parents[2]


def _jsonl_set(tmp_path, n=6, size=(40, 32)):
    imgs = tmp_path / "imgs"
    for i in range(n):
        save_image(imgs / f"{i}.jpg", size, (20 * i % 255, 100, 50))
    path = tmp_path / "t.jsonl"
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"task_type": "t2i", "instruction": f"image {i}", "input_images": [],
                                 "output_image": f"{i}.jpg"}) + "\n")
    return str(path), str(imgs)


def _run(jsonl, imgs, out, *extra):
    return omnigen_jsonl.main(["--jsonl", jsonl, "--images", imgs, "--out", str(out), "--quiet", *extra])


def test_overwrite_is_refused_then_allowed(tmp_path, capsys):
    jsonl, imgs = _jsonl_set(tmp_path)
    out = tmp_path / "out"
    assert _run(jsonl, imgs, out) == 0
    first = manifest(out)
    assert _run(jsonl, imgs, out) == 2
    err = capsys.readouterr().err
    assert "already holds a complete conversion (manifest.json present); pass --overwrite" in err
    assert manifest(out) == first
    assert _run(jsonl, imgs, out, "--overwrite", "--maxcount", "2") == 0
    assert len(manifest(out)["shards"]) == 3 and not list(tmp_path.glob("out.*"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert _run(jsonl, imgs, foreign) == 2
    assert "is not a finished shard folder" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_interrupted_run_leaves_nothing_complete_looking(tmp_path, monkeypatch, capsys):
    jsonl, imgs = _jsonl_set(tmp_path)
    out = tmp_path / "out"
    assert _run(jsonl, imgs, out) == 0
    before = (out / "manifest.json").read_bytes()
    calls = {"n": 0}
    real_build = omnigen_jsonl.build

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_build(job)

    monkeypatch.setattr(omnigen_jsonl, "build", flaky)
    assert _run(jsonl, imgs, out, "--overwrite") == 130
    assert "interrupted" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before  # the old complete output is untouched
    assert not list(tmp_path.glob("out.tmp-*"))
    fresh = tmp_path / "fresh"
    calls["n"] = 0
    assert _run(jsonl, imgs, fresh) == 130
    assert not fresh.exists() and not list(tmp_path.glob("fresh.tmp-*"))


def test_sigterm_and_leftovers_of_a_killed_run(tmp_path):
    # A leftover of a SIGKILLed run: a temp folder whose pid is gone -> removed by the next run.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "out.tmp-stale1"
    stale.mkdir()
    (stale / ".converter-pid").write_text(str(dead.pid))
    (stale / "shard-000000.tar").write_bytes(b"partial")
    imgs = tmp_path / "imgs"
    Image.effect_noise((1024, 1024), 60).convert("RGB").save(imgs.mkdir() or imgs / "big.jpg", quality=90)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"task_type": "t", "instruction": f"n {i}", "output_image": "big.jpg"})
                             + "\n" for i in range(2000)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.omnigen_jsonl", "--jsonl", str(jsonl), "--images",
                             str(imgs), "--out", str(out), "--max-side", "64", "--reencode", "--quiet"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not [p for p in tmp_path.glob("out.tmp-*") if p.name != stale.name]:
        time.sleep(0.05)
    time.sleep(0.3)  # into the conversion loop (2000 full decodes of a 1024 px JPEG: several seconds)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "removing the leftover temporary folder" in err and "interrupted" in err
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))


def test_workers_give_identical_shards(tmp_path):
    jsonl, imgs = _jsonl_set(tmp_path, n=12)
    corrupt_jpeg(Path(imgs) / "5.jpg")
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(jsonl, imgs, a, "--maxcount", "4", "--reencode") == 0
    assert _run(jsonl, imgs, b, "--maxcount", "4", "--reencode", "--workers", "2") == 0
    names = sorted(p.name for p in a.glob("*.tar"))
    assert names == sorted(p.name for p in b.glob("*.tar")) and len(names) == 3
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    ma, mb = manifest(a), manifest(b)
    assert ma["shards"] == mb["shards"] and ma["skipped"] == mb["skipped"] and len(ma["skipped"]) == 1


def test_keys_and_words():
    assert common.make_key("a.b c", 3, "x/y") == "a_b_c_3_x_y"
    assert common.make_key("...") == "x"
    assert common.words_from_name("012_aveda_shampoo") == "aveda shampoo"
    assert common.words_from_name("office-desk_03") == "office desk"
    assert common.words_from_name("007") == "007"


def test_prepare_image_passthrough_resize_exif_alpha(tmp_path):
    small = save_image(tmp_path / "s.jpg", (40, 30))
    data, size = common.prepare_image(small, max_side=64, image_format="jpg")
    assert data == Path(small).read_bytes() and size == (40, 30)
    big = save_image(tmp_path / "b.jpg", (800, 400))
    img, size = common.prepare_image(big, max_side=64, image_format="jpg")
    assert isinstance(img, Image.Image) and size == (64, 32) and img.mode == "RGB"
    png_as_jpg, _ = common.prepare_image(small, max_side=64, image_format="png")
    assert isinstance(png_as_jpg, Image.Image)  # format differs: re-encoded by make_sample
    # EXIF orientation 6 (rotate 90 CW): stored 40x30, shown 30x40.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "r.jpg"
    Image.new("RGB", (40, 30), (10, 200, 10)).save(rotated, exif=exif)
    img, size = common.prepare_image(str(rotated), max_side=64, image_format="jpg")
    assert size == (30, 40)
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    img = common.load_rgb(buf.getvalue())
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(common.ImageError, match="corrupt image"):
        common.prepare_image(corrupt_jpeg(tmp_path / "c.jpg"), max_side=64, image_format="jpg")
    with pytest.raises(common.ImageError, match="not a readable image"):
        common.load_rgb(b"plain text, not an image")
    with pytest.raises(common.ImageError, match="image file not found"):
        common.load_rgb(tmp_path / "missing.png")


def test_masks_and_colours(tmp_path):
    Image.new("1", (8, 8), 1).save(tmp_path / "m1.png")
    assert common.load_mask(tmp_path / "m1.png").getextrema() == (255, 255)
    Image.new("L", (8, 8), 1).save(tmp_path / "m01.png")
    assert common.load_mask(tmp_path / "m01.png", size=(4, 4)).size == (4, 4)
    assert common.load_mask(tmp_path / "m01.png").getextrema() == (255, 255)
    assert common.parse_colour("#ff8000") == (255, 128, 0) and common.parse_colour("1,2,3") == (1, 2, 3)
    with pytest.raises(Exception, match="colour"):
        common.parse_colour("mauve-ish")


def test_captioner_spec_errors():
    with pytest.raises(common.ConversionError, match="expected 'module:function'"):
        common.load_callable("nocolon")
    with pytest.raises(common.ConversionError, match="cannot import 'no_such_mod_xyz'"):
        common.load_callable("no_such_mod_xyz:f")
    with pytest.raises(common.ConversionError, match="has no attribute 'nope'"):
        common.load_callable("os.path:nope")
    assert common.load_callable("os.path:join") is os.path.join


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_makefile_prepare_targets():
    env = {**os.environ, "MAKEFLAGS": ""}
    roots = {"prepare-jsonl": ("JSONL", "omnigen_jsonl", "/d/omnigen/train"),
             "prepare-insdet": ("INSDET_ROOT", "insdet objects", "/d/insdet_scenes/train"),
             "prepare-colmap": ("COLMAP_ROOT", "colmap", "/d/sfm_camera/train"),
             "prepare-visualcloze": ("GRAPH200K_ROOT", "visualcloze", "/d/visualcloze/test"),
             "prepare-dreambooth": ("DREAMBOOTH_ROOT", "dreambooth dreambooth", "/d/dreambooth/train"),
             "prepare-dreambench": ("DREAMBENCH_ROOT", "dreambooth dreambench", "/d/dreambench_plus/train")}
    for target, (var, module, out) in roots.items():
        dry = subprocess.run(["make", "-n", target, f"{var}=/src", "OUT=/d"], cwd=REPO, env=env,
                             capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        assert f"-m data_prep.{module}" in dry.stdout and out in dry.stdout, dry.stdout
        missing = subprocess.run(["make", target], cwd=REPO, env=env, capture_output=True, text=True)
        assert missing.returncode != 0 and f"set {var}=" in missing.stderr
