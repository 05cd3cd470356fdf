"""data_prep.dreambooth: DreamBooth (prompts_and_classes.txt) and DreamBench++ layouts, class
priors, evaluation prompt JSON."""

from __future__ import annotations

import json
import math

import pytest

from data_prep import dreambooth
from tests.data._data_helpers import modes, umask

from ._prep_helpers import (
    add_bom,
    corrupt_jpeg,
    loader_batches,
    manifest,
    read_samples,
    save_image,
    save_mask,
    skipped_keys,
)

OBJECT_PROMPTS = ["a {0} {1} on the beach", "a {0} {1} with a city in the background", "a shiny {0} {1}"]
LIVE_PROMPTS = ["a {0} {1} on the beach", "a {0} {1} wearing a red hat", "a {0} {1} in a chef outfit"]


def prompts_file(path, classes):
    """DreamBooth's prompts_and_classes.txt, in its layout (sections, Python format strings)."""
    lines = ["Classes", "", "subject_name,class", *(f"{s},{c}" for s, c in classes), "", "", "Prompts", "",
             "Object Prompts", "", "prompt_list = ["]
    lines += [f"'{p}'.format(unique_token, class_token)," for p in OBJECT_PROMPTS[:-1]]
    lines += [f"'{OBJECT_PROMPTS[-1]}'.format(unique_token, class_token)", "]", "", "Live Subject Prompts", "",
              "prompt_list = ["]
    lines += [f"'{p}'.format(unique_token, class_token)," for p in LIVE_PROMPTS[:-1]]
    lines += [f"'{LIVE_PROMPTS[-1]}'.format(unique_token, class_token)", "]", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


@pytest.fixture()
def db_root(tmp_path):
    root = tmp_path / "dreambooth"
    ds = root / "dataset"
    prompts_file(ds / "prompts_and_classes.txt", [("backpack", "backpack"), ("dog", "dog"),
                                                  ("grey_sloth_plushie", "stuffed animal"), ("teapot", "teapot")])
    for i in range(3):
        save_image(ds / "dog" / f"{i:02d}.jpg", (48, 64), (150, 100, 40 * i))
        save_image(ds / "backpack" / f"{i:02d}.jpg", (64, 48), (200, 40 * i, 30))
    save_image(ds / "grey_sloth_plushie" / "00.jpg", (40, 40), (120, 120, 120))
    save_image(ds / "mystery" / "00.jpg")
    return root


def _db(root, out, *extra):
    return dreambooth.main(["dreambooth", "--root", str(root), "--out", str(out), "--quiet", *extra])


def test_dreambooth_subjects_and_eval_prompts(db_root, tmp_path, processor):
    out = tmp_path / "db"
    assert _db(db_root, out, "--prompts-json", str(tmp_path / "copy.json")) == 0
    samples = read_samples(out)
    by_key = {s.key: s for s in samples}
    assert len(samples) == 7 and by_key["db_dog_00"].instruction == "a photo of sks dog"
    assert by_key["db_grey_sloth_plushie_00"].instruction == "a photo of sks stuffed animal"
    assert by_key["db_backpack_02"].meta == {"subject": "backpack", "class": "backpack", "image": "02.jpg",
                                             "token": "sks", "stored_size": [64, 48]}
    assert not any(s.is_prior for s in samples)
    skipped = skipped_keys(out)
    assert skipped["db_teapot"].startswith("subject folder not found:")
    assert skipped["db_mystery"].startswith("no class:")
    evals = json.loads((out / "eval_prompts.json").read_text())
    assert evals == json.loads((tmp_path / "copy.json").read_text())
    dog, bag = evals["subjects"]["dog"], evals["subjects"]["backpack"]
    assert dog["live"] and dog["prompts"] == ["a sks dog on the beach", "a sks dog wearing a red hat",
                                             "a sks dog in a chef outfit"]
    assert not bag["live"] and bag["prompts"][2] == "a shiny sks backpack" and bag["images"][0] == "backpack/00.jpg"
    assert evals["subjects"]["grey_sloth_plushie"]["prompts"][0] == "a sks stuffed animal on the beach"
    loader_batches(out, processor)


def test_dreambooth_selection_token_and_class_priors(db_root, tmp_path):
    classes = tmp_path / "class_images"
    for i in range(4):
        save_image(classes / "dog" / f"{i:03d}.png", (32, 32), (10, 10 + 40 * i, 10))
    save_image(classes / "stuffed_animal" / "000.png", (32, 32))
    out = tmp_path / "db"
    assert _db(db_root, out, "--subjects", "dog", "--unique-token", "zwx", "--class-images", str(classes),
               "--num-class-images", "3", "--template", "a {token} {cls}") == 0
    samples = read_samples(out)
    assert [s.key for s in samples] == ["db_dog_00", "db_dog_01", "db_dog_02", "prior_dog_000", "prior_dog_001",
                                        "prior_dog_002"]
    assert samples[0].instruction == "a zwx dog" and not samples[0].is_prior
    assert samples[3].instruction == "a photo of dog" and samples[3].is_prior and samples[3].task == "dreambooth_prior"
    assert json.loads((out / "eval_prompts.json").read_text())["subjects"]["dog"]["prompts"][0] == \
        "a zwx dog on the beach"


def test_prior_only_set(tmp_path, capsys):
    flat = tmp_path / "dogs"
    for i in range(2):
        save_image(flat / f"{i}.jpg")
    corrupt_jpeg(flat / "9.jpg")
    out = tmp_path / "prior"
    assert dreambooth.main(["priors", "--class-images", str(flat), "--out", str(out), "--quiet"]) == 2
    assert "holds images directly: give --class-name" in capsys.readouterr().err
    assert dreambooth.main(["priors", "--class-images", str(flat), "--class-name", "dog", "--out", str(out),
                            "--quiet"]) == 0
    samples = read_samples(out)
    assert len(samples) == 2 and all(s.is_prior for s in samples)
    assert skipped_keys(out) == {"prior_dog_9": skipped_keys(out)["prior_dog_9"]}
    assert manifest(out)["source"] == "dreambooth_prior" and not (out / "eval_prompts.json").exists()


def test_dreambooth_bad_inputs(db_root, tmp_path, capsys):
    assert _db(db_root / "dataset" / "dog", tmp_path / "o") == 2
    assert "looks like ONE subject folder" in capsys.readouterr().err
    assert _db(tmp_path / "missing", tmp_path / "o") == 2
    assert "does not exist; expected the google/dreambooth checkout" in capsys.readouterr().err
    (db_root / "dataset" / "prompts_and_classes.txt").write_text("Classes\n\nsubject_name,class\ndog dog\n")
    assert _db(db_root, tmp_path / "o") == 2
    assert "malformed class line 'dog dog'" in capsys.readouterr().err
    (db_root / "dataset" / "prompts_and_classes.txt").write_text(
        "Classes\ndog,dog\nObject Prompts\nprompt_list = [\n'a {0} {1}'.format(unique_token\n]\n"
        "Live Subject Prompts\nprompt_list = ['a {0} {1}']\n")
    assert _db(db_root, tmp_path / "o") == 2
    assert "cannot parse the 'Object Prompts' prompt list" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture()
def bench_root(tmp_path):
    root = tmp_path / "dreambench_plus"
    subjects = {"animal": ["kitten", "stork"], "human": ["woman in red"], "object": ["teapot"],
                "style": ["ukiyo-e print"]}
    for cat, names in subjects.items():
        for i, name in enumerate(names):
            save_image(root / "data/images" / cat / f"{i:02d}.jpg", (56, 56), (30 * i, 80, 160))
            prompts = [f"a {name} on a beach", f"a {name.upper()} in the rain", "a watercolour of it"]
            (root / "data/captions" / cat).mkdir(parents=True, exist_ok=True)
            (root / "data/captions" / cat / f"{i:02d}.txt").write_text("\n".join([name, *prompts]) + "\n")
    (root / "data/captions/animal/01.txt").unlink()
    return root


def test_dreambench_plus(bench_root, tmp_path, processor):
    out = tmp_path / "dbp"
    assert dreambooth.main(["dreambench", "--root", str(bench_root), "--out", str(out), "--quiet"]) == 0
    samples = {s.key: s for s in read_samples(out)}
    assert set(samples) == {"dbp_animal_00", "dbp_human_00", "dbp_object_00", "dbp_style_00"}
    assert samples["dbp_animal_00"].instruction == "a photo of sks kitten"
    assert samples["dbp_style_00"].instruction == "an image in the style of sks ukiyo-e print"
    assert skipped_keys(out)["dbp_animal_01"].startswith("caption not found:")
    evals = json.loads((out / "eval_prompts.json").read_text())["subjects"]
    kitten = evals["animal_00"]
    assert kitten["prompts"] == ["a kitten on a beach", "a KITTEN in the rain", "a watercolour of it"]
    assert kitten["prompts_with_token"] == ["a sks kitten on a beach", "a sks KITTEN in the rain",
                                            "a watercolour of it"]
    assert kitten["token_inserted"] == [True, True, False] and kitten["live"]
    assert kitten["sample_dir"] == "live_subject_animal_00_kitten" and not evals["object_00"]["live"]
    loader_batches(out, processor)
    sub = tmp_path / "one"
    assert dreambooth.main(["dreambench", "--root", str(bench_root / "data"), "--out", str(sub), "--quiet",
                            "--subjects", "object_00"]) == 0
    assert [s.key for s in read_samples(sub)] == ["dbp_object_00"]
    assert dreambooth.main(["dreambench", "--root", str(bench_root / "data/images"), "--out",
                            str(tmp_path / "x"), "--quiet"]) == 2


def test_short_training_run_on_converted_shards(db_root, tmp_path, monkeypatch):
    """experiment=dreambooth reads ${DEFT_OMNI_DATA}/dreambooth/train as converted, with a prior
    set in data.prior; the tiny OmniGen trains 4 steps on CPU."""
    from deft_omni.train import train
    from tests.test_train import _compose

    data = tmp_path / "data"
    classes = tmp_path / "class_images"
    for i in range(2):
        save_image(classes / f"{i}.jpg", (40, 40), (60 * i, 120, 60))
    assert _db(db_root, data / "dreambooth" / "train", "--subjects", "dog,backpack", "--max-side", "48") == 0
    assert dreambooth.main(["priors", "--class-images", str(classes), "--class-name", "dog", "--out",
                            str(data / "dreambooth" / "prior"), "--quiet"]) == 0
    monkeypatch.setenv("DEFT_OMNI_DATA", str(data))
    monkeypatch.setenv("DEFT_OMNI_CACHE", str(tmp_path / "cache"))
    cfg = _compose(["experiment=dreambooth", "model=omnigen_tiny", "trainer=cpu", "max_steps=4",
                    "data.num_workers=0", "data.max_image_side=32", "data.batch_size=1",
                    f"+data.prior={{path: {data / 'dreambooth' / 'prior'}, weight: 0.5, loss_weight: 1.0}}",
                    "trainer.val_check_interval=4", "callbacks.sample_every_n_steps=4",
                    "callbacks.adapter_every_n_steps=4", "callbacks.resume_every_n_steps=4",
                    "callbacks.sample_prompts=[{instruction: 'a photo of sks dog', height: 32, width: 32}]"],
                   tmp_path / "run")
    assert cfg.data.train[0].path == str(data / "dreambooth" / "train")
    summary = train(cfg)
    assert summary["steps"] == 4 and summary["final_loss"] is not None and math.isfinite(summary["final_loss"])
    assert (tmp_path / "run" / "adapters" / "final" / "adapter_model.safetensors").exists()


def test_text_inputs_with_a_bom(db_root, bench_root, tmp_path):
    """prompts_and_classes.txt and DreamBench++ captions saved by a Windows editor (UTF-8 with BOM)."""
    add_bom(db_root / "dataset" / "prompts_and_classes.txt")
    add_bom(bench_root / "data/captions/animal/00.txt")
    assert _db(db_root, tmp_path / "db", "--subjects", "dog") == 0
    assert {s.instruction for s in read_samples(tmp_path / "db")} == {"a photo of sks dog"}
    assert dreambooth.main(["dreambench", "--root", str(bench_root), "--out", str(tmp_path / "dbp"), "--quiet",
                            "--subjects", "animal_00"]) == 0
    assert [s.instruction for s in read_samples(tmp_path / "dbp")] == ["a photo of sks kitten"]


def test_eval_prompts_take_the_umask_modes(db_root, tmp_path):
    out, copy = tmp_path / "db", tmp_path / "lists" / "copy.json"
    with umask(0o027):
        assert _db(db_root, out, "--subjects", "dog", "--prompts-json", str(copy)) == 0
    assert modes(out, out / "eval_prompts.json", copy) == [0o750, 0o640, 0o640]


def test_masks_folder(db_root, bench_root, tmp_path, capsys):
    """DreamBooth ships no masks: --masks DIR, laid out as the images, gives each subject image one."""
    masks = tmp_path / "masks"
    save_mask(masks / "dog" / "00.png", (48, 64))
    save_mask(masks / "dog" / "01.png", (24, 32))  # half size: scaled to the image
    out = tmp_path / "db"
    assert _db(db_root, out, "--subjects", "dog", "--masks", str(masks)) == 0
    samples = {s.key: s for s in read_samples(out)}
    assert [samples[f"db_dog_0{i}"].output_mask is not None for i in range(3)] == [True, True, False]
    assert samples["db_dog_01"].output_mask.size == (48, 64)
    m = manifest(out)
    assert m["output_masks"] == 2 and m["options"]["stats"]["left_out"] == {
        "subject images without a mask in --masks": 1}
    save_mask(masks / "animal" / "00.png", (56, 56))
    assert dreambooth.main(["dreambench", "--root", str(bench_root), "--out", str(tmp_path / "dbp"), "--quiet",
                            "--subjects", "animal_00", "--masks", str(masks)]) == 0
    assert read_samples(tmp_path / "dbp")[0].output_mask.size == (56, 56)
    assert _db(db_root, tmp_path / "x", "--masks", str(tmp_path / "nowhere")) == 2
    assert "--masks" in capsys.readouterr().err and not (tmp_path / "x").exists()
