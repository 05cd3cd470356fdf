"""data_prep.insdet: objects (views, masks, compositing, selection) and scenes (VOC boxes, crops)."""

from __future__ import annotations

import pytest
from PIL import Image

from data_prep import insdet
from data_prep.insdet.scenes import decode_scene

from ._prep_helpers import (
    corrupt_jpeg,
    loader_batches,
    manifest,
    read_samples,
    save_image,
    save_mask,
    skipped_keys,
)


def voc_xml(path, size_wh, objects):
    """Pascal VOC annotation as InsDet ships it (object/name = object folder name)."""
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects)
    path.write_text(f"<annotation><folder>leisure_zone</folder><filename>{path.stem}.jpg</filename>"
                    f"<size><width>{size_wh[0]}</width><height>{size_wh[1]}</height><depth>3</depth></size>"
                    f"<segmented>0</segmented>{objs}</annotation>")


@pytest.fixture()
def root(tmp_path):
    r = tmp_path / "InsDet"
    for i in range(1, 5):
        save_image(r / "Objects/000_aveda_shampoo/images" / f"{i:03d}.jpg", (64, 64), (200, 20 * i, 20))
        save_mask(r / "Objects/000_aveda_shampoo/masks" / f"{i:03d}.png", (64, 64))
    for i in range(1, 4):
        save_image(r / "Objects/001_binder_clips_median/images" / f"{i:03d}.jpg", (48, 48), (20, 20 * i, 200))
    save_mask(r / "Objects/001_binder_clips_median/masks/001.png", (48, 48))
    save_image(r / "Background/bg_a.jpg", (80, 60), (0, 90, 0))
    save_image(r / "Background/bg_b.jpg", (60, 80), (0, 0, 90))
    scene = r / "Scenes/easy/leisure_zone"
    save_image(scene / "rgb_000.jpg", (1024, 768), (120, 120, 120))
    voc_xml(scene / "rgb_000.xml", (1024, 768), [("000_aveda_shampoo", (100, 100, 400, 500)),
                                                  ("001_binder_clips_median", (600, 200, 900, 400)),
                                                  ("000_aveda_shampoo", (10, 10, 20, 20))])
    save_image(scene / "rgb_001.jpg", (1024, 768), (90, 90, 90))
    (scene / "rgb_001.xml").write_text("<annotation><size><width>1024</width>")  # truncated XML
    save_image(r / "Scenes/hard/office_01/rgb_000.jpg", (800, 600), (60, 60, 60))
    return r


def _objects(root, out, *extra):
    return insdet.main(["objects", "--root", str(root), "--out", str(out), "--quiet", *extra])


def _scenes(root, out, *extra):
    return insdet.main(["scenes", "--root", str(root), "--out", str(out), "--quiet", *extra])


def test_objects_all_views(root, tmp_path, processor):
    out = tmp_path / "obj"
    assert _objects(root, out) == 0
    samples = read_samples(out)
    assert len(samples) == 7
    assert samples[0].key == "obj_000_001" and samples[0].instruction == "a photo of sks aveda shampoo"
    assert samples[-1].instruction == "a photo of sks binder clips median"
    assert samples[0].meta["object_id"] == 0 and samples[0].task == "insdet_object"
    assert manifest(out)["source"] == "insdet_objects"
    loader_batches(out, processor)


def test_objects_selection_views_colour_composite(root, tmp_path):
    out = tmp_path / "obj"
    assert _objects(root, out, "--objects", "binder clips median,0", "--views", "2", "--composite", "colour",
                    "--background-colour", "black", "--unique-token", "zwx", "--image-format", "png") == 0
    samples = read_samples(out)
    assert [s.key for s in samples] == ["obj_000_001", "obj_000_003", "obj_001_001"]
    assert samples[0].instruction == "a photo of zwx aveda shampoo"
    assert samples[0].output.convert("RGB").getpixel((1, 1)) == (0, 0, 0)  # outside the mask
    assert samples[0].output.convert("RGB").getpixel((32, 32)) != (0, 0, 0)  # the object
    skipped = skipped_keys(out)
    assert set(skipped) == {"obj_001_002"} and skipped["obj_001_002"].startswith("mask not found:")


def test_objects_background_composite(root, tmp_path):
    out = tmp_path / "obj"
    assert _objects(root, out, "--objects", "aveda_shampoo", "--composite", "background", "--image-format",
                    "png") == 0
    samples = read_samples(out)
    assert {s.meta["background"] for s in samples} <= {"bg_a.jpg", "bg_b.jpg"}
    for s in samples:
        r, g, b = s.output.convert("RGB").getpixel((1, 1))
        assert r < 40 and (g > 60 or b > 60)  # the green or blue background, not the red object


def test_objects_corrupt_view_and_strict(root, tmp_path, capsys):
    corrupt_jpeg(root / "Objects/000_aveda_shampoo/images/002.jpg")
    out = tmp_path / "obj"
    assert _objects(root, out) == 0
    assert skipped_keys(out)["obj_000_002"].startswith("corrupt image:")
    assert "skipped 1 (corrupt image: 1" in capsys.readouterr().err
    assert _objects(root, tmp_path / "strict", "--strict") == 2
    assert "--strict: obj_000_002: corrupt image" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()


def test_wrong_roots_say_what_was_expected(root, tmp_path, capsys):
    assert _objects(root / "Objects", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "looks like the Objects/ folder itself; pass its parent" in err and "Expected the InsDet root" in err
    assert _objects(root / "Objects/000_aveda_shampoo", tmp_path / "o") == 2
    assert "looks like ONE object folder" in capsys.readouterr().err
    assert _scenes(root / "Scenes", tmp_path / "o") == 2
    assert "looks like the Scenes/ folder itself" in capsys.readouterr().err
    assert _scenes(tmp_path / "nowhere", tmp_path / "o") == 2
    assert "does not exist" in capsys.readouterr().err
    assert _objects(root, tmp_path / "o", "--objects", "teapot") == 2
    assert "no object matches 'teapot'" in capsys.readouterr().err
    assert _objects(root, tmp_path / "o", "--template", "a photo of {tok}") == 2
    assert "unknown or malformed field" in capsys.readouterr().err


def test_scenes_with_crops(root, tmp_path, processor):
    out = tmp_path / "scn"
    assert _scenes(root, out, "--crops", "add", "--max-side", "128", "--workers", "2") == 0
    samples = {s.key: s for s in read_samples(out)}
    assert set(samples) == {"scene_easy_leisure_zone_rgb_000", "scene_easy_leisure_zone_rgb_000_crop_00",
                            "scene_easy_leisure_zone_rgb_000_crop_01", "scene_easy_leisure_zone_rgb_001",
                            "scene_hard_office_01_rgb_000"}
    scene = samples["scene_easy_leisure_zone_rgb_000"]
    assert scene.output.size == (128, 96) and scene.instruction == "a photo of sks leisure zone"
    assert scene.meta["objects"][:2] == ["000_aveda_shampoo", "001_binder_clips_median"]
    assert scene.meta["original_size"] == [1024, 768]
    crop = samples["scene_easy_leisure_zone_rgb_000_crop_00"]
    assert crop.instruction == "a photo of sks aveda shampoo" and crop.task == "insdet_crop"
    assert max(crop.output.size) == 128 and crop.output.size[1] > crop.output.size[0]  # a tall box
    assert samples["scene_hard_office_01_rgb_000"].instruction == "a photo of sks office"
    skipped = skipped_keys(out)
    assert skipped["scene_easy_leisure_zone_rgb_000_crop_02"].startswith("crop too small:")
    assert skipped["scene_easy_leisure_zone_rgb_001_xml"].startswith("unreadable XML:")
    assert skipped["scene_hard_office_01_rgb_000_xml"].startswith("annotation not found:")
    loader_batches(out, processor)


def test_scene_captioner_hook(root, tmp_path, monkeypatch):
    (tmp_path / "my_captions.py").write_text(
        "def caption(image, info):\n"
        "    if info['kind'] == 'crop':\n"
        "        return None\n"
        "    return f\"{info['caption']}, {image.width}px wide, {info['words']}\"\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "scn"
    assert _scenes(root, out, "--levels", "easy", "--scenes", "leisure_zone", "--crops", "add", "--max-side", "64",
                   "--captioner", "my_captions:caption") == 0
    by_key = {s.key: s.instruction for s in read_samples(out)}
    assert by_key["scene_easy_leisure_zone_rgb_000"] == "a photo of sks leisure zone, 64px wide, leisure zone"
    assert by_key["scene_easy_leisure_zone_rgb_000_crop_01"] == "a photo of sks binder clips median"
    assert _scenes(root, tmp_path / "x", "--captioner", "my_captions:nope") == 2


def test_huge_scene_is_decoded_small(tmp_path):
    """An 8192x6144 JPEG (InsDet's size) goes through the DCT-draft path: decoded at 1/8."""
    path = tmp_path / "big.jpg"
    Image.new("RGB", (8192, 6144), (10, 20, 30)).save(path, quality=50)
    img, orig = decode_scene(str(path), 1024, [], False)
    assert orig == (8192, 6144) and img.size == (1024, 768)
    img, _ = decode_scene(str(path), 1024, [("x", (0, 0, 2048, 1024))], True)
    assert img.size == (4096, 3072)  # a 2048 px box still gets 1024 px


def test_objects_store_their_masks(root, tmp_path):
    """InsDet ships a mask per view: it becomes the sample's output_mask (the output's size, 255 = object)."""
    Image.new("L", (64, 32), 255).save(root / "Objects/000_aveda_shampoo/masks/003.png")  # another shape
    Image.new("L", (64, 64), 0).save(root / "Objects/000_aveda_shampoo/masks/004.png")  # empty
    out = tmp_path / "obj"
    assert _objects(root, out, "--max-side", "32") == 0
    samples = {s.key: s for s in read_samples(out)}
    mask = samples["obj_000_001"].output_mask
    assert mask.mode == "L" and mask.size == samples["obj_000_001"].output.size == (32, 32)
    assert mask.getpixel((2, 2)) == 0 and mask.getpixel((16, 16)) == 255  # save_mask's centre box
    assert samples["obj_001_002"].output_mask is None  # this view has no mask file
    skipped = skipped_keys(out)
    assert skipped["obj_000_003"].startswith("mask size mismatch:") and "003.png is 64x32 px" in skipped["obj_000_003"]
    assert skipped["obj_000_004"].startswith("invalid sample: the mask is empty")
    assert manifest(out)["output_masks"] == 3 and manifest(out)["options"]["masks"] is True
    plain = tmp_path / "plain"
    assert _objects(root, plain, "--no-masks") == 0
    assert manifest(plain)["output_masks"] == 0 and len(read_samples(plain)) == 7
