"""data_prep.visualcloze: Graph200K as a save_to_disk DatasetDict and as VisualCloze's folder
export; pair and in-context modes, quality filter, None images, grids, errors."""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import pytest
from PIL import Image

from data_prep import visualcloze

from ._prep_helpers import add_bom, colour_image, loader_batches, manifest, read_samples, skipped_keys

datasets = pytest.importorskip("datasets")

SINGLE = ["ref", "target", "depth", "canny", "hed", "normal", "mlsd", "openpose", "sam2_mask", "uniformer",
          "foreground", "DepthEdit", "qwen_2_5_mask", "qwen_2_5_bounding_box"]
MULTI = ([f"InstantStyle_{kind}_{k}" for kind in ("image", "ref") for k in range(3)]
         + [f"ReduxStyle_{kind}_{k}" for kind in ("image", "ref") for k in range(3)]
         + [f"FillEdit_image_{k}" for k in range(5)])
# Per row: which single-image columns are None, and quality scores.
MISSING = {1: {"depth"}, 3: {"canny", "depth"}}
QUALITY = [5, 5, 3, 4, 5, 2]


def _jpeg(colour, size=64):
    buf = io.BytesIO()
    colour_image((size, size), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _rows(n, split):
    rows = {c: [] for c in SINGLE + MULTI}
    rows.update(quality_assessment=[], description=[], collection=[], qwen_2_5_meta=[], FillEdit_meta=[])
    for i in range(n):
        for j, c in enumerate(SINGLE):
            absent = c in MISSING.get(i, set()) or c == "openpose" and i % 2
            rows[c].append(None if absent else {"bytes": _jpeg((40 * j % 256, 30 * i % 256, 90)), "path": None})
        for c in MULTI:
            rows[c].append(None)
        q = QUALITY[i % len(QUALITY)]
        rows["quality_assessment"].append({"compositeStructure": q, "objectConsistency": 5, "imageQuality": q})
        rows["description"].append({"item": f"item {i}", "description_0": f"A {split} scene number {i}",
                                    "description_1": f"alt {i}", "category": "thing", "description_valid": True})
        rows["collection"].append(f"col{i % 2}")
        rows["qwen_2_5_meta"].append(None)
        rows["FillEdit_meta"].append(None)
    return rows


def _features():
    v = datasets.Value
    feats = {c: datasets.Image() for c in SINGLE + MULTI}
    feats.update(
        quality_assessment={k: v("int64") for k in ("compositeStructure", "objectConsistency", "imageQuality")},
        description={"item": v("string"), "description_0": v("string"), "description_1": v("string"),
                     "category": v("string"), "description_valid": v("bool")},
        collection=v("string"), qwen_2_5_meta=v("string"), FillEdit_meta={"name": v("string"),
                                                                         "description": v("string")})
    return datasets.Features(feats)


@pytest.fixture(scope="module")
def graph200k(tmp_path_factory):
    """A tiny Graph200K DatasetDict, saved exactly as save_to_disk saves the real one."""
    path = tmp_path_factory.mktemp("g") / "Graph200K"
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(_rows(6, "train"), features=_features()),
        "test": datasets.Dataset.from_dict(_rows(3, "test"), features=_features()),
    })
    dd.save_to_disk(str(path))
    return path


def export_folders(graph200k, out):
    """VisualCloze's processing.py layout: <out>/<split>/data.json + one folder per column."""
    dd = datasets.load_from_disk(str(graph200k))
    for split in dd:
        base = out / split
        rows = []
        for i, d in enumerate(dd[split]):
            cond = {}
            for col in SINGLE:
                if d[col] is None:
                    continue
                (base / col).mkdir(parents=True, exist_ok=True)
                p = base / col / f"{i}_{col}.jpg"
                d[col].save(p)
                name = {"ref": "reference", "qwen_2_5_mask": "mask", "qwen_2_5_bounding_box": "bbox"}.get(col, col)
                cond[name] = os.path.abspath(p)
            rows.append({"quality_assessment": d["quality_assessment"], "description": d["description"],
                         "collection": d["collection"], "condition": cond})
        (base / "data.json").write_text(json.dumps(rows))
    return out


def _run(root, out, *extra):
    return visualcloze.main(["--root", str(root), "--out", str(out), "--quiet", *extra])


def test_pair_mode_from_save_to_disk(graph200k, tmp_path, processor):
    out = tmp_path / "pairs"
    assert _run(graph200k, out, "--tasks", "depth,canny", "--max-side", "32") == 0
    samples = read_samples(out)
    keys = [s.key for s in samples]
    assert keys[:2] == ["train_000000_depth", "train_000000_canny"] and len(samples) == 9
    s = samples[0]
    assert s.instruction == ("Following the depth map <img><|image_1|></img>, generate a high-quality image: "
                             "A train scene number 0.")
    assert s.task == "visualcloze_depth" and len(s.inputs) == 1 and s.output.size == (32, 32)
    assert s.meta["quality_assessment"]["imageQuality"] == 5 and s.meta["collection"] == "col0"
    skipped = skipped_keys(out)
    assert set(skipped) == {"train_000001_depth", "train_000003_depth", "train_000003_canny"}
    assert skipped["train_000003_canny"].startswith("missing image: row 3 has no 'canny' image")
    assert manifest(out)["options"]["stats"]["skip_reasons"] == {"missing image": 3}
    loader_batches(out, processor)


def test_quality_filter_multi_condition_and_reverse_tasks(graph200k, tmp_path):
    out = tmp_path / "q"
    assert _run(graph200k, out, "--tasks", "reference+depth,target>depth", "--min-quality", "4",
                "--image-format", "png") == 0
    samples = read_samples(out)
    rows = sorted({s.meta["row"] for s in samples})
    assert rows == [0, 4]  # quality 5, 5, 3(x), 4, 5, 2(x); rows 1 and 3 lack depth
    multi = next(s for s in samples if s.meta["task"] == "reference+depth")
    assert multi.instruction.startswith("Following the reference image of the subject <img><|image_1|></img> and "
                                        "the depth map <img><|image_2|></img>, generate a high-quality image:")
    rev = next(s for s in samples if s.meta["task"] == "target>depth")
    assert rev.key.endswith("target_to_depth") and rev.instruction == (
        "Following the high-quality image <img><|image_1|></img>, generate a depth map.")
    assert manifest(out)["options"]["stats"]["left_out"] == {"rows below --min-quality 4": 2}


def test_incontext_mode_and_grid(graph200k, tmp_path, processor):
    out, grids = tmp_path / "icl", tmp_path / "grids"
    assert _run(graph200k, out, "--mode", "incontext", "--tasks", "canny,reference+hed", "--examples", "2",
                "--render-grid", str(grids), "--render-limit", "2", "--max-side", "32", "--shuffle-columns") == 0
    samples = read_samples(out)
    single = [s for s in samples if s.meta["task"] == "canny"]
    assert len(single) == 5  # row 3 lacks canny
    s = single[0]
    assert len(s.inputs) == 2 * 2 + 1 and len(s.meta["examples"]) == 2 and 0 not in s.meta["examples"]
    assert s.instruction.startswith("A grid of 3 rows and 2 columns, 6 images in all; every row follows the "
                                    "same task. In each row: [IMAGE1] a canny edge map, [IMAGE2] a high-quality "
                                    "image. Row 1: <img><|image_1|></img> <img><|image_2|></img>.")
    assert "Row 3: <img><|image_5|></img> the missing image. The last image of the last row shows: A train" in \
        s.instruction
    double = [s for s in samples if s.meta["task"] == "reference+hed"]
    assert all(len(d.inputs) == 2 * 3 + 2 for d in double)
    assert {tuple(d.meta["columns"]) for d in double} <= {("reference", "hed", "target"), ("hed", "reference",
                                                                                            "target")}
    assert [int(t) for t in re.findall(r"<\|image_(\d+)\|>", double[0].instruction)] == list(range(1, 9))
    pictures = sorted(grids.iterdir())
    assert len(pictures) == 2 and Image.open(pictures[0]).size == (2 * 256 + 3 * 4, 3 * 256 + 4 * 4)
    again = tmp_path / "icl2"
    assert _run(graph200k, again, "--mode", "incontext", "--tasks", "canny,reference+hed", "--examples", "2",
                "--max-side", "32", "--shuffle-columns", "--workers", "2") == 0
    assert [s.meta["examples"] for s in read_samples(again)] == [s.meta["examples"] for s in samples]
    loader_batches(out, processor, n_batches=3)


def test_folder_export_matches_arrow(graph200k, tmp_path):
    export = export_folders(graph200k, tmp_path / "export")
    moved = tmp_path / "moved"
    shutil.move(str(export), str(moved))  # data.json keeps the old absolute paths
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(graph200k, a, "--split", "test", "--tasks", "depth,mask,bbox") == 0
    assert _run(moved, b, "--split", "test", "--tasks", "depth,mask,bbox") == 0
    sa, sb = read_samples(a), read_samples(b)
    assert [s.key for s in sa] == [s.key for s in sb] and len(sa) == 8
    assert [s.instruction for s in sa] == [s.instruction for s in sb]
    assert skipped_keys(a) == skipped_keys(b)
    assert any("open-world object mask" in s.instruction for s in sb)


def test_errors(graph200k, tmp_path, capsys):
    assert _run(tmp_path / "nothing", tmp_path / "o") == 2
    assert "does not exist; expected a DatasetDict saved with save_to_disk" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _run(tmp_path / "empty", tmp_path / "o") == 2
    assert "is not a Graph200K copy" in capsys.readouterr().err
    assert _run(graph200k, tmp_path / "o", "--split", "validation") == 2
    assert "--split 'validation' is not in" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert _run(graph200k, tmp_path / "o", "--tasks", "depth,sketch") == 2
    assert "unknown Graph200K column 'sketch'" in capsys.readouterr().err
    bad = tmp_path / "bad" / "train"
    bad.mkdir(parents=True)
    (bad / "data.json").write_text('[{"condition": ')
    assert _run(tmp_path / "bad", tmp_path / "o") == 2
    assert "data.json is not valid JSON" in capsys.readouterr().err
    assert _run(graph200k, tmp_path / "o", "--tasks", "depth", "--strict") == 2
    assert "--strict: train_000001_depth: missing image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        visualcloze.parse_args(["--root", "x", "--out", "y", "--examples", "4"])


def test_folder_export_with_a_bom(graph200k, tmp_path):
    """data.json re-saved by a Windows editor (UTF-8 with BOM) reads as before."""
    export = export_folders(graph200k, tmp_path / "export")
    assert _run(export, tmp_path / "plain", "--split", "test", "--tasks", "depth") == 0
    add_bom(export / "test" / "data.json")
    assert _run(export, tmp_path / "bom", "--split", "test", "--tasks", "depth") == 0
    keys = [s.key for s in read_samples(tmp_path / "plain")]
    assert keys and [s.key for s in read_samples(tmp_path / "bom")] == keys
