"""Everything checkable before the weights load is checked, each with one readable line; null
image sides become the model's largest (tiny: 512 px)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from deft_omni.config_checks import ConfigError, check_config
from deft_omni.data import make_synthetic_shards
from deft_omni.train import CONFIG_DIR, _data_paths

from fixtures.configs import tiny_default


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    return make_synthetic_shards(str(tmp_path_factory.mktemp("cc") / "set"), n_train=8, n_val=4,
                                 image_sizes=((32, 32),), maxcount=8)


def _compose(overrides=()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=tiny_default(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/unused"
    return cfg


def test_image_sides_are_checked_against_the_model(shard_set):
    base = ["data=shards", f"data.train={shard_set['train']}"]
    cfg = _compose(base)
    check_config(cfg)  # null sides: resolved to the tiny model's 512 px
    assert cfg.data.max_image_side == 512 and cfg.callbacks.sample_max_image_side == 512
    for override, key in [("data.max_image_side=1024", "data.max_image_side=1024"),
                          ("callbacks.sample_max_image_side=1024", "callbacks.sample_max_image_side=1024"),
                          ("data.bucket_sizes=[[640,512]]", "data.bucket_sizes[0]"),
                          ("+callbacks.sample_prompts=[{instruction: x, height: 1024, width: 512}]",
                           "callbacks.sample_prompts[0] is 1024x512")]:
        with pytest.raises(ConfigError, match="at most 512 px") as info:
            check_config(_compose([*base, override]))
        assert key in str(info.value) and "\n" not in str(info.value)


def test_plain_string_data_train(shard_set):
    cfg = _compose(["data=shards", f"data.train={shard_set['train']}"])
    check_config(cfg)
    train, _, _ = _data_paths(cfg)
    assert train == [(shard_set["train"], 1.0)]


@pytest.mark.parametrize("override,match", [
    ("optim.lr=-1", "optim: .*lr must be > 0"),
    ("optim.schedule=linear", "optim: .*schedule"),
    ("loss.t_std=0", "loss: .*t_std"),
    ("ema.decay=1.5", "ema: .*decay"),
    ("adapter.rank=128", "adapter: .*rank 128 exceeds the output size 64"),
    ("adapter.target_modules=[to_qq]", "adapter: target_modules=\\['to_qq'\\] matched no Linear layer"),
])
def test_settings_that_cannot_work_fail_before_the_model_loads(override, match, monkeypatch):
    import deft_omni.backbones.omnigen as omnigen

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load before the config is checked")

    monkeypatch.setattr(omnigen, "load_omnigen", no_load)
    with pytest.raises(ConfigError, match=match):
        check_config(_compose([override]))


def test_broken_manifest_is_a_config_error(shard_set, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(shard_set["train"], broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"data.train\[0\].path: .*manifest.json"):
        check_config(_compose(["data=shards", f"data.train={broken}"]))


def test_grids_show_the_runs_own_data_unless_prompts_are_given(shard_set):
    from deft_omni.train import sample_prompts

    cfg = _compose(["data=shards", f"data.train={shard_set['train']}", f"data.val={shard_set['val']}"])
    check_config(cfg)
    auto = sample_prompts(cfg)
    assert len(auto) == 4 and all(p.reference is not None for p in auto)
    assert "a red circle on a blue background" not in [p.instruction for p in auto]  # not the demo's prompts
    given = _compose(["data=shards", f"data.train={shard_set['train']}",
                      "callbacks.sample_prompts=[{instruction: my prompt, height: 32, width: 32}]"])
    assert [p["instruction"] for p in sample_prompts(given)] == ["my prompt"]


def test_quantised_base_settings(monkeypatch):
    import importlib.util

    with pytest.raises(ConfigError, match=r"model: .*model.quantize='int4'"):
        check_config(_compose(["model.quantize=int4"]))
    with pytest.raises(ConfigError, match="adapter.method=full trains every base weight: set model.quantize=none"):
        check_config(_compose(["model.quantize=int8", "adapter.method=full"]))
    check_config(_compose(["model.quantize=int8"]))  # an adapter on a quantised base: fine
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"needs torchao.*pip install 'deft_omni\[quant\]'"):
        check_config(_compose(["model.quantize=int8"]))
