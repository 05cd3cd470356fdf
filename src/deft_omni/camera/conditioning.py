"""`CameraConditioning`: what the processor needs to put a camera into a sample, and the token id.

It is a :class:`deft_omni.data.conditioning.SampleConditioner`: the processor is handed one, so
deft_omni.data does not import this package.  The camera token's text marker is split out of
the instruction by the processor and replaced by ``token_id``, like an image tag, so it is one
id whatever the tokenizer makes of the marker's characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import CameraConfig, CameraError
from .frame import SceneFrame
from .serialize import camera_vector, instruction_suffix

PHI3_RESERVED = "<|placeholder1|>"  # a reserved, never-produced single id in Phi-3's vocabulary


def _single_id(tokenizer: Any, token: str) -> int | None:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    tid = vocab.get(token)
    return int(tid) if tid is not None else None


def resolve_token_id(tokenizer: Any, cfg: CameraConfig, num_embeddings: int) -> int:
    """The id behind the camera marker (see CameraConfig.token_id), checked against the embedding
    table: an id outside it would crash ``nn.Embedding``."""
    if cfg.token_id is not None:
        tid, how = int(cfg.token_id), "camera.token_id"
    elif (tid := _single_id(tokenizer, cfg.token)) is not None:
        how = f"the tokenizer's {cfg.token!r}"
    elif (tid := _single_id(tokenizer, PHI3_RESERVED)) is not None:
        how = f"the tokenizer's reserved {PHI3_RESERVED!r}"
    else:
        tid, how = len(tokenizer), "the first embedding row past the tokenizer's vocabulary"
    if not 0 <= tid < num_embeddings:
        raise CameraError(f"camera token id {tid} ({how}) is outside the transformer's embedding table of "
                          f"{num_embeddings} rows; set camera.token_id to an unused id below {num_embeddings}")
    specials = {getattr(tokenizer, n, None) for n in ("bos_token_id", "eos_token_id", "pad_token_id",
                                                      "unk_token_id")}
    if tid in specials:
        raise CameraError(f"camera token id {tid} ({how}) is a BOS/EOS/pad/unk id; choose another camera.token_id")
    return tid


@dataclass
class CameraConditioning:
    """Camera settings + scene frame + token id: turns a sample's camera dict into instruction
    text and the normalised vector (kept for embed mode's encoder)."""

    cfg: CameraConfig
    frame: SceneFrame
    token_id: int
    name = "camera"  # the batch key of the vectors (deft_omni.data.conditioning)
    width = 11

    @property
    def marker(self) -> str:
        return self.cfg.token

    def vector(self, camera: dict, *, where: str, width: float | None = None,
               height: float | None = None) -> np.ndarray:
        return camera_vector(camera, self.frame, where=where, width=width, height=height,
                             tolerance=self.cfg.quat_tolerance)

    def condition(self, sample: Any, width: float | None = None,
                  height: float | None = None) -> tuple[str, torch.Tensor | None]:
        """(instruction suffix, fp32 (11,) vector) of a parsed sample; ("", None) without a camera."""
        if self.cfg.mode == "none" or sample.camera is None:
            return "", None
        where = f"sample {sample.key!r}" + (f" in {sample.url}" if sample.url else "") + " json.camera"
        if width is None and sample.output is not None:
            width, height = sample.output.size
        vec = self.vector(sample.camera, where=where, width=width, height=height)
        return instruction_suffix(vec, self.cfg), torch.tensor(vec, dtype=torch.float32)

    def suffix(self, vec: np.ndarray) -> str:
        return instruction_suffix(vec, self.cfg)
