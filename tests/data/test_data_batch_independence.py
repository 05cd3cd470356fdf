"""A sample's model output must not depend on its batch mates (RoPE, padding, masks, offsets).

diffusers' OmniGenTransformer2DModel computes RoPE from the first sample's position ids
only; collate puts the least-padded sample first so every other sample is merely shifted.
The tiny model is fed fake latents (pixels average-pooled 8x plus a mean channel) instead
of a VAE: any deterministic function of the pixels serves.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ._data_helpers import solid

from deft_omni.data import OmniGenTrainProcessor, Sample

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = diffusers.OmniGenTransformer2DModel(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128, num_layers=2,
        vocab_size=512, pad_token_id=0, pos_embed_max_size=32,
        rope_scaling={"short_factor": [1.0] * 8, "long_factor": [1.0] * 8})
    return m.eval()


def fake_latent(pixels):
    pooled = F.avg_pool2d(pixels, 8)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


def run(model, batch, seeds):
    """Model output per key; noise and timestep are fixed per key (seeds[key])."""
    keys = batch["keys"]
    gens = [torch.Generator().manual_seed(seeds[k]) for k in keys]
    h, w = (s // 8 for s in batch["output_size"])
    noise = torch.stack([torch.randn(4, h, w, generator=g) for g in gens])
    t = torch.tensor([0.1 + 0.8 * (seeds[k] % 7) / 7 for k in keys])
    with torch.no_grad():
        out = model(hidden_states=noise, timestep=t, input_ids=batch["input_ids"],
                    input_img_latents=[fake_latent(x) for x in batch["input_images"]],
                    input_image_sizes=batch["input_image_sizes"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"]).sample
    return {k: out[i] for i, k in enumerate(keys)}


def permute(batch, perm):
    """Reorder batch rows (test-only; used to put a padded sample first on purpose)."""
    out = dict(batch)
    for name in ("input_ids", "attention_mask", "position_ids", "output_images", "padding"):
        out[name] = batch[name][perm]
    out["keys"] = [batch["keys"][i] for i in perm]
    images, sizes, flat = [], {}, iter(batch["input_images"])
    per_row = {b: [next(flat) for _ in spans] for b, spans in batch["input_image_sizes"].items()}
    for new_b, old_b in enumerate(perm):
        if old_b in per_row:
            sizes[new_b] = batch["input_image_sizes"][old_b]
            images.extend(per_row[old_b])
    out["input_images"], out["input_image_sizes"] = images, sizes
    return out


def test_output_independent_of_batch_mates(model, tokenizer):
    proc = OmniGenTrainProcessor(tokenizer, cfg_dropout=0.0)
    target = Sample(key="target", instruction="<img><|image_1|></img> the same shape in green", task="t",
                    output=solid((32, 32)), inputs=[solid((32, 16), (10, 200, 30))])
    shorter = Sample(key="shorter", instruction="a red", task="t", output=solid((32, 32), (0, 0, 90)))
    longer = Sample(key="longer", task="t", output=solid((32, 32), (0, 90, 0)),
                    instruction="<img><|image_1|></img> and <img><|image_2|></img> a red circle on a blue "
                                "background, the same shape in yellow",
                    inputs=[solid((16, 16), (250, 250, 0)), solid((32, 32), (0, 40, 40))])
    items = {s.key: proc(s) for s in (target, shorter, longer)}
    seeds = {"target": 1, "shorter": 2, "longer": 3}
    alone = run(model, proc.collate([items["target"]]), seeds)["target"]

    with_short = proc.collate([items["shorter"], items["target"]])
    assert with_short["keys"][0] == "target"  # reordered: the least padded goes first
    with_long = proc.collate([items["target"], items["longer"]])
    assert with_long["keys"] == ["longer", "target"] and with_long["padding"][1] > 0
    for batch in (with_short, with_long):
        assert torch.allclose(run(model, batch, seeds)["target"], alone, atol=1e-4)
    # The mates are unaffected too.
    assert torch.allclose(run(model, with_long, seeds)["longer"],
                          run(model, proc.collate([items["longer"]]), seeds)["longer"], atol=1e-4)

    # The test has teeth: with the padded sample first, its position ids (pads at 0) are
    # used for the whole batch, and the unpadded mate's first tokens collapse onto 0.
    wrong = run(model, permute(with_long, [1, 0]), seeds)
    assert torch.allclose(wrong["target"], alone, atol=1e-4)
    assert not torch.allclose(wrong["longer"], run(model, with_long, seeds)["longer"], atol=1e-3)
