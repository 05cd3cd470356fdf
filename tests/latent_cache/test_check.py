"""A run whose VAE or image fitting differs from a cached set's is refused before the model loads,
in one line naming the manifest and both fingerprints (or both fittings)."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from deft_omni.config_checks import ConfigError, check_config
from deft_omni.data import read_manifest
from deft_omni.model import ensure_tiny_omnigen
from deft_omni.train import CONFIG_DIR

from .conftest import encode

from fixtures.configs import tiny_default


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=tiny_default(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/unused"
    return cfg


def test_another_vae_or_fitting_is_refused_before_training(pixel_set, tmp_path):
    cached = encode(pixel_set, str(tmp_path / "cached"), max_image_side=None)["output"]  # tiny: 512 px
    fingerprint = read_manifest(cached)["latents"]["vae"]["fingerprint"]
    manifest = os.path.join(cached, "manifest.json")
    base = ["data=shards", f"data.train={cached}"]
    check_config(_compose(base))  # the run's VAE and its null side (512 px, the tiny model's) match
    check_config(_compose([*base, f"data.val={cached}"]))

    with pytest.raises(ConfigError) as info:
        check_config(_compose([*base, "data.max_image_side=256"]))
    text = str(info.value)
    assert text.startswith(f"data.train[0].path={cached}: the cached latents of {manifest}") and "\n" not in text
    assert "max_image_side=512" in text and "max_image_side=256" in text and "encode_latents" in text

    with pytest.raises(ConfigError, match=r"data\.val=.*bucket_sizes=\[\[32, 32\]\]"):
        bucketed = encode(pixel_set, str(tmp_path / "bucketed"), max_image_side=None, bucket_sizes=[(32, 32)])
        check_config(_compose(["data=shards", f"data.train={bucketed['output']}", "data.bucket_sizes=[[32,32]]",
                               f"data.val={bucketed['output']}"]))  # validation fits without buckets

    other = ensure_tiny_omnigen(seed=1)
    with pytest.raises(ConfigError) as info:
        check_config(_compose([*base, f"model.path={other}"]))
    text = str(info.value)
    assert manifest in text and "fingerprint" in text and "\n" not in text
    mine, theirs = text.split("fingerprint ")[1][:16], text.split("fingerprint ")[2][:16]
    assert fingerprint.startswith(mine) and mine != theirs
