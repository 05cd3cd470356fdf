"""data_prep.output: the output folder is absent or complete; --overwrite; interruption; leftovers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from data_prep import omnigen_jsonl
from deft_omni.core.atomic import TMP_MARK
from tests.data._data_helpers import modes, umask

from ._prep_helpers import jsonl_set, manifest, run_jsonl, temporaries

REPO = Path(__file__).resolve().parents[2]


def test_overwrite_is_refused_then_allowed(tmp_path, capsys):
    jsonl, imgs = jsonl_set(tmp_path)
    out = tmp_path / "out"
    assert run_jsonl(jsonl, imgs, out) == 0
    first = manifest(out)
    assert run_jsonl(jsonl, imgs, out) == 2
    err = capsys.readouterr().err
    assert "already holds a complete conversion (manifest.json present); pass --overwrite" in err
    assert manifest(out) == first
    assert run_jsonl(jsonl, imgs, out, "--overwrite", "--maxcount", "2") == 0
    assert len(manifest(out)["shards"]) == 3 and not temporaries(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run_jsonl(jsonl, imgs, foreign) == 2
    assert "is not a finished shard folder" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_interrupted_run_leaves_nothing_complete_looking(tmp_path, monkeypatch, capsys):
    jsonl, imgs = jsonl_set(tmp_path)
    out = tmp_path / "out"
    assert run_jsonl(jsonl, imgs, out) == 0
    before = (out / "manifest.json").read_bytes()
    calls = {"n": 0}
    real_build = omnigen_jsonl.build

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_build(job)

    monkeypatch.setattr(omnigen_jsonl, "build", flaky)
    assert run_jsonl(jsonl, imgs, out, "--overwrite") == 130
    assert "interrupted" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before  # the old complete output is untouched
    assert not temporaries(tmp_path)
    fresh = tmp_path / "fresh"
    calls["n"] = 0
    assert run_jsonl(jsonl, imgs, fresh) == 130
    assert not fresh.exists() and not temporaries(tmp_path)


def test_sigterm_and_leftovers_of_a_killed_run(tmp_path):
    # A leftover of a SIGKILLed run: a temp folder whose pid is gone -> removed by the next run.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out{TMP_MARK}{dead.pid}-0badc0de"
    stale.mkdir()
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
    while time.time() < deadline and not [n for n in temporaries(tmp_path) if n != stale.name]:
        time.sleep(0.05)
    time.sleep(0.3)  # into the conversion loop (2000 full decodes of a 1024 px JPEG: several seconds)
    assert proc.poll() is None
    assert not stale.exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "removing the leftover temporary folder" in err and str(stale) in err and "interrupted" in err
    assert not out.exists() and not temporaries(tmp_path)


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_output_takes_the_umask_modes(tmp_path, mask):
    """A teammate reads a shared set: folders 0o777 & ~umask, files 0o666 & ~umask (not 0700/0600)."""
    jsonl, imgs = jsonl_set(tmp_path)
    out = tmp_path / "shared" / "out"
    with umask(mask):
        assert run_jsonl(jsonl, imgs, out, "--maxcount", "4") == 0
    files = [out / "manifest.json", *sorted(out.glob("*.tar"))]
    assert len(files) == 3
    assert modes(out, out.parent) == [0o777 & ~mask] * 2
    assert modes(*files) == [0o666 & ~mask] * 3
