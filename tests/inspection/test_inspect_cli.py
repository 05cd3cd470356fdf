"""`python -m deft_omni.inspect` on the tiny OmniGen with saved adapters, checked against dense algebra."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import load_file

from deft_omni.adapters import AdapterConfig, inject_adapter, save_adapter
from deft_omni.inspect import main
from deft_omni.model import load_omnigen
from deft_omni.model.presets import ATTN_OUT

QKV_UNIT = "layers.0.self_attn.to_q+to_k+to_v"
TARGETS = r"layers\.\d+\.self_attn\.(to_q|to_k|to_v|to_out\.0)"


def _transformer(tiny_model_dir):
    return load_omnigen(tiny_model_dir).transformer.requires_grad_(False)


@pytest.fixture(scope="module")
def deft_adapter(tiny_model_dir, tmp_path_factory):
    """DEFT/qr over fused q/k/v + to_out, with random (non-identity) R and a spread-out P."""
    torch.manual_seed(0)
    model = _transformer(tiny_model_dir)
    cfg = AdapterConfig(method="deft", rank=4, decomposition="qr", target_modules=TARGETS,
                        fused_groups=[["to_q", "to_k", "to_v"]], init_identity=False, init_scale=5.0)
    inject_adapter(model, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".P"):
                p.normal_(0.0, 1.0)
    path = tmp_path_factory.mktemp("inspect") / "adapter"
    save_adapter(model, path)
    return path


def _rows(out):
    with open(out / "inspect.csv", newline="") as fh:
        return {r["unit"]: r for r in csv.DictReader(fh)}


def test_cli_writes_table_and_plots_equal_to_dense(deft_adapter, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main([str(deft_adapter), "--base", str(tiny_model_dir), "--out", str(out), "--k", "16",
                 "--quiet"]) == 0
    for name in ["inspect.csv", "inspect.md", "displacement.png", "heatmap_rel_fro.png", "heatmap_erank.png",
                 "heatmap_angle_min_deg.png", "heatmap_energy_topk.png"]:
        assert (out / name).is_file(), name
    rows = _rows(out)
    assert set(rows) == {QKV_UNIT, "layers.1.self_attn.to_q+to_k+to_v", "layers.0.self_attn.to_out.0",
                         "layers.1.self_attn.to_out.0"}
    row = rows[QKV_UNIT]
    assert (int(row["out"]), int(row["in"]), int(row["rank"])) == (3 * 64, 64, 4)

    # Dense oracle from the saved tensors and the DEFT formula W' = W0 - Q Q^T W0 + Q R (qr, s = 1).
    base = _transformer(tiny_model_dir)
    attn = base.layers[0].self_attn
    W0 = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]).double()
    tensors = load_file(str(deft_adapter / "adapter_model.safetensors"))
    P = tensors[f"base_model.model.{QKV_UNIT}.deft_P"].double()
    R = tensors[f"base_model.model.{QKV_UNIT}.deft_R"].double()
    Q = torch.linalg.qr(P).Q
    dW = (W0 - Q @ Q.T @ W0 + Q @ R) - W0
    s = torch.linalg.svdvals(dW).numpy()
    U = torch.linalg.svd(W0, full_matrices=False).U[:, :16]
    assert float(row["rel_fro"]) == pytest.approx(float(dW.norm() / W0.norm()), rel=1e-5)
    p = s[:4] / s[:4].sum()
    assert float(row["erank"]) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-4)
    angles = np.sort(np.degrees(scipy.linalg.subspace_angles(Q.numpy(), U.numpy())))
    np.testing.assert_allclose([float(a) for a in row["angles_deg"].split()], angles, atol=1e-2)
    energy = float((U.T @ dW).square().sum() / dW.square().sum())
    assert float(row["energy_topk"]) == pytest.approx(energy, rel=1e-4, abs=1e-6)
    md = (out / "inspect.md").read_text()
    assert "heatmap_rel_fro.png" in md and "displacement.png" in md and "| 0 | self_attn.to_q+to_k+to_v |" in md


def test_lora_unfused_and_layer_choice(tiny_model_dir, tmp_path):
    torch.manual_seed(1)
    model = _transformer(tiny_model_dir)
    inject_adapter(model, AdapterConfig(method="lora", rank=2, target_modules=ATTN_OUT))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()
    save_adapter(model, tmp_path / "lora")
    out = tmp_path / "out"
    assert main([str(tmp_path / "lora"), "--base", str(tiny_model_dir), "--out", str(out), "--layer", "1",
                 "--directions", "w0", "--quiet"]) == 0
    rows = _rows(out)
    assert set(rows) == {"layers.0.self_attn.to_out.0", "layers.1.self_attn.to_out.0"}
    assert "layers.1.self_attn.to_out.0, w0 plane" in (out / "inspect.md").read_text()


def test_cli_errors_are_clear(tmp_path, capsys, deft_adapter):
    assert main([str(tmp_path / "nope"), "--base", "tiny", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(deft_adapter), "--out", str(tmp_path / "o")]) == 2
    assert "--base" in capsys.readouterr().err
    assert main([str(deft_adapter), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"{QKV_UNIT}: W0 192x64, exact SVD" in printed and "4 units" in printed
