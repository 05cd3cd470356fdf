"""data_prep.pool: results in job order, so the shards are byte-identical for any --workers."""

from __future__ import annotations

from pathlib import Path

from ._prep_helpers import corrupt_jpeg, jsonl_set, manifest, run_jsonl


def test_workers_give_identical_shards(tmp_path):
    jsonl, imgs = jsonl_set(tmp_path, n=12)
    corrupt_jpeg(Path(imgs) / "5.jpg")
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_jsonl(jsonl, imgs, a, "--maxcount", "4", "--reencode") == 0
    assert run_jsonl(jsonl, imgs, b, "--maxcount", "4", "--reencode", "--workers", "2") == 0
    names = sorted(p.name for p in a.glob("*.tar"))
    assert names == sorted(p.name for p in b.glob("*.tar")) and len(names) == 3
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    ma, mb = manifest(a), manifest(b)
    assert ma["shards"] == mb["shards"] and ma["skipped"] == mb["skipped"] and len(ma["skipped"]) == 1
