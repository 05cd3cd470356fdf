"""train(cfg) in-process, config composition for every experiment, and early config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from deft_omni.config_checks import ConfigError, check_config
from deft_omni.train import CONFIG_DIR, train

from fixtures.configs import tiny_default

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def _compose(overrides=(), out_dir=None):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=tiny_default(overrides))
    # outside a Hydra run, the output dir interpolation needs a concrete value
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir or "/tmp/unused")
    return cfg


def test_every_experiment_composes():
    assert {"demo", "visualcloze_r32", "insdet_objects", "insdet_scenes", "sfm_camera", "dreambooth",
            "dreambench_plus"} <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        cfg = _compose([f"experiment={name}"])
        assert cfg.task_name == name
        assert cfg.adapter.target_modules  # a targets preset applied
        OmegaConf.to_container(cfg.adapter, resolve=True)


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_holds_only_deltas(name):
    """Every value an experiment file sets differs from what its groups already give: a file that
    restated a default would fail here."""
    raw = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "experiment" / f"{name}.yaml"))
    groups = []
    for entry in raw.pop("defaults", []):
        (key, value), = entry.items()
        groups.append(f"{key.removeprefix('override /')}={value}")
    base = OmegaConf.to_container(_compose(["~experiment", *groups]), resolve=False)
    for key, value in _leaves(raw):
        current = base
        for part in key.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        assert value != current, f"experiment/{name}.yaml restates {key}={value!r}, already the default"


def test_visualcloze_is_the_papers_run():
    cfg = _compose(["experiment=visualcloze_r32"])
    assert cfg.adapter.rank == 32 and cfg.adapter.decomposition == "qr"
    assert cfg.adapter.fused_groups == [["to_q", "to_k", "to_v"]]
    assert cfg.model.torch_dtype == "bfloat16" and cfg.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("trainer,devices,strategy", [("ddp4", 4, "ddp"), ("ddp_cpu2", 2, "ddp"),
                                                      ("fsdp", 4, "fsdp"), ("gpu", 1, "auto")])
def test_trainer_configs_compose(trainer, devices, strategy):
    cfg = _compose([f"trainer={trainer}"])
    assert cfg.trainer.devices == devices and cfg.trainer.strategy == strategy
    if trainer in ("ddp4", "fsdp"):
        assert cfg.model.torch_dtype == "bfloat16"  # the base stored in bf16


@pytest.mark.parametrize("targets,expect", [("mlp", "mlp"), ("all_linear", "all-linear"), ("attn_mlp", "mlp")])
def test_target_presets(targets, expect):
    assert expect in _compose([f"targets={targets}"]).adapter.target_modules


@pytest.mark.parametrize("override,match", [
    ("adapter.rank=0", "rank must be a positive integer"),
    ("adapter.decomposition=svd", "decomposition='svd' is unknown"),
    ("model.path=/does/not/exist", "model.path='/does/not/exist' does not exist"),
    ("data.val=/no/val", "data.val='/no/val' does not exist"),
    ("max_steps=0", "max_steps must be a positive"),
])
def test_config_errors_are_readable(override, match):
    with pytest.raises(ConfigError, match=match):
        check_config(_compose([override]))


def test_missing_data_path_names_the_key():
    cfg = _compose(["experiment=dreambooth", "model.path=/tmp"])
    with pytest.raises(ConfigError, match=r"data.train\[0\].path=.* does not exist"):
        check_config(cfg)


def test_missing_model_path_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("OMNIGEN_PATH", raising=False)
    cfg = _compose(["model=omnigen"])
    with pytest.raises(ConfigError, match="model.path: set model.path="):
        check_config(cfg)


def test_train_in_process_writes_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFT_OMNI_CACHE", str(tmp_path / "cache"))
    cfg = _compose(["max_steps=12", "data.synthetic.n_train=32", "data.synthetic.n_val=8", "data.batch_size=2",
                    "trainer.val_check_interval=6", "callbacks.sample_every_n_steps=6",
                    "callbacks.adapter_every_n_steps=6", "callbacks.resume_every_n_steps=6"], tmp_path / "run")
    summary = train(cfg)
    run = tmp_path / "run"
    assert summary["steps"] == 12 and summary["trainable_params"] > 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 12
    for rel in ["adapters/final/adapter_model.safetensors", "adapters/step_000006", "checkpoints/last.ckpt",
                "samples/step_000006.png", "loss_curve.png", "logs/metrics.csv", "config.yaml"]:
        assert (run / rel).exists(), rel
    # What the loader read and skipped is recorded, not only logged.
    assert 12 * 2 <= summary["data"]["data/samples_used"] <= 12 * 2 + 2  # + what the loader fetched ahead
    assert not any(k.startswith("data/skipped/") for k in summary["data"])
    assert "data/samples_used" in (run / "logs" / "metrics.csv").read_text().splitlines()[0]


def test_tensorboard_logger_is_optional(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from deft_omni.train import build_trainer

    trainer = build_trainer(_compose(["logger=tensorboard"], tmp_path), tmp_path)
    assert {type(lg) for lg in trainer.loggers} == {CSVLogger, TensorBoardLogger}
    assert [type(lg) for lg in build_trainer(_compose([], tmp_path), tmp_path).loggers] == [CSVLogger]
