"""The LAION aesthetic score: a linear or MLP head on L2-normalised CLIP image embeddings.

Two public layouts are read, recognised from the state dict's keys:

* linear (LAION-AI/aesthetic-predictor, e.g. ``sa_0_4_vit_l_14_linear.pth``):
  ``weight`` (1, D) and ``bias`` (1,);
* MLP (christophschuhmann/improved-aesthetic-predictor, e.g.
  ``sac+logos+ava1-l14-linearMSE.pth``): ``layers.{0,2,4,6,7}.weight/bias`` for
  D -> 1024 -> 128 -> 64 -> 16 -> 1. Its dropouts are identities at inference and its
  ReLUs are commented out in the published model, so the head is the composition of its
  linear layers, applied in key order.

D is 768 for CLIP ViT-L/14, the CLIP both heads were trained on; a head whose input
width differs from the CLIP model's projection width is refused. A leading
``module.``/``model.`` prefix (DataParallel, Lightning) is ignored.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass

import torch


class AestheticHeadError(ValueError):
    """The aesthetic head file is missing, unreadable or of an unknown layout."""


@dataclass
class AestheticHead:
    layers: list[tuple[torch.Tensor, torch.Tensor | None]]  # (weight out x in, bias) in application order
    path: str

    @property
    def layout(self) -> str:
        return "linear" if len(self.layers) == 1 else "mlp"

    @property
    def in_features(self) -> int:
        return int(self.layers[0][0].shape[1])

    def check_width(self, width: int, clip_source: str) -> None:
        if width != self.in_features:
            raise AestheticHeadError(
                f"--aesthetic-head {self.path}: the head takes {self.in_features}-wide CLIP embeddings but the CLIP "
                f"model {clip_source!r} gives {width}-wide ones; pass the CLIP the head was trained on with "
                "--aesthetic-clip (ViT-L/14, 768, for the LAION heads)")

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scores (N,) of L2-normalised embeddings (N, D)."""
        x = embeddings.float()
        for weight, bias in self.layers:
            x = torch.nn.functional.linear(x, weight, bias)
        return x.squeeze(-1)


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise AestheticHeadError(f"--aesthetic-head {path}: no such file; pass the LAION head's .pth or "
                                 ".safetensors state dict")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exn:
        raise AestheticHeadError(f"--aesthetic-head {path}: cannot read it as a state dict ({exn})") from exn
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AestheticHeadError(f"--aesthetic-head {path}: expected a state dict of tensors (a pickled module "
                                 "is not read; save module.state_dict())")
    return state


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "model."):
        key = key.removeprefix(prefix)
    return key


def load_aesthetic_head(path: str) -> AestheticHead:
    """Parse a linear or MLP LAION head; linear layers are ordered by the index in their key."""
    state = {_strip_prefix(k): v.float() for k, v in _read_state_dict(path).items()}
    weights = {k[:-len("weight")]: v for k, v in state.items() if k.endswith("weight") and v.ndim == 2}
    if not weights:
        raise AestheticHeadError(f"--aesthetic-head {path}: no 2-D '*weight' tensors (keys: {sorted(state)[:8]}); "
                                 "expected 'weight'/'bias' (linear) or 'layers.N.weight' (MLP)")

    def order(prefix: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", prefix))

    layers = []
    for prefix in sorted(weights, key=order):
        layers.append((weights[prefix], state.get(prefix + "bias")))
    for (w_prev, _), (w_next, _) in itertools.pairwise(layers):
        if w_prev.shape[0] != w_next.shape[1]:
            raise AestheticHeadError(f"--aesthetic-head {path}: layer widths do not chain "
                                     f"({tuple(w_prev.shape)} then {tuple(w_next.shape)})")
    if layers[-1][0].shape[0] != 1:
        raise AestheticHeadError(f"--aesthetic-head {path}: the last layer has {layers[-1][0].shape[0]} outputs, "
                                 "expected 1 score")
    return AestheticHead(layers, path)
