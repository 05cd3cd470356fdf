"""The whole command on small generated sets: files, per-subject table, mean ± std, error listing."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import ImageFilter

from deft_omni.evaluate import main
from deft_omni.evaluation.demo import shapes_image
from deft_omni.evaluation.tiny import build_tiny_aesthetic_head

from ._eval_helpers import write_generated

DOG_PROMPTS = ["a sks dog in the jungle", "a sks dog in the snow"]
BAG_PROMPTS = ["a sks backpack on a table", "a sks backpack in the city"]


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def dreambooth_like(tmp_path):
    """eval_prompts.json as data_prep.dreambooth writes it, references under its root, 5 generated images."""
    root = tmp_path / "dataset"
    for subject, seeds in (("dog", (1, 2)), ("backpack", (3,))):
        for j, seed in enumerate(seeds):
            write_generated(root / subject, f"{j:02d}.png", shapes_image(seed))
    prompts = {"dataset": "dreambooth", "unique_token": "sks", "root": str(root), "subjects": {
        "dog": {"class": "dog", "live": True, "instance_prompt": "a photo of sks dog",
                "images": ["dog/00.png", "dog/01.png"], "prompts": DOG_PROMPTS},
        "backpack": {"class": "backpack", "live": False, "instance_prompt": "a photo of sks backpack",
                     "images": ["backpack/00.png"], "prompts": BAG_PROMPTS}}}
    with open(tmp_path / "eval_prompts.json", "w", encoding="utf-8") as fh:
        json.dump(prompts, fh)
    gen = tmp_path / "gen"
    for i, prompt in enumerate(DOG_PROMPTS + BAG_PROMPTS):
        write_generated(gen, f"{i}_{prompt.split()[-1]}.png", shapes_image(40 + i), instruction=prompt,
                        input_images=[], seed=i)
    # Subject given by the sidecar, with a prompt no prompt list holds.
    write_generated(gen, "4_extra.png", shapes_image(50), instruction="sks dog on a boat", subject="dog", seed=4)
    return tmp_path


def test_whole_command_subject_metrics(dreambooth_like, tiny_dirs, capsys):
    tmp = dreambooth_like
    head = build_tiny_aesthetic_head(str(tmp / "head.pth"), "linear", width=8)
    out = tmp / "eval"
    rc = main(["--generated", str(tmp / "gen"), "--references", str(tmp / "eval_prompts.json"),
               "--clip", tiny_dirs["clip"], "--dino", tiny_dirs["dino"], "--aesthetic-head", head,
               "--strip-token", "sks", "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["metrics.json", "per_image.csv", "per_subject.csv", "summary.md"]
    rows = _read_csv(out / "per_image.csv")
    assert [r["image"] for r in rows] == ["0_jungle.png", "1_snow.png", "2_table.png", "3_city.png", "4_extra.png"]
    assert [r["subject"] for r in rows] == ["dog", "dog", "backpack", "backpack", "dog"]
    assert rows[0]["text"] == "a dog in the jungle"  # unique token stripped for CLIP-T
    metrics = ["clip_i", "clip_t", "dino", "aesthetic", "sharpness"]
    per_subject = {r["subject"]: r for r in _read_csv(out / "per_subject.csv")}
    assert set(per_subject) == {"dog", "backpack", "overall"}
    assert per_subject["dog"]["n"] == "3" and per_subject["overall"]["n"] == "5"
    summary = (out / "summary.md").read_text()
    for subject, members in (("dog", (0, 1, 4)), ("backpack", (2, 3)), ("overall", range(5))):
        for m in metrics:
            values = np.array([float(rows[i][m]) for i in members])
            assert float(per_subject[subject][f"{m}_mean"]) == pytest.approx(values.mean(), rel=1e-9), (subject, m)
            assert float(per_subject[subject][f"{m}_std"]) == pytest.approx(values.std(), rel=1e-9, abs=1e-12)
        digits = 1 if abs(float(per_subject[subject]["sharpness_mean"])) >= 100 else 4
        sharp = [float(rows[i]["sharpness"]) for i in members]
        assert f"{np.mean(sharp):.{digits}f} ± {np.std(sharp):.{digits}f}" in summary
    report = json.loads((out / "metrics.json").read_text())
    assert report["overall"]["clip_i"]["mean"] == pytest.approx(float(per_subject["overall"]["clip_i_mean"]))
    assert report["meta"]["metrics"] == metrics and report["meta"]["versions"]["opencv"]
    assert "| **overall** | 5 |" in capsys.readouterr().out


def test_ambiguous_or_unknown_subject_is_listed(dreambooth_like, tiny_dirs, capsys):
    tmp = dreambooth_like
    write_generated(tmp / "gen", "9_mystery.png", shapes_image(60), instruction="a cat on the moon")
    rc = main(["--generated", str(tmp / "gen"), "--references", str(tmp / "eval_prompts.json"),
               "--clip", tiny_dirs["clip"], "--metrics", "clip_i", "--out", str(tmp / "eval"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "no subject for: 9_mystery.png" in err and "sidecar" in err


def test_whole_command_control_metrics(tmp_path, tiny_dirs, capsys):
    import cv2
    from PIL import Image

    for k in range(3):
        target = shapes_image(70 + k)
        write_generated(tmp_path / "targets", f"{k}_target.png", target)
        edges = cv2.Canny(np.asarray(target.convert("L")), 100, 200)
        write_generated(tmp_path / "canny", f"{k}_canny.png", Image.fromarray(edges))
        gen = target if k == 0 else target.filter(ImageFilter.GaussianBlur(k))
        # The nested sidecar layout deft_omni.generate writes.
        cond = {"path": str(tmp_path / "canny" / f"{k}_canny.png"), "sha256": "0" * 64}
        write_generated(tmp_path / "gen", f"{k}_high_quality_image.png", gen, seed=k,
                        prompt={"instruction": "a high-quality image", "input_images": [cond]})
    args = ["--generated", str(tmp_path / "gen"), "--targets", str(tmp_path / "targets"), "--condition-type",
            "canny", "--key-pattern", r"^(\d+)_", "--out", str(tmp_path / "eval"), "--no-progress"]
    assert main(args + ["--conditions", str(tmp_path / "canny")]) == 0, capsys.readouterr().err
    rows = _read_csv(tmp_path / "eval" / "per_image.csv")
    assert [r["subject"] for r in rows] == ["canny"] * 3 and rows[0]["text"] == "a high-quality image"
    assert float(rows[0]["canny_f1"]) == 1.0 and float(rows[0]["ssim"]) == pytest.approx(1.0, abs=1e-4)
    assert float(rows[2]["canny_f1"]) < float(rows[0]["canny_f1"])
    by_folder = [r["canny_f1"] for r in rows]
    assert main(args + ["--conditions", "sidecar"]) == 0  # same conditions, taken from the sidecars
    assert [r["canny_f1"] for r in _read_csv(tmp_path / "eval" / "per_image.csv")] == by_folder

    write_generated(tmp_path / "gen", "7_unmatched.png", shapes_image(99), instruction="x")
    assert main(args + ["--conditions", str(tmp_path / "canny")]) == 2
    err = capsys.readouterr().err
    assert "no target in --targets" in err and "7_unmatched.png (key '7')" in err
