"""The masked loss: per sample sum(w e) / sum(w) with w from the output mask on the latent grid."""

from __future__ import annotations

import torch
from PIL import Image

from deft_omni.backbones import LossConfig, flow_matching_loss
from deft_omni.backbones.objective import latent_weights
from deft_omni.data import OmniGenTrainProcessor
from deft_omni.data.processor import collate_processed
from deft_omni.data.schema import Sample


class PointwiseStub(torch.nn.Module):
    """pred = 2 x_t - 0.5 t, elementwise: a latent pixel's prediction depends on that pixel only."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, hidden_states, timestep, return_dict=False, **cond):
        return (2.0 * hidden_states - 0.5 * timestep.view(-1, 1, 1, 1) + 0 * self.dummy,)


def test_latent_weights_area_average_and_dilation():
    masks = torch.zeros(1, 1, 32, 32)
    masks[0, 0, 0:8, 0:4] = 1.0  # half of latent pixel (0, 0)
    masks[0, 0, 16:24, 16:24] = 1.0  # all of latent pixel (2, 2)
    w = latent_weights(masks, 8, background_weight=0.2)
    expect = torch.full((1, 1, 4, 4), 0.2)
    expect[0, 0, 0, 0] = 0.2 + 0.8 * 0.5
    expect[0, 0, 2, 2] = 1.0
    torch.testing.assert_close(w, expect)
    grown = latent_weights(masks, 8, background_weight=0.0, dilate=1)
    assert grown[0, 0, 1:4, 1:4].eq(1.0).all() and grown[0, 0, 0, 3] == 0.0


def test_background_is_ignored_at_weight_zero():
    g = torch.Generator().manual_seed(0)
    x1, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([0.3, 0.7])
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, :16, :16] = 1.0  # foreground: latent pixels [0:2, 0:2]
    w = latent_weights(masks, 8, background_weight=0.0)
    stub = PointwiseStub()
    base = flow_matching_loss(stub, x1, {}, noise=noise, t=t, pixel_weights=w)
    changed = x1.clone()
    changed[:, :, 2:, :] += 5.0  # target (and so the prediction) changes only where the weight is 0
    changed[:, :, :, 2:] -= 3.0
    again = flow_matching_loss(stub, changed, {}, noise=noise, t=t, pixel_weights=w)
    torch.testing.assert_close(again.per_sample, base.per_sample, rtol=0, atol=0)
    inside = x1.clone()
    inside[:, :, 0, 0] += 1.0
    assert not torch.allclose(flow_matching_loss(stub, inside, {}, noise=noise, t=t, pixel_weights=w).loss, base.loss)


def test_weight_one_is_todays_loss_exactly(tiny_model_dir):
    from deft_omni.backbones import load_backbone

    backbone = load_backbone(str(tiny_model_dir))
    proc = backbone.make_processor(max_image_side=32)
    out = Image.new("RGB", (32, 32), (200, 30, 30))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    items = [proc(Sample(key=f"k{i}", instruction="a red square", task="t2i", output=out, output_mask=mask), train=False)
             for i in range(2)]
    batch = collate_processed(items, pad_id=proc.pad_id)
    assert batch["output_masks"].shape == (2, 1, 32, 32) and batch["output_masks"].max() == 1.0
    plain = {k: v for k, v in batch.items() if k != "output_masks"}
    losses = {}
    for name, b, cfg in [("plain", plain, LossConfig()), ("mask_w1", batch, LossConfig(background_weight=1.0)),
                         ("mask_w0", batch, LossConfig(background_weight=0.0))]:
        with torch.no_grad():
            losses[name] = backbone.training_loss(b, cfg, torch.Generator().manual_seed(3)).loss
    assert torch.equal(losses["mask_w1"], losses["plain"])
    assert not torch.equal(losses["mask_w0"], losses["plain"])


def test_processor_fits_the_mask_like_the_output(tiny_tokenizer):
    proc = OmniGenTrainProcessor(tiny_tokenizer, max_image_side=32, cfg_dropout=0.0)
    out = Image.new("RGB", (70, 50))
    mask = Image.new("L", (70, 50), 0)
    mask.paste(255, (0, 0, 35, 50))  # the left half
    item = proc(Sample(key="k", instruction="x", task="t2i", output=out, output_mask=mask), train=False)
    assert item.output_mask.shape == (1, *item.output_image.shape[-2:])
    left, right = item.output_mask[..., :8].mean(), item.output_mask[..., -8:].mean()
    assert left == 1.0 and right == 0.0
