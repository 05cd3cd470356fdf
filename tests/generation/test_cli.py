"""``python -m deft_omni.generate`` in-process: files written, sidecar contents, exact regeneration
from a sidecar, prompts files, and the clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deft_omni.generate import main
from deft_omni.generation.adapters_spec import file_sha256
from deft_omni.generation.errors import GenerationError
from deft_omni.generation.prompts import PromptSpec, read_prompts_file, slugify

COMMON = ["--model", "tiny", "--height", "32", "--width", "48", "--steps", "3", "--no-progress"]


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _fail(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def run(tmp_path_factory, adapter_dirs, input_png):
    """One run: two prompts (one editing the input image), two adapters, batch size 2."""
    out = tmp_path_factory.mktemp("gen") / "out"
    argv = [*COMMON, "--adapter", f"{adapter_dirs['deft']}:0.7", "--adapter", f"{adapter_dirs['lora']}:0.5",
            "--prompt", "make <img><|image_1|></img> look like a watercolour", "--input-image", str(input_png),
            "--num-images-per-prompt", "2", "--seed", "40", "--batch-size", "2", "--out", str(out)]
    return out, main(argv)


def test_writes_pngs_sidecars_and_grid(run, adapter_dirs, input_png, tiny_dir):
    out, paths = run
    assert [p.name for p in paths] == ["000_make-look-like-a-watercolour.png", "001_make-look-like-a-watercolour.png"]
    assert (out / "grid.png").is_file()
    assert Image.open(paths[0]).size == (48, 32)
    assert np.abs(_pixels(paths[0]) - _pixels(paths[1])).max() > 0  # consecutive seeds differ
    side = json.loads(paths[1].with_suffix(".json").read_text())
    assert side["seed"] == 41 and side["base_seed"] == 40 and side["steps"] == 3
    assert (side["height"], side["width"]) == (32, 48) and side["guidance_scale"] == 2.5
    assert side["prompt"]["input_images"] == [{"path": str(input_png.resolve()), "sha256": file_sha256(input_png)}]
    assert side["prompt"]["negative_prompt"] == "<cfg>"
    assert side["model"]["path"] == str(tiny_dir.resolve()) and len(side["model"]["quick_sha256"]) == 64
    assert [(a["name"], a["weight"], a["method"], a["rank"]) for a in side["adapters"]] == \
        [("deft", 0.7, "deft", 4), ("lora", 0.5, "lora", 2)]
    assert side["adapters"][1]["sha256"] == file_sha256(adapter_dirs["lora"] / "adapter_model.safetensors")
    assert side["deft_omni_version"] and side["batch"] == {"batch_size": 2, "size": 2, "position": 1,
                                                          "indices": [0, 1]}


def test_from_sidecar_regenerates_pixel_identical(run, tmp_path):
    out, paths = run
    regen = main(["--from-sidecar", str(paths[1].with_suffix(".json")), "--out", str(tmp_path), "--no-progress"])
    assert regen == [tmp_path / paths[1].name]
    # Made in a batch of two, remade alone: equal up to float rounding, which can flip a pixel
    # value by one at a rounding boundary (batch-one regeneration is exact: the next test).
    diff = np.abs(_pixels(regen[0]).astype(int) - _pixels(paths[1]).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_from_sidecar_batch_one_is_exact_and_checks_hashes(tmp_path, adapter_dirs, capsys):
    first = main([*COMMON, "--adapter", str(adapter_dirs["deft"]), "--merge", "--prompt", "a cat",
                  "--seed", "5", "--out", str(tmp_path / "a")])
    again = main(["--from-sidecar", str(first[0].with_suffix(".json")), "--out", str(tmp_path / "b"), "--no-progress"])
    assert np.array_equal(_pixels(first[0]), _pixels(again[0]))
    side = json.loads(first[0].with_suffix(".json").read_text())
    side["adapters"][0]["sha256"] = "0" * 64
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(side))
    err = _fail(["--from-sidecar", str(forged), "--out", str(tmp_path / "c")], capsys)
    assert "adapter weights" in err and "changed" in err
    side = json.loads(first[0].with_suffix(".json").read_text())
    side["model"]["quick_sha256"] = "f" * 64
    forged.write_text(json.dumps(side))
    err = _fail(["--from-sidecar", str(forged), "--out", str(tmp_path / "c")], capsys)
    assert "not the model that made this image" in err and "--model" in err


def test_batch_size_does_not_change_images(tmp_path):
    argv = [*COMMON, "--prompt", "a red cat", "--prompt", "a blue house by the sea at night", "--prompt", "x",
            "--seed", "9"]
    one = main([*argv, "--batch-size", "1", "--no-grid", "--out", str(tmp_path / "b1")])
    three = main([*argv, "--batch-size", "3", "--no-grid", "--out", str(tmp_path / "b3")])
    for a, b in zip(one, three):
        assert a.name == b.name
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 1  # latents agree to ~1e-6 (test_sampler)


def test_prompts_file_jsonl(tmp_path, input_png):
    (tmp_path / "in.png").write_bytes(input_png.read_bytes())
    lines = [{"instruction": "a dog", "seed": 123, "height": 16, "width": 32},
             {"prompt": "edit <img><|image_1|></img> please", "input_images": ["in.png"], "guidance_scale": 3.0}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    paths = main([*COMMON, "--prompts", str(prompts), "--seed", "1", "--batch-size", "4", "--out", str(tmp_path / "o")])
    sides = [json.loads(p.with_suffix(".json").read_text()) for p in paths]
    assert [(s["seed"], s["height"], s["width"], s["guidance_scale"]) for s in sides] == \
        [(123, 16, 32, 2.5), (2, 32, 48, 3.0)]
    assert sides[1]["prompt"]["input_images"][0]["path"] == str((tmp_path / "in.png").resolve())
    assert Image.open(paths[0]).size == (32, 16)


def test_text_prompts_file_skips_comments(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\na cat\n\n  a dog  \n")
    specs = read_prompts_file(f, {"height": 32, "width": 32})
    assert [s.instruction for s in specs] == ["a cat", "  a dog"]
    assert specs[1].source == f"{f}:4"


def test_error_adapter_for_another_base(adapter_dirs, tmp_path, capsys):
    err = _fail([*COMMON, "--adapter", str(adapter_dirs["other_base"]), "--prompt", "a", "--out", str(tmp_path)],
                capsys)
    assert "another base" in err and "--model" in err


def test_error_missing_adapter_folder(tmp_path, capsys):
    err = _fail([*COMMON, "--adapter", str(tmp_path / "gone"), "--prompt", "a", "--out", str(tmp_path)], capsys)
    assert "gone: no such folder" in err


def test_error_tags_do_not_match_inputs(input_png, tmp_path, capsys):
    err = _fail([*COMMON, "--prompt", "a cat", "--input-image", str(input_png), "--out", str(tmp_path)], capsys)
    assert "0 image tag(s)" in err and "1 input image" in err and "<img><|image_k|></img>" in err
    err = _fail([*COMMON, "--prompt", "<img><|image_2|></img>", "--input-image", str(input_png),
                 "--out", str(tmp_path)], capsys)
    assert "not numbered 1..n" in err


def test_error_unreadable_and_missing_image(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    err = _fail([*COMMON, "--prompt", "edit <img><|image_1|></img>", "--input-image", str(bad),
                 "--out", str(tmp_path)], capsys)
    assert str(bad) in err and "not a readable image" in err
    err = _fail([*COMMON, "--prompt", "edit <img><|image_1|></img>", "--input-image", str(tmp_path / "none.jpg"),
                 "--out", str(tmp_path)], capsys)
    assert "none.jpg" in err and "does not exist" in err
    assert not list(tmp_path.glob("*.json"))  # nothing was generated


def test_error_bad_size_and_jsonl_field(tmp_path, capsys):
    err = _fail(["--model", "tiny", "--height", "30", "--prompt", "a", "--out", str(tmp_path)], capsys)
    assert "height=30" in err and "multiple of 16" in err
    with pytest.raises(GenerationError, match="guidance_scale='high' must be a number"):
        PromptSpec("a", height=16, width=16, guidance_scale="high")
    f = tmp_path / "p.jsonl"
    f.write_text('{"instruction": "a", "sede": 3}\n')
    with pytest.raises(GenerationError, match=r"p.jsonl:1: unknown field\(s\) \['sede'\]"):
        read_prompts_file(f, {})


def test_slugify():
    assert slugify("Make <img><|image_1|></img> a  Cat!") == "make-a-cat"
    assert slugify("<img><|image_1|></img>") == "image"
    assert PromptSpec("a", height=16, width=16).seed is None


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "deft_omni.generate", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--from-sidecar" in done.stdout and "--adapter" in done.stdout


def test_sizes_default_to_the_model_and_too_large_is_one_line(tmp_path, capsys):
    """The tiny model takes at most 512 px a side: the defaults fit it, and a larger request is one
    line naming the setting, not a diffusers traceback from inside the transformer."""
    paths = main(["--model", "tiny", "--prompt", "a red circle", "--steps", "1", "--no-progress", "--no-grid",
                  "--out", str(tmp_path / "ok")])
    assert Image.open(paths[0]).size == (512, 512)
    for extra, setting in [(["--height", "1024"], "lower --height/--width"),
                           (["--max-input-image-side", "1024"], "--max-input-image-side 1024")]:
        err = _fail(["--model", "tiny", "--prompt", "x", "--steps", "1", *extra, "--out", str(tmp_path / "no")],
                    capsys)
        assert "at most 512 px a side" in err and setting in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
