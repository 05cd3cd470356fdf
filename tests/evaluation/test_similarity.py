"""CLIP-I / CLIP-T / DINO / DINOv2 against cosines computed by hand, torchmetrics' CLIPScore, batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deft_omni.evaluation import EvalConfig, run_evaluation
from deft_omni.evaluation.inputs import clip_text

from ._eval_helpers import cosine, write_generated

PROMPTS = ["a photo of sks dog", "a sks dog in the jungle <img><|image_1|></img>", "a red cube on a table"]


@pytest.fixture
def subject_set(tmp_path, images):
    """Generated images: dog/ (2) and cube/ (1) sub-folders; references: 2 for dog, 1 for cube."""
    gen, refs = tmp_path / "gen", tmp_path / "refs"
    write_generated(gen / "dog", "0_a.png", images[0], instruction=PROMPTS[0])
    write_generated(gen / "dog", "1_b.png", images[4], instruction=PROMPTS[1])
    write_generated(gen / "cube", "2_c.png", images[1], instruction=PROMPTS[2])
    write_generated(refs / "dog", "00.png", images[2])
    write_generated(refs / "dog", "01.png", images[3])
    write_generated(refs / "cube", "00.png", images[3])
    return {"gen": str(gen), "refs": str(refs), "tmp": tmp_path,
            "items": [("cube/2_c.png", images[1], PROMPTS[2], [images[3]]),
                      ("dog/0_a.png", images[0], PROMPTS[0], [images[2], images[3]]),
                      ("dog/1_b.png", images[4], PROMPTS[1], [images[2], images[3]])]}


def _run(subject_set, tiny_dirs, batch_size, metrics=("clip_i", "clip_t", "dino", "dinov2"), **extra):
    cfg = EvalConfig(generated=subject_set["gen"], out=str(subject_set["tmp"] / f"out{batch_size}"),
                     references=subject_set["refs"], clip=tiny_dirs["clip"], dino=tiny_dirs["dino"],
                     dinov2=tiny_dirs["dinov2"], metrics=metrics, batch_size=batch_size, progress=False, **extra)
    return {row["image"]: row for row in run_evaluation(cfg)["rows"]}


@torch.no_grad()
def _clip_image(loaded, img):
    m, proc = loaded["clip"].model, loaded["clip"].image_processor
    pix = proc(images=[img], return_tensors="pt")["pixel_values"]
    return m.visual_projection(m.vision_model(pixel_values=pix).pooler_output)[0].numpy()


@torch.no_grad()
def _clip_text(loaded, text):
    m, tok = loaded["clip"].model, loaded["clip"].tokenizer
    enc = tok([text], return_tensors="pt")
    return m.text_projection(m.text_model(**enc).pooler_output)[0].numpy()


@torch.no_grad()
def _cls(loaded, name, img):
    m, proc = loaded[name].model, loaded[name].image_processor
    out = m(pixel_values=proc(images=[img], return_tensors="pt")["pixel_values"])
    # DINOv2's pooler is its normed CLS token; DINOv1 (no pooler) reads the CLS of last_hidden_state.
    feats = out.pooler_output if name == "dinov2" else out.last_hidden_state[:, 0]
    return feats[0].numpy()


def test_similarities_equal_hand_computed_cosines(subject_set, tiny_dirs, loaded):
    rows = _run(subject_set, tiny_dirs, batch_size=2)
    assert sorted(rows) == [name for name, *_ in subject_set["items"]]
    for name, img, prompt, refs in subject_set["items"]:
        row = rows[name]
        text = " ".join(prompt.replace("<img><|image_1|></img>", "").split())
        assert row["text"] == text
        assert row["clip_t"] == pytest.approx(cosine(_clip_image(loaded, img), _clip_text(loaded, text)), abs=1e-5)
        expect_i = np.mean([cosine(_clip_image(loaded, img), _clip_image(loaded, r)) for r in refs])
        assert row["clip_i"] == pytest.approx(expect_i, abs=1e-5)
        for model in ("dino", "dinov2"):
            expect = np.mean([cosine(_cls(loaded, model, img), _cls(loaded, model, r)) for r in refs])
            assert row[model] == pytest.approx(expect, abs=1e-5), model
    # Not degenerate: distinct images give distinct, non-unit similarities.
    assert len({round(r["dino"], 6) for r in rows.values()}) == 3
    assert all(r["clip_i"] < 0.99999 for r in rows.values())


class _Unwrapped(torch.nn.Module):
    """transformers >= 5 returns model outputs from get_*_features; torchmetrics 1.9 expects tensors."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        out = self.model.get_image_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = self.model.get_text_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_t_matches_torchmetrics_clipscore(subject_set, tiny_dirs, loaded):
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPProcessor

    rows = _run(subject_set, tiny_dirs, batch_size=3, metrics=("clip_t",))
    clip = loaded["clip"]
    processor = CLIPProcessor(image_processor=clip.image_processor, tokenizer=clip.tokenizer)
    seen_positive = 0
    for name, img, prompt, _ in subject_set["items"]:
        metric = CLIPScore(model_name_or_path=lambda: (_Unwrapped(clip.model), processor))
        pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        metric.update(pixels, clip_text(prompt))
        # CLIPScore = max(100 * cos, 0); we report the plain cosine.
        assert float(metric.compute()) == pytest.approx(100 * max(rows[name]["clip_t"], 0.0), abs=1e-3)
        seen_positive += rows[name]["clip_t"] > 0
    assert seen_positive >= 1, "all cosines clipped to 0: the comparison would be vacuous"


def test_batch_size_invariance(subject_set, tiny_dirs, tmp_path):
    from deft_omni.evaluation.tiny import build_tiny_aesthetic_head

    head = build_tiny_aesthetic_head(str(tmp_path / "head.safetensors"), "mlp", width=8)
    metrics = ("clip_i", "clip_t", "dino", "dinov2", "aesthetic", "sharpness")
    one = _run(subject_set, tiny_dirs, 1, metrics, aesthetic_head=head)
    three = _run(subject_set, tiny_dirs, 3, metrics, aesthetic_head=head)
    for name in one:
        for metric in metrics:
            assert one[name][metric] == pytest.approx(three[name][metric], abs=1e-5), (name, metric)
