"""The SD backbones: folders and the registry, the DreamBooth processor and SDXL's micro-conditioning,
the DDPM loss recomputed from its formula, deterministic validation, cached prompt encodings and
class images made once."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from deft_omni.adapters import AdapterConfig, inject_adapter
from deft_omni.backbones import LossConfig, load_backbone, resolve_model
from deft_omni.backbones.class_images import ensure_class_images
from deft_omni.backbones.sd_data import SDTrainProcessor
from deft_omni.backbones.sd_family import SDWeightsNotFound
from deft_omni.backbones.sd_objective import grid_timestep, min_snr_weights, train_timesteps
from deft_omni.data import SampleError, build_train_loader, make_sample, parse_sample
from deft_omni.data.schema import ShardSetWriter, read_manifest

from ._sd_data import subject_image


@pytest.fixture(scope="module")
def sdxl():
    return load_backbone("tiny", "sdxl")


def _batch(backbone, shards, batch_size=2):
    proc = backbone.make_processor(max_image_side=32)
    return next(iter(build_train_loader(str(shards), proc, batch_size=batch_size, epoch_length_batches=2,
                                        shuffle_buffer=0)))


def test_registry_detects_the_family_and_names_missing_files(tiny_sd_dirs, tmp_path):
    for family, folder in tiny_sd_dirs.items():
        assert resolve_model(str(folder))[0].family == family
        assert resolve_model(f"tiny-{family}")[1] == folder
    assert resolve_model("tiny")[0].family == "omnigen"  # the bare name stays OmniGen's
    broken = tmp_path / "sdxl"
    shutil.copytree(tiny_sd_dirs["sdxl"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "tokenizer_2")
    with pytest.raises(SDWeightsNotFound, match=r"unet/diffusion_pytorch_model.safetensors, tokenizer_2/vocab.json "
                                                r".*stabilityai/stable-diffusion-xl-base-1.0"):
        load_backbone(str(broken), "sdxl")


def test_processor_crops_like_dreambooth_and_records_micro_conditioning():
    proc = SDTrainProcessor(32, 16, seed=0, prior_loss_weight=0.5)
    raw = make_sample("k", "a photo of sks dog", subject_image(0, (80, 40)), prior=True)
    item = proc(parse_sample(raw))
    assert item.output_size == (32, 32) and item.original_size == (40, 80)
    assert item.crop_top_left == (0, 16)  # 80x40 scaled to 64x32, centre column crop
    assert item.prompt == "a photo of sks dog" and item.loss_weight == 0.5 and item.is_prior
    wide = SDTrainProcessor(32, 16, bucket_sizes=[(32, 32), (32, 64)])(parse_sample(raw))
    assert wide.output_size == (32, 64) and wide.crop_top_left == (0, 0)
    batch = proc.collate([item, proc(parse_sample(make_sample("j", "x", subject_image(1))))])
    assert batch["target_sizes"].tolist() == [[32, 32], [32, 32]] and batch["prompts"][1] == "x"
    dropped = SDTrainProcessor(32, 16, cfg_dropout=1.0)(parse_sample(raw))
    assert dropped.prompt == "" and dropped.cfg_dropped
    with pytest.raises(SampleError, match="text-to-image"):
        proc(parse_sample(make_sample("e", "edit <img><|image_1|></img>", subject_image(0), [subject_image(1)])))
    with pytest.raises(ValueError, match="multiple of 16"):
        SDTrainProcessor(40, 16)


def test_training_loss_is_the_ddpm_formula(sdxl, db_shards):
    batch = _batch(sdxl, db_shards)
    for kind, gamma in (("epsilon", None), ("v_prediction", 5.0), ("sample", 2.0)):
        cfg = LossConfig(prediction_type=kind, snr_gamma=gamma, noise_offset=0.1, latent_mode="mean")
        out = sdxl.training_loss(batch, cfg, torch.Generator().manual_seed(3))
        again = sdxl.training_loss(batch, cfg, torch.Generator().manual_seed(3))
        assert torch.equal(out.loss, again.loss)  # every draw from the generator: a step is replayable
        gen = torch.Generator().manual_seed(3)  # the same draws, in the backbone's order: t, noise, offset
        x0 = sdxl._latents(batch, "mean", None)
        t = torch.rand(2, generator=gen)
        steps = train_timesteps(t, 1000)
        noise = torch.randn(x0.shape, generator=gen) + 0.1 * torch.randn((2, 4, 1, 1), generator=gen)
        sched = sdxl.noise_scheduler
        abar = sched.alphas_cumprod[steps].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        target = {"epsilon": noise, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x0, "sample": x0}[kind]
        pred = sdxl._predictor(batch, x0.device)(noisy, steps)
        per = (pred.float() - target).pow(2).flatten(1).mean(1)
        if gamma is not None:
            snr = abar.flatten() / (1 - abar.flatten())
            weight = {"v_prediction": torch.clamp(snr, max=gamma) / (snr + 1), "sample": torch.clamp(snr, max=gamma)}
            per = per * weight[kind]
            assert torch.allclose(min_snr_weights(sched, kind, steps, gamma), weight[kind])
        torch.testing.assert_close(out.loss, (per * batch["loss_weight"]).mean(), rtol=1e-4, atol=1e-6)


def test_timesteps_follow_the_flow_convention():
    assert train_timesteps(torch.tensor([0.0, 0.5, 0.9999, 1.0]), 1000).tolist() == [999, 500, 0, 0]
    assert [grid_timestep(t, 1000) for t in (0.0, 0.5, 1.0)] == [999, 500, 0]
    uniform = train_timesteps(torch.rand(200_000, generator=torch.Generator().manual_seed(0)), 1000)
    assert uniform.min() == 0 and uniform.max() == 999 and abs(uniform.float().mean().item() - 499.5) < 3


def test_validation_is_deterministic_per_key(sdxl, db_shards):
    batch = _batch(sdxl, db_shards)
    loss, per_t = sdxl.validation_loss(batch, LossConfig())
    assert per_t.shape == (9,) and torch.equal(loss, sdxl.validation_loss(batch, LossConfig())[0])
    first = {k: v[:1] if hasattr(v, "shape") and v.dim() else v for k, v in batch.items()}
    first.update(keys=batch["keys"][:1], prompts=batch["prompts"][:1])
    alone, _ = sdxl.validation_loss(first, LossConfig(val_t_grid=[0.5]))
    pair, _ = sdxl.validation_loss(batch, LossConfig(val_t_grid=[0.5]))
    assert not torch.equal(alone, pair)  # a batch mean, and ...
    again, _ = sdxl.validation_loss(first, LossConfig(val_t_grid=[0.5]))
    assert torch.equal(alone, again)  # ... each key keeps its own noise


def test_micro_conditioning_reaches_the_unet(sdxl, db_shards):
    batch = _batch(sdxl, db_shards)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    steps = torch.tensor([100, 100])
    base = sdxl._predictor(batch, x.device)(x, steps)
    moved = dict(batch, crop_top_left=batch["crop_top_left"] + 64)
    assert not torch.allclose(base, sdxl._predictor(moved, x.device)(x, steps))


def test_prompt_encodings_cached_while_the_text_encoders_are_frozen(tiny_sd_dirs):
    backbone = load_backbone("tiny", "sd15")
    states, _ = backbone.encode_prompts(["a photo of sks dog", "a dog"], torch.device("cpu"))
    assert len(backbone._prompt_cache) == 2
    direct = backbone.pipeline().encode_prompt(prompt=["a dog"], device=torch.device("cpu"), num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)[0]
    torch.testing.assert_close(states[1:], direct)
    inject_adapter(backbone.denoiser, AdapterConfig(method="lora", rank=2, init_identity=True,
                                                    target_modules=r"text_encoder\..*q_proj"))
    backbone._prompt_cache.clear()
    states, _ = backbone.encode_prompts(["a dog"], torch.device("cpu"))
    assert not backbone._prompt_cache and states.requires_grad  # trained encoders: computed every step


class _FakeBackbone:
    """What ensure_class_images needs of a backbone, with the number of images it was asked for."""

    path = "fake"
    calls = 0

    def __init__(self):
        self.denoiser = torch.nn.Linear(1, 1)

    def generation_defaults(self, path):
        return {"guidance_scale": 5.0}

    def move_frozen(self, device):
        pass

    def render_rows(self, prompts, steps, side):
        _FakeBackbone.calls += 1
        return [[Image.new("RGB", (side, side), (prompts[0].seed % 255, 0, 0))]]


def test_class_images_made_once_and_given_sets_kept(tmp_path):
    prior = {"path": str(tmp_path / "prior"), "class_prompt": "a photo of dog", "num_class_images": 3}
    ensure_class_images(_FakeBackbone(), prior, size=16)
    manifest = read_manifest(prior["path"])
    assert manifest["total"] == 3 and _FakeBackbone.calls == 3 and manifest["options"]["guidance_scale"] == 5.0
    ensure_class_images(_FakeBackbone(), prior, size=16)
    assert _FakeBackbone.calls == 3  # cached
    ensure_class_images(_FakeBackbone(), {**prior, "num_class_images": 4}, size=16)
    assert _FakeBackbone.calls == 7 and read_manifest(prior["path"])["total"] == 4
    given = tmp_path / "given"
    with ShardSetWriter(str(given), source="dreambooth_prior") as writer:
        writer.write(make_sample("p0", "a photo of dog", subject_image(0), prior=True))
    ensure_class_images(_FakeBackbone(), {**prior, "path": str(given)}, size=16)
    assert _FakeBackbone.calls == 7 and read_manifest(str(given))["total"] == 1
