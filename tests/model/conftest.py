"""Shared fixtures for tests/model: tiny OmniGen folders built once per session."""

from __future__ import annotations

import pytest
import torch

from fixtures.tiny_original import save_tiny_original_layout

from deft_omni.model import save_tiny_omnigen


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny OmniGen in diffusers' layout (seed 0)."""
    return save_tiny_omnigen(tmp_path_factory.mktemp("tiny") / "omnigen", seed=0)


@pytest.fixture(scope="session")
def tiny_original_dir(tmp_path_factory):
    """A tiny OmniGen in the original OmniGen-v1 layout (seed 0, model.safetensors)."""
    return save_tiny_original_layout(tmp_path_factory.mktemp("tiny_orig") / "omnigen", seed=0)


def _make_inputs(batch: int = 2, text_len: int = 8, side: int = 8, seed: int = 0):
    """Inputs for OmniGenTransformer2DModel.forward: [text, time token, output image].

    Sample 0 carries one input image (a 4x4 latent = 4 patch tokens) in text slots 2..6.
    The mask is causal for text and time rows, which do not see the output image;
    output-image rows see everything.
    """
    g = torch.Generator().manual_seed(seed)
    n_img = (side // 2) ** 2
    seq = text_len + 1 + n_img
    input_ids = torch.randint(7, 300, (batch, text_len), generator=g)
    input_ids[:, 0] = 1  # BOS
    mask = torch.tril(torch.ones(seq, seq))
    mask[: text_len + 1, text_len + 1 :] = 0
    mask[text_len + 1 :, :] = 1
    return dict(
        hidden_states=torch.randn(batch, 4, side, side, generator=g),
        timestep=torch.rand(batch, generator=g),
        input_ids=input_ids,
        input_img_latents=[torch.randn(1, 4, 4, 4, generator=g)],
        input_image_sizes={0: [[2, 6]]},
        attention_mask=mask.expand(batch, seq, seq).clone(),
        position_ids=torch.arange(seq).expand(batch, seq).clone(),
    )


@pytest.fixture
def make_inputs():
    """Factory for a small forward batch (see _make_inputs)."""
    return _make_inputs
