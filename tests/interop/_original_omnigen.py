"""OmniGen's ORIGINAL module tree, built from transformers' Phi3Model (tests only).

Module names are those of VectorSpaceLab/OmniGen's ``OmniGen`` (``llm`` is its Phi-3 decoder,
``time_token.mlp.0`` ...); loading the tiny original-layout checkpoint with ``strict=True`` proves
they are.  Only the decoder (``llm``) is ever run; the other modules exist for their names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Phi3Config, Phi3Model


def phi3_config(config_json: dict) -> Phi3Config:
    """The checkpoint's config.json as a Phi3Config.  Current transformers rejects the legacy "su"
    rope dict (NOTES section 1): give it as "longrope" with the long-context factor."""
    cfg = dict(config_json)
    rope = dict(cfg["rope_scaling"])
    rope["type"] = "longrope"
    rope["factor"] = cfg["max_position_embeddings"] / cfg["original_max_position_embeddings"]
    cfg["rope_scaling"] = rope
    config = Phi3Config(**cfg)
    config._attn_implementation = "sdpa"
    return config


def _embedder(hidden: int, freq_dim: int = 256) -> nn.Module:
    module = nn.Module()
    module.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
    return module


class OriginalOmniGen(nn.Module):
    def __init__(self, config_json: dict, in_channels: int, patch: int, pos_side: int) -> None:
        super().__init__()
        h = int(config_json["hidden_size"])
        for name in ("x_embedder", "input_x_embedder"):
            embedder = nn.Module()
            embedder.proj = nn.Conv2d(in_channels, h, patch, patch)
            setattr(self, name, embedder)
        self.time_token = _embedder(h)
        self.t_embedder = _embedder(h)
        self.register_buffer("pos_embed", torch.zeros(1, pos_side * pos_side, h))
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(h, patch * patch * in_channels)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 2 * h))
        self.llm = Phi3Model(phi3_config(config_json))


def load_original_omnigen(folder: Path) -> OriginalOmniGen:
    """The tiny original-layout checkpoint in `folder` (config.json + model.safetensors), fp32, eval."""
    config_json = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    c, patch = state["x_embedder.proj.weight"].shape[1:3]
    side = int(round(state["pos_embed"].shape[1] ** 0.5))
    model = OriginalOmniGen(config_json, int(c), int(patch), side)
    model.load_state_dict(state, strict=True)
    return model.eval()
