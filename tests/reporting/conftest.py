"""Fixtures for the report tests: one thread and one real (short) training run of the tiny OmniGen."""

from __future__ import annotations

import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from deft_omni.train import CONFIG_DIR, train


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 12-step DEFT run with validation and two sample grids (steps 6 and 12)."""
    root = tmp_path_factory.mktemp("report")
    old = {k: os.environ.get(k) for k in ("DEFT_OMNI_CACHE", "RANK", "WORLD_SIZE")}
    os.environ["DEFT_OMNI_CACHE"] = str(root / "cache")
    os.environ.pop("RANK", None)
    os.environ.pop("WORLD_SIZE", None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        overrides = ["experiment=tiny_synthetic", "max_steps=12", "adapter.rank=2", "data.synthetic.n_train=16", "data.synthetic.n_val=4",
                     "data.batch_size=2", "trainer.val_check_interval=6", "callbacks.sample_every_n_steps=6",
                     "callbacks.adapter_every_n_steps=12", "callbacks.resume_every_n_steps=12",
                     "trainer.log_every_n_steps=2"]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(root / "run")
        train(cfg)
        hydra_dir = root / "run" / ".hydra"
        hydra_dir.mkdir()
        (hydra_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    finally:
        torch.set_num_threads(threads)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return root / "run"
