"""The concept run: a short DEFT run on the demo's data raises the concept's fidelity above every one
of several random adapters of the same rank and the same per-layer ||dW||_F: what it learned is
the concept, not the size of a change.  And the demo's command plumbing: the judge runs before and
after, and lands in summary.json."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from deft_omni.adapters import load_adapter, merge_adapters
from deft_omni.backbones import load_backbone
from deft_omni.core.seeding import derive_seed
from deft_omni.train import CONFIG_DIR, train
from deft_omni.world.concept import CONCEPT_JUDGE, concept_prompts
from deft_omni.world.judged import SamplerSettings, generate_for
from deft_omni.world.metrics import evaluate_pairs

# Measured: trained 0.748 against random 0.701-0.709 (their spread is about 0.003).
STEPS, N, RANDOM_ADAPTERS, MARGIN = 60, 16, 5, 0.03


def _fidelity(model, backbone, processor) -> float:
    specs = concept_prompts(N, "concept", seed=5)
    images = generate_for(specs, model, backbone.vae, processor, SamplerSettings(steps=8))
    return evaluate_pairs(zip(specs, images), cfg=CONCEPT_JUDGE).shape_iou


@pytest.fixture(scope="module")
def concept_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("concept")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"max_steps={STEPS}", "world.n=4", f"callbacks.sample_every_n_steps={STEPS}",
            f"trainer.val_check_interval={STEPS}", "callbacks.progress_refresh_rate=0", "optim.lr=1e-2"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(out / "cache")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train(cfg)
    finally:
        torch.set_num_threads(before)
    return out, summary


def test_the_demo_judges_before_and_after(concept_run):
    out, summary = concept_run
    judged = summary["world_judge"]
    assert judged["before"]["step"] == 0 and judged["after"]["step"] == STEPS
    assert set(judged["after"]) >= {"acquisition", "fidelity", "editability", "retention"}
    assert json.loads((out / "summary.json").read_text())["world_judge"]["after"] == judged["after"]
    assert (out / "world_judge.png").is_file()


def test_the_concept_beats_random_adapters_of_the_same_norm(concept_run, one_thread):
    out, _ = concept_run
    backbone = load_backbone("world")
    processor = backbone.make_processor(max_image_side=96)
    load_adapter(backbone.denoiser, out / "adapters" / "final")
    base = {n: p.detach().clone() for n, p in backbone.denoiser.named_parameters()}  # W0, unmerged
    merge_adapters(backbone.denoiser)
    trained = _fidelity(backbone.denoiser, backbone, processor)
    merged = dict(backbone.denoiser.named_parameters())
    deltas = {n: merged[n].detach() - w for n, w in base.items() if n in merged and not torch.equal(merged[n], w)}
    assert deltas, "the adapter changed no weight"
    randoms = []
    for k in range(RANDOM_ADAPTERS):
        g = torch.Generator().manual_seed(derive_seed("random-adapter", k))
        with torch.no_grad():
            for n, d in deltas.items():
                a = torch.randn(d.shape[0], 8, generator=g) @ torch.randn(8, d.shape[1], generator=g)
                merged[n].copy_(base[n] + a * (d.norm() / a.norm()))
        randoms.append(_fidelity(backbone.denoiser, backbone, processor))
    assert trained > max(randoms) + MARGIN, (trained, randoms)


def test_a_resumed_run_keeps_its_before(tmp_path):
    """Lightning restores the weights before on_fit_start but global_step only after it: the judge
    must not score the resumed weights as the run's "before"."""

    def run(steps, ckpt=None):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[
                f"max_steps={steps}", "world.n=2", "world.sample_steps=2", "callbacks.sample_every_n_steps=100",
                "trainer.val_check_interval=100", "callbacks.resume_every_n_steps=3",
                "callbacks.progress_refresh_rate=0", "optim.lr=1e-1", "data.batch_size=2"])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.cache_dir = str(tmp_path / "cache")
            cfg.ckpt_path = ckpt
        return train(cfg)["world_judge"]

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = run(3)
        resumed = run(6, "last")
    finally:
        torch.set_num_threads(before)
    assert resumed["before"] == first["before"] and resumed["before"]["step"] == 0
    assert [h["step"] for h in resumed["history"]][-1] == 6


def test_the_vae_ceiling_of_the_concept_is_read_with_the_star_among_the_shapes(one_thread):
    from deft_omni.world.concept import concept_roundtrip_scores

    vae = load_backbone("world").vae
    row = concept_roundtrip_scores(vae, n=30)["concept/roundtrip"]
    # Measured on 200: the star read 63 %, colour 100 %; a judge without the star reads 0 %.
    assert row.n == 30 and 0.4 <= row.per_attribute["shape"] and row.per_attribute["colour"] >= 0.9
