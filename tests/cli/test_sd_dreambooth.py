"""DreamBooth on the tiny SD1.5 and SDXL stacks through the real commands: `python -m deft_omni.train`
(subprocesses, as users run it) on shards from data_prep.dreambooth, then generation and evaluation.

Per family: the validation loss at fixed t and noise falls by >= 20%, the adapter is saved, a run
resumed from the middle checkpoint ends on the same adapter, `generate` draws the same images live
and merged and again from a sidecar, and `evaluate` gives CLIP-T, CLIP-I, DINOv1 and DINOv2 per
subject and overall.  The metric models are tiny random ones (the numbers mean nothing).  Tiny SD
adapters learn slowly through attention alone, so the run trains every UNet Linear
(targets=sd_unet_all) at a high learning rate; SD1.5 trains LoRA, SDXL DEFT.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image
from safetensors.torch import load_file

from deft_omni.adapters import load_adapter
from deft_omni.backbones import LossConfig, load_backbone
from deft_omni.data import build_val_loader
from deft_omni.evaluate import main as evaluate_main
from deft_omni.evaluation.tiny import build_tiny_clip, build_tiny_dino, build_tiny_dinov2
from deft_omni.generate import main as generate_main
from deft_omni.model.tiny import default_cache_dir
from deft_omni.train import CONFIG_DIR, train
from tests.backbones._sd_data import dreambench_shards, dreambooth_shards

ROOT = Path(__file__).resolve().parents[2]
STEPS = 100
COMMON = [f"max_steps={STEPS}", "trainer=cpu", "targets=sd_unet_all", "optim.lr=1e-2", "data.max_image_side=32",
          "data.num_workers=0", f"trainer.val_check_interval={STEPS // 2}",
          f"callbacks.resume_every_n_steps={STEPS // 2}", "callbacks.resume_keep_last=3",
          f"callbacks.adapter_every_n_steps={STEPS}", f"callbacks.sample_every_n_steps={STEPS}",
          "callbacks.sample_num_steps=2", "callbacks.progress_refresh_rate=0",
          "callbacks.sample_prompts=[{instruction: 'a photo of sks dog', height: 32, width: 32}]"]
FAMILIES = {
    "sd15": ["experiment=dreambooth_sd15", "model=sd15_tiny", "adapter=lora", "adapter.rank=8",
             "data.prior.num_class_images=4", "+data.prior.steps=2"],
    "sdxl": ["experiment=dreambench_plus_sdxl", "model=sdxl_tiny", "adapter.rank=8", "data.batch_size=2"],
}


def _train(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "DEFT_OMNI_CACHE": str(default_cache_dir()), "PYTHONPATH": str(ROOT / "src") + os.pathsep +
           str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "deft_omni.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs: dict) -> None:
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{out[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both families trained by the command (run a, two processes in parallel), then resumed from
    the middle checkpoint in this process (run b: the same train(cfg) the command calls)."""
    root = tmp_path_factory.mktemp("sd_dreambooth")
    shards = {"sd15": dreambooth_shards(root), "sdxl": dreambench_shards(root)}
    args = {fam: [*COMMON, *extra, f"data.train=[{{path: '{shards[fam]}'}}]", f"data.val={shards[fam]}"]
            for fam, extra in FAMILIES.items()}
    args["sd15"].append(f"data.prior.path={root / 'class_images'}")
    _wait({fam: _train([*a, f"hydra.run.dir={root / fam / 'a'}"]) for fam, a in args.items()})
    middle = f"step_{STEPS // 2:06d}.ckpt"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for fam, a in args.items():
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose("train", overrides=[*a, f"ckpt_path={root / fam / 'a' / 'checkpoints' / middle}"])
            with open_dict(cfg):
                cfg.paths.output_dir = str(root / fam / "b")
            train(cfg)
    finally:
        torch.set_num_threads(before)
    return root, shards


def _val_loss(backbone, shards: Path, batch_size: int) -> float:
    total, n = 0.0, 0
    for batch in build_val_loader(str(shards), backbone.make_processor(max_image_side=32), batch_size=batch_size):
        loss, _ = backbone.validation_loss(batch, LossConfig())
        total, n = total + float(loss) * len(batch["keys"]), n + len(batch["keys"])
    return total / n


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_loss_falls_adapter_saved_resume_exact(runs, family, one_thread):
    root, shards = runs
    run = root / family / "a"
    final = run / "adapters" / "final"
    meta = json.loads((final / "deft_omni.json").read_text())
    assert meta["config"]["method"] == ("lora" if family == "sd15" else "deft")
    assert all(m.startswith("unet.") for u in meta["units"] for m in u["modules"])
    backbone = load_backbone("tiny", family)
    batch_size = 2 if family == "sd15" else 1
    before = _val_loss(backbone, shards[family], batch_size)
    load_adapter(backbone.denoiser, final)
    after = _val_loss(backbone, shards[family], batch_size)
    assert after <= 0.8 * before, (before, after)
    logged = [float(r["val/loss"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("val/loss")]
    assert logged[-1] == pytest.approx(after, rel=1e-4)
    assert (run / "samples" / f"step_{STEPS:06d}.png").is_file()
    if family == "sd15":  # class images generated once by the base model, as prior shards
        manifest = json.loads((root / "class_images" / "manifest.json").read_text())
        assert manifest["total"] == 4 and manifest["options"]["class_prompt"] == "a photo of dog"
    resumed = load_file(str(root / family / "b" / "adapters" / "final" / "adapter_model.safetensors"))
    straight = load_file(str(final / "adapter_model.safetensors"))
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_metric_models")
    return {"clip": build_tiny_clip(str(root / "clip")), "dino": build_tiny_dino(str(root / "dino")),
            "dinov2": build_tiny_dinov2(str(root / "dinov2"))}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_generate_live_merged_sidecar_then_evaluate(runs, metric_models, family, tmp_path, one_thread):
    root, shards = runs
    evals = json.loads((shards[family] / "eval_prompts.json").read_text())
    subject = next(iter(evals["subjects"].values()))
    prompts = (subject.get("prompts_with_token") or subject["prompts"])[:2]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    common = ["--model", f"tiny-{family}", "--adapter", str(root / family / "a" / "adapters" / "final"),
              "--prompts", str(tmp_path / "prompts.txt"), "--height", "32", "--width", "32", "--steps", "3",
              "--seed", "5", "--no-progress"]
    live = generate_main([*common, "--out", str(tmp_path / "live")])
    merged = generate_main([*common, "--merge", "--out", str(tmp_path / "merged")])
    for a, b in zip(live, merged):
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 1
    side = json.loads(live[1].with_suffix(".json").read_text())
    assert side["model"]["family"] == family and side["guidance_scale"] == (7.5 if family == "sd15" else 5.0)
    assert side["sampler"]["name"].startswith("StableDiffusion") and side["prompt"]["negative_prompt"] is None
    again = generate_main(["--from-sidecar", str(live[1].with_suffix(".json")), "--out", str(tmp_path / "again"),
                           "--no-progress"])
    assert np.array_equal(_pixels(again[0]), _pixels(live[1]))
    out = tmp_path / "eval"
    assert evaluate_main(["--generated", str(tmp_path / "live"), "--references", str(shards[family] /
                          "eval_prompts.json"), "--clip", metric_models["clip"], "--dino", metric_models["dino"],
                          "--dinov2", metric_models["dinov2"], "--metrics", "clip_t,clip_i,dino,dinov2",
                          "--strip-token", "sks", "--out", str(out), "--no-progress"]) == 0
    rows = {r["subject"]: r for r in csv.DictReader(open(out / "per_subject.csv"))}
    assert set(rows) == {next(iter(evals["subjects"])), "overall"}
    for metric in ("clip_t", "clip_i", "dino", "dinov2"):
        assert -1.0 <= float(rows["overall"][f"{metric}_mean"]) <= 1.0
