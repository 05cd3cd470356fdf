"""Shard schema: writing, reading back through real tars, validation, manifests."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import webdataset as wds
from ._data_helpers import LFS_POINTER, solid, write_shards
from PIL import Image

from deft_omni.data import (
    ManifestError,
    MaskWarning,
    SampleError,
    ShardSet,
    ShardSetWriter,
    make_sample,
    parse_sample,
    read_manifest,
    write_manifest,
)
from deft_omni.data import schema


def _gradient(h, w):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 3
    arr[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 5
    return Image.fromarray(arr)


def test_round_trip_through_shardwriter(tmp_path):
    out, inp1, inp2 = _gradient(32, 48), _gradient(16, 16), solid((32, 16), (1, 2, 3))
    samples = [
        make_sample("a/k0", "<img><|image_1|></img> and <img><|image_2|></img> together", out, [inp1, inp2],
                    task="compose", meta={"src": "x", "n": 3}, camera={"fx": 1, "qw": 0.5}),
        make_sample("k1", "a red circle", out, task="text_to_image", prior=True, image_format="webp"),
        make_sample("k2", "a red circle", _encode(out, "JPEG"), image_format="jpg"),
    ]
    with wds.ShardWriter(str(tmp_path / "t-%06d.tar"), maxcount=10, verbose=0) as writer:
        for s in samples:
            writer.write(s)
    raws = list(wds.WebDataset(str(tmp_path / "t-000000.tar"), shardshuffle=False, empty_check=False))
    parsed = {p.key: p for p in map(parse_sample, raws)}
    assert set(parsed) == {"a/k0", "k1", "k2"}
    p0 = parsed["a/k0"]
    assert p0.task == "compose" and p0.meta == {"src": "x", "n": 3}
    assert p0.camera == {"fx": 1.0, "qw": 0.5} and not p0.is_prior
    assert p0.url.endswith("t-000000.tar")
    assert np.array_equal(np.asarray(p0.output), np.asarray(out))  # png is lossless
    assert [np.asarray(i).shape for i in p0.inputs] == [(16, 16, 3), (32, 16, 3)]
    assert np.array_equal(np.asarray(p0.inputs[1]), np.asarray(inp2))
    assert parsed["k1"].is_prior and parsed["k1"].camera is None
    assert parsed["k2"].output.size == (48, 32)


def _encode(img, fmt):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("key", ["a.b", "", "with space", "/abs", "a//b"])
def test_make_sample_rejects_bad_keys(key):
    with pytest.raises(SampleError, match="__key__"):
        make_sample(key, "x", solid((16, 16)))


def test_make_sample_validates_tags_and_bytes():
    with pytest.raises(SampleError, match="1 image tag.*0 input image"):
        make_sample("k", "<img><|image_1|></img> x", solid((16, 16)))
    with pytest.raises(SampleError, match="not numbered 1..n"):
        make_sample("k", "<|image_2|> <|image_1|>", solid((16, 16)), [solid((16, 16))] * 2)
    with pytest.raises(SampleError, match="JPEG but image_format is 'png'"):
        make_sample("k", "x", _encode(solid((16, 16)), "JPEG"))


def _raw(**fields):
    raw = {"__key__": "key7", "__url__": "/d/shard-000003.tar",
           "json": json.dumps({"instruction": "x", "task": "t", "meta": {}}).encode(),
           "output.png": _encode(solid((16, 16)), "PNG")}
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize("fields, field_name, text", [
    ({"output.png": None}, "output", "exactly one output"),
    ({"json": None}, "json", "no json"),
    ({"json": b"{broken"}, "json", "not valid JSON"),
    ({"json": b'{"task": "t"}'}, "json.instruction", "instruction"),
    ({"input_1.png": _encode(solid((16, 16)), "PNG")}, "json.instruction", "0 image tag"),
    ({"input_2.png": _encode(solid((16, 16)), "PNG")}, "input_<k>", "not numbered 1..n"),
    ({"output.png": b"garbage"}, "output.png", "cannot decode"),
    ({"json": b'{"instruction": "x", "task": "t", "camera": {"fx": "a"}}'}, "json.camera", "numbers"),
])
def test_parse_errors_name_key_shard_field(fields, field_name, text):
    with pytest.raises(SampleError, match=text) as info:
        parse_sample(_raw(**fields))
    err = info.value
    assert err.key == "key7" and err.url == "/d/shard-000003.tar" and err.field == field_name
    assert "key7" in str(err) and "shard-000003.tar" in str(err)


def test_manifest_round_trip_and_errors(tmp_path):
    path = write_manifest(str(tmp_path), [("a.tar", 3), {"file": "b.tar", "samples": 2}], source="unit",
                          options={"maxcount": 3}, skipped=[{"key": "k", "reason": "broken"}])
    man = read_manifest(str(tmp_path))
    assert path.endswith("manifest.json")
    assert man["total"] == 5 and man["shards"][1] == {"file": "b.tar", "samples": 2}
    assert man["version"] == schema.MANIFEST_VERSION and man["skipped"][0]["reason"] == "broken"

    with pytest.raises(FileNotFoundError, match="converters"):
        read_manifest(str(tmp_path / "nowhere"))
    for text, match in [("{oops", "not valid JSON"), ('{"format": "other"}', "not a deft_omni"),
                        (json.dumps({**man, "version": 99}), "version 99"),
                        (json.dumps({**man, "total": 7}), "total 7")]:
        (tmp_path / "manifest.json").write_text(text)
        with pytest.raises(ManifestError, match=match):
            read_manifest(str(tmp_path))
    with pytest.raises(ManifestError, match="relative"):
        write_manifest(str(tmp_path), [("/abs/a.tar", 1)], source="x")
    with pytest.raises(ManifestError, match="reason"):
        write_manifest(str(tmp_path), [], source="x", skipped=[{"key": "k"}])


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    write_manifest(str(tmp_path), [("a.tar", 1)], source="old")

    seen = []

    def failing_fsync(fd):  # the new content is in a temporary file beside the manifest
        seen.extend(n for n in os.listdir(tmp_path) if n != "manifest.json")
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(str(tmp_path), [("b.tar", 2)], source="new")
    monkeypatch.undo()
    assert seen  # the failure came mid-write, with a temporary file to clean up
    assert read_manifest(str(tmp_path))["source"] == "old"  # the old file survived intact
    assert os.listdir(tmp_path) == ["manifest.json"]  # and no temp file is left behind


def test_shard_set_writer_and_resolve(tmp_path):
    d = write_shards(tmp_path / "set", 3, 4)
    assert sorted(os.listdir(d)) == ["manifest.json", "s-000000.tar", "s-000001.tar", "s-000002.tar"]
    ss = ShardSet.resolve(d)
    assert ss.counts == [4, 4, 4] and ss.total == 12 and len(ss) == 3
    pattern = ShardSet.resolve(os.path.join(d, "s-{000000..000001}.tar"))
    assert pattern.urls == ss.urls[:2] and pattern.counts == [4, 4]
    assert ShardSet.resolve(["x.tar"]).total is None
    os.unlink(ss.urls[1])
    with pytest.raises(ManifestError, match="missing shards"):
        ShardSet.resolve(d)


def test_writer_leaves_no_manifest_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with schema.ShardSetWriter(str(tmp_path), source="x") as w:
            w.write(make_sample("k", "x", solid((16, 16))))
            raise RuntimeError("converter crashed")
    assert not (tmp_path / "manifest.json").exists()


def test_git_lfs_pointers_are_named(tmp_path):
    """An image (or a whole shard) kept in git LFS but never pulled: say so, and how to fetch it."""
    with pytest.raises(SampleError, match="git-LFS pointer") as info:
        parse_sample(_raw(**{"input_1.jpg": LFS_POINTER, "json": json.dumps(
            {"instruction": "<img><|image_1|></img> x", "task": "t"}).encode()}))
    assert info.value.key == "key7" and info.value.field == "input_1.jpg"
    assert "123,456 bytes" in str(info.value) and "`git lfs pull`" in str(info.value)
    with pytest.raises(SampleError, match="git-LFS pointer.*fix: fetch the real file with `git lfs pull`"):
        make_sample("k", "x", LFS_POINTER, image_format="jpg")
    d = write_shards(tmp_path / "set", 2, 2)
    shard = ShardSet.resolve(d).urls[1]
    with open(shard, "wb") as fh:
        fh.write(LFS_POINTER)
    with pytest.raises(ManifestError, match=r"s-000001.tar' is a git-LFS pointer.*git lfs pull"):
        ShardSet.resolve(d)


def _mask(size_wh, box=None, fill=0):
    m = Image.new("L", size_wh, fill)
    if box:
        m.paste(255, box)
    return m


def test_output_mask_round_trip_and_manifest_count(tmp_path):
    out, mask = _gradient(32, 48), _mask((48, 32), (8, 8, 24, 24))
    with ShardSetWriter(str(tmp_path), source="unit") as writer:
        writer.write(make_sample("m", "x", out, output_mask=mask))
        writer.write(make_sample("b", "x", _encode(out, "JPEG"), image_format="jpg",
                                 output_mask=_encode(mask.convert("1"), "PNG")))  # PNG bytes of a 1-bit mask
        writer.write(make_sample("n", "x", out))
    parsed = {p.key: p for p in map(parse_sample, wds.WebDataset(ShardSet.resolve(str(tmp_path)).urls,
                                                                 shardshuffle=False, empty_check=False))}
    for key in ("m", "b"):
        got = parsed[key].output_mask
        assert got.mode == "L" and got.size == (48, 32) and np.array_equal(np.asarray(got), np.asarray(mask))
    assert parsed["n"].output_mask is None
    assert read_manifest(str(tmp_path))["output_masks"] == 2
    legacy = json.loads((tmp_path / "manifest.json").read_text())
    del legacy["output_masks"]  # manifests written before masks existed
    (tmp_path / "manifest.json").write_text(json.dumps(legacy))
    assert read_manifest(str(tmp_path))["output_masks"] == 0


@pytest.mark.parametrize("mask, text", [
    (_mask((16, 32), (0, 0, 8, 8)), "the mask is 16x32 px but the output image is 32x32 px"),
    (_mask((32, 32)), "the mask is empty"),
    (Image.new("RGB", (32, 32), (255, 255, 255)), "mode 'RGB'; it must be single-channel"),
])
def test_bad_output_masks_name_the_sample(mask, text):
    with pytest.raises(SampleError, match=text) as info:
        make_sample("k3", "x", solid((32, 32)), output_mask=mask)
    assert info.value.key == "k3" and info.value.field == "output_mask"
    with pytest.raises(SampleError, match=text) as info:
        parse_sample(_raw(**{"output.png": _encode(solid((32, 32)), "PNG"), "output_mask.png": _encode(mask, "PNG")}))
    assert (info.value.key, info.value.url, info.value.field) == ("key7", "/d/shard-000003.tar", "output_mask.png")


def test_a_full_output_mask_warns_with_the_sample_name():
    full = _mask((32, 32), fill=255)
    with pytest.warns(MaskWarning, match="sample 'k3': the output mask is full"):
        sample = make_sample("k3", "x", solid((32, 32)), output_mask=full)
    with pytest.warns(MaskWarning, match="sample 'k3' in shard '/d/s.tar': the output mask is full"):
        parsed = parse_sample({**sample, "__url__": "/d/s.tar"})
    assert parsed.output_mask.getextrema() == (255, 255)
