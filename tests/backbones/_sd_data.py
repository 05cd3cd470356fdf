"""Tiny DreamBooth and DreamBench++ folders in their own layouts, converted by data_prep.dreambooth
(the shards a user trains SD on), shared by the backbone and CLI tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from data_prep import dreambooth

DB_PROMPTS = """Classes

subject_name,class
dog,dog

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} in the snow'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} on the beach'.format(unique_token, class_token)
]
"""


def subject_image(i: int, size=(48, 40)) -> Image.Image:
    """One view of a yellow disc on a coloured ground (the 'subject' moves a little per view)."""
    img = Image.new("RGB", size, (30 + 60 * i, 120, 200 - 50 * i))
    ImageDraw.Draw(img).ellipse((8 + 3 * i, 6, 36, 34), fill=(220, 180, 40))
    return img


def dreambooth_shards(root: Path) -> Path:
    """google/dreambooth's layout (one subject, 3 images) -> shards + eval_prompts.json."""
    ds = root / "dreambooth" / "dataset"
    (ds / "dog").mkdir(parents=True)
    (ds / "prompts_and_classes.txt").write_text(DB_PROMPTS)
    for i in range(3):
        subject_image(i).save(ds / "dog" / f"{i:02d}.jpg")
    out = root / "db_shards"
    assert dreambooth.main(["dreambooth", "--root", str(root / "dreambooth"), "--out", str(out), "--quiet"]) == 0
    return out


def dreambench_shards(root: Path) -> Path:
    """DreamBench++'s layout (one animal subject: one image, a caption with nine prompts) -> shards."""
    data = root / "dreambench_plus" / "data"
    (data / "images" / "animal").mkdir(parents=True)
    (data / "captions" / "animal").mkdir(parents=True)
    subject_image(1, (40, 48)).save(data / "images" / "animal" / "00.jpg")
    prompts = [f"a kitten {place}" for place in ("on a beach", "in the snow", "in a forest", "on a sofa",
                                                 "in a box", "under a tree", "in space", "in a cup", "at night")]
    (data / "captions" / "animal" / "00.txt").write_text("\n".join(["kitten", *prompts]) + "\n")
    out = root / "dbp_shards"
    assert dreambooth.main(["dreambench", "--root", str(root / "dreambench_plus"), "--out", str(out),
                            "--quiet"]) == 0
    return out
