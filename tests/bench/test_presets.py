"""The card presets (configs/trainer/gpu*gb.yaml) compose, and hold what the recorded model recommends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.test_train import _compose

from benchmarks.full_size.cards import preset_for, recommend
from benchmarks.full_size.predict import Coefficients

RECORD = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "full_size.json"
PRESETS = {"gpu16gb": 16, "gpu24gb": 24, "gpu48gb": 48, "gpu80gb": 80}


@pytest.fixture(scope="module")
def coefficients():
    return Coefficients.from_dict(json.loads(RECORD.read_text())["coefficients"])


@pytest.mark.parametrize("name,card", PRESETS.items())
def test_card_preset_holds_the_recommendation(name, card, coefficients):
    cfg = _compose([f"trainer={name}"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed" and cfg.trainer.devices == 1
    rec = recommend(coefficients, card, "bf16", latents=("pixels",))
    assert rec is not None
    for key, value in preset_for(rec).items():
        assert OmegaConf.select(cfg, key) == value, f"configs/trainer/{name}.yaml {key}: rerun the table"


def test_card_preset_composes_with_an_experiment():
    cfg = _compose(["experiment=visualcloze_r32", "trainer=gpu24gb"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.data.batch_size == 2
    assert cfg.model.gradient_checkpointing is True and cfg.adapter.rank == 32 and cfg.model.torch_dtype == "bfloat16"
    OmegaConf.to_container(cfg, resolve=False)
