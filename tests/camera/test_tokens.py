"""Serialisation round trip, token placement in the processor and the collate, config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deft_omni.camera import (
    CameraConditioning,
    CameraConfig,
    CameraError,
    SceneFrame,
    resolve_token_id,
)
from deft_omni.camera.serialize import camera_vector, parse, round_vector, serialize
from deft_omni.camera.synthetic import INSTRUCTION, render, scene_camera
from deft_omni.data import OmniGenTrainProcessor
from deft_omni.data.processor import PROMPT_SUFFIX, collate_processed
from deft_omni.data.schema import Sample


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def _sample(i, camera=True):
    cam = scene_camera(i, "train", 0, 32)
    return Sample(key=f"k{i}", instruction=INSTRUCTION + (" and more words" * i), task="sfm_camera",
                  output=render(cam), camera=cam if camera else None)


def _cond(tokenizer, mode, **kw):
    cfg = CameraConfig(mode=mode, **kw)
    return CameraConditioning(cfg, SceneFrame((0.0, 0.0, 0.5), 2.0), resolve_token_id(tokenizer, cfg, 512))


def test_serialize_round_trip():
    cfg = CameraConfig(mode="text")
    rng = np.random.default_rng(0)
    for _ in range(50):
        vec = rng.normal(size=11) * [1, 1, 1, 1, 1, 1, 1, 1, 10, 10, 10]
        text = serialize(vec, cfg)
        assert np.array_equal(parse(text), round_vector(vec, cfg))
        assert len(text.split()) == 11 and "-0.0000" not in text and "-0.000 " not in text + " "
        assert all(len(p.split(".")[1]) == d for p, d in zip(text.split(), [4] * 8 + [3] * 3))
    assert serialize([-0.00001] * 11, cfg) == " ".join(["0.0000"] * 8 + ["0.000"] * 3)
    assert np.array_equal(parse("<|camera|> " + text, "<|camera|>"), parse(text))
    with pytest.raises(CameraError, match="expected 11"):
        parse("1 2 3")


def test_camera_vector_normalises():
    cam = scene_camera(3, "train", 0, 32)
    frame = SceneFrame((0.0, 0.0, 0.5), 2.0)
    vec = camera_vector(cam, frame)
    assert np.allclose(vec[:4], [cam["fx"] / 32, cam["fy"] / 32, 0.5, 0.5]) and vec[4] > 0
    flipped = {**cam, **{k: -cam[k] for k in ("qw", "qx", "qy", "qz")}}
    assert np.allclose(camera_vector(flipped, frame), vec)
    with pytest.raises(CameraError, match="missing camera value.*'tz'"):
        camera_vector({k: v for k, v in cam.items() if k != "tz"}, frame, where="x.json")
    with pytest.raises(CameraError, match="x.json: non-finite camera value.*fx=nan"):
        camera_vector({**cam, "fx": float("nan")}, frame, where="x.json")


def test_token_is_one_id_in_place(tokenizer):
    cond = _cond(tokenizer, "embed")
    assert cond.token_id == len(tokenizer) == 400  # the tiny tokenizer has no <|camera|>: first free row
    proc = OmniGenTrainProcessor(tokenizer, max_image_side=32, cfg_dropout=0.0, conditioners=[cond])
    plain = OmniGenTrainProcessor(tokenizer, max_image_side=32, cfg_dropout=0.0)
    item, ref = proc(_sample(1)), plain(_sample(1))
    suffix = list(tokenizer(PROMPT_SUFFIX)["input_ids"])[1:]
    assert item.input_ids.count(cond.token_id) == 1
    pos = item.input_ids.index(cond.token_id)
    assert item.input_ids[pos + 1:] == suffix  # right after the instruction, before the template's end
    assert item.input_ids[:pos] + item.input_ids[pos + 1:] == ref.input_ids  # one id added, nothing else
    assert torch.allclose(item.extras['camera'], torch.tensor(cond.vector(_sample(1).camera, where="t"), dtype=torch.float32))
    # text mode: token, then the serialised numbers as text
    tproc = OmniGenTrainProcessor(tokenizer, max_image_side=32, cfg_dropout=0.0, conditioners=[_cond(tokenizer, "text")])
    tid = tproc(_sample(1)).input_ids
    tail = tokenizer.decode(tid[tid.index(cond.token_id) + 1:-len(suffix)])
    assert np.array_equal(parse(tail), round_vector(item.extras['camera'].double().numpy(), CameraConfig(mode="text")))
    # without a camera, or with the mode off: exactly the plain ids
    assert proc(_sample(2, camera=False)).input_ids == plain(_sample(2)).input_ids
    assert OmniGenTrainProcessor(tokenizer, max_image_side=32, conditioners=[_cond(tokenizer, "none")])(
        _sample(2), train=False).input_ids == plain(_sample(2), train=False).input_ids


def test_dropout_drops_camera_and_collate_keeps_rows(tokenizer):
    cond = _cond(tokenizer, "embed")
    dropped = OmniGenTrainProcessor(tokenizer, max_image_side=32, cfg_dropout=1.0, conditioners=[cond])(_sample(0))
    assert dropped.cfg_dropped and 'camera' not in dropped.extras and cond.token_id not in dropped.input_ids
    proc = OmniGenTrainProcessor(tokenizer, max_image_side=32, cfg_dropout=0.0, conditioners=[cond])
    items = [proc(_sample(0)), proc(_sample(2, camera=False)), proc(_sample(3))]
    batch = collate_processed(items, pad_id=proc.pad_id)
    order = batch["order"].tolist()
    assert order != [0, 1, 2]  # the collate reordered the rows (longest text first)
    for row, i in enumerate(order):
        has = 'camera' in items[i].extras
        assert bool(batch["has_camera"][row]) == has
        assert bool((batch["input_ids"][row] == cond.token_id).any()) == has
        if has:
            assert torch.equal(batch["camera"][row], items[i].extras['camera'])
    assert "camera" not in collate_processed([items[1]], pad_id=proc.pad_id)


def test_config_and_token_errors(tokenizer):
    with pytest.raises(ValueError, match="camera.mode='pose'"):
        CameraConfig(mode="pose")
    with pytest.raises(CameraError, match="outside the transformer's embedding table of 400 rows"):
        resolve_token_id(tokenizer, CameraConfig(mode="text"), 400)
    with pytest.raises(CameraError, match="BOS/EOS/pad/unk"):
        resolve_token_id(tokenizer, CameraConfig(mode="text", token_id=1), 512)
    with pytest.raises(ValueError, match="unknown field"):
        CameraConfig.from_any({"mode": "text", "precision": 3})
