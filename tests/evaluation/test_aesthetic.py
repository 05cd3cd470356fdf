"""The LAION aesthetic head: linear and MLP layouts, .pth and safetensors, width check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deft_omni.evaluation import (
    AestheticHeadError,
    EvalConfig,
    load_aesthetic_head,
    run_evaluation,
)
from deft_omni.evaluation.tiny import build_tiny_aesthetic_head

from ._eval_helpers import write_generated


def _hand_score(state: dict, x: np.ndarray) -> np.ndarray:
    """Apply the published layout by hand: linear, or layers 0, 2, 4, 6, 7 in order (no activations)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    names = ["weight"] if "weight" in state else [f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)]
    for name in names:
        w = state[name].double().numpy()
        b = state[name[:-len("weight")] + "bias"].double().numpy()
        x = x @ w.T + b
    return x[:, 0]


@pytest.mark.parametrize("layout,suffix", [("linear", ".pth"), ("mlp", ".pth"), ("mlp", ".safetensors")])
def test_layouts_give_hand_computed_scores(tmp_path, layout, suffix):
    path = build_tiny_aesthetic_head(str(tmp_path / f"head{suffix}"), layout, width=8)
    head = load_aesthetic_head(path)
    assert head.layout == layout and head.in_features == 8
    if suffix == ".pth":
        state = torch.load(path, weights_only=True)
    else:
        from safetensors.torch import load_file

        state = load_file(path)
    emb = np.random.default_rng(0).normal(size=(4, 8))
    unit = torch.nn.functional.normalize(torch.tensor(emb, dtype=torch.float32), dim=-1)
    assert np.allclose(head(unit).numpy(), _hand_score(state, emb), atol=1e-5)


def test_prefixed_keys_and_bad_files(tmp_path):
    state = {"module.weight": torch.ones(1, 8), "module.bias": torch.tensor([0.5])}
    torch.save(state, tmp_path / "dp.pth")
    head = load_aesthetic_head(str(tmp_path / "dp.pth"))
    x = torch.nn.functional.normalize(torch.ones(1, 8), dim=-1)
    assert float(head(x)) == pytest.approx(8 / np.sqrt(8) + 0.5, rel=1e-6)
    with pytest.raises(AestheticHeadError, match="no such file"):
        load_aesthetic_head(str(tmp_path / "missing.pth"))
    torch.save({"layers.0.weight": torch.ones(4, 8), "layers.2.weight": torch.ones(1, 3)}, tmp_path / "broken.pth")
    with pytest.raises(AestheticHeadError, match="do not chain"):
        load_aesthetic_head(str(tmp_path / "broken.pth"))


def test_wrong_width_is_a_clear_error(tmp_path, tiny_dirs, images):
    head = build_tiny_aesthetic_head(str(tmp_path / "wide.safetensors"), "mlp", width=768)
    with pytest.raises(AestheticHeadError, match=r"768-wide .* gives 8-wide"):
        load_aesthetic_head(head).check_width(8, "tiny")
    write_generated(tmp_path / "gen", "0.png", images[0], instruction="a dog")
    cfg = EvalConfig(generated=str(tmp_path / "gen"), out=str(tmp_path / "out"), clip=tiny_dirs["clip"],
                     aesthetic_head=head, metrics=("aesthetic",), progress=False)
    with pytest.raises(AestheticHeadError, match="--aesthetic-clip"):
        run_evaluation(cfg)
