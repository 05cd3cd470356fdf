"""data_prep.cli: option types, the captioner hook spec, and the Makefile's prepare-* targets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from data_prep import cli
from data_prep.errors import ConversionError

REPO = Path(__file__).resolve().parents[2]


def test_colours():
    assert cli.parse_colour("#ff8000") == (255, 128, 0) and cli.parse_colour("1,2,3") == (1, 2, 3)
    with pytest.raises(Exception, match="colour"):
        cli.parse_colour("mauve-ish")


def test_captioner_spec_errors():
    with pytest.raises(ConversionError, match="expected 'module:function'"):
        cli.load_callable("nocolon")
    with pytest.raises(ConversionError, match="cannot import 'no_such_mod_xyz'"):
        cli.load_callable("no_such_mod_xyz:f")
    with pytest.raises(ConversionError, match="has no attribute 'nope'"):
        cli.load_callable("os.path:nope")
    assert cli.load_callable("os.path:join") is os.path.join


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_makefile_prepare_targets():
    env = {**os.environ, "MAKEFLAGS": ""}
    roots = {"prepare-jsonl": ("JSONL", "omnigen_jsonl", "/d/omnigen/train"),
             "prepare-insdet": ("INSDET_ROOT", "insdet objects", "/d/insdet_scenes/train"),
             "prepare-colmap": ("COLMAP_ROOT", "colmap", "/d/sfm_camera/train"),
             "prepare-visualcloze": ("GRAPH200K_ROOT", "visualcloze", "/d/visualcloze/test"),
             "prepare-dreambooth": ("DREAMBOOTH_ROOT", "dreambooth dreambooth", "/d/dreambooth/train"),
             "prepare-dreambench": ("DREAMBENCH_ROOT", "dreambooth dreambench", "/d/dreambench_plus/train")}
    for target, (var, module, out) in roots.items():
        dry = subprocess.run(["make", "-n", target, f"{var}=/src", "OUT=/d"], cwd=REPO, env=env,
                             capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        assert f"-m data_prep.{module}" in dry.stdout and out in dry.stdout, dry.stdout
        missing = subprocess.run(["make", target], cwd=REPO, env=env, capture_output=True, text=True)
        assert missing.returncode != 0 and f"set {var}=" in missing.stderr
