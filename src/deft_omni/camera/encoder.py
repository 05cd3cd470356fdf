"""Embed mode: `CameraEncoder` and the hooks that put its output into OmniGen's sequence.

Two learned paths, both from the normalised 11-vector (serialize.py):

* **token**: an MLP over the 11 numbers (with Fourier features) added to the camera token's
  embedding (a forward hook on ``embed_tokens``), at the same place where text mode writes the
  token, so the modes compare like for like;
* **rays** (the "camera position encoding" the paper suggests): every output-image patch gets
  the Plücker coordinates (d, C x d) of the ray through its centre, in the scene-normalised
  frame, through a second MLP, added to that patch's token (a forward hook on
  ``patch_embedding`` for the output image).  A patch's content is a function of its ray, so
  this is the direct path; it is resolution independent and needs no change to diffusers.

Rows are found from ``input_ids`` (a forward pre-hook on the transformer marks the rows that hold
the camera token), so the encodings follow whatever row order the collate chose, and rows without
the token (the unconditional ``<cfg>`` row, dropped conditions) get nothing.

Init is harmless: the token MLP ends in a zero layer and the ray encoding is scaled by
tanh(gate) with gate = 0, so an untrained encoder changes nothing.  The
parameters are fp32 and run with autocast off; outputs are cast to the model's dtype.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .config import CameraError
from .serialize import NUM_CAMERA_VALUES


def _mlp(in_features: int, width: int, out_features: int, zero_last: bool = True) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(in_features, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                        nn.Linear(width, out_features))
    if zero_last:
        nn.init.zeros_(mlp[-1].weight)
        nn.init.zeros_(mlp[-1].bias)
    return mlp


def quat_to_rotmat_torch(q: torch.Tensor) -> torch.Tensor:
    """(N, 4) unit (w, x, y, z) -> (N, 3, 3) world->camera rotations."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).view(-1, 3, 3)


def plucker_rays(vec: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(N, grid_h * grid_w, 6) Plücker coordinates (unit direction d, moment C x d) of the rays
    through the patch centres, row-major, for (N, 11) normalised camera vectors."""
    fx, fy, cx, cy = vec[:, 0:1], vec[:, 1:2], vec[:, 2:3], vec[:, 3:4]
    rot = quat_to_rotmat_torch(vec[:, 4:8])
    centre = -(rot.transpose(1, 2) @ vec[:, 8:11].unsqueeze(-1)).squeeze(-1)  # C = -R^T t
    v, u = torch.meshgrid((torch.arange(grid_h, device=vec.device, dtype=vec.dtype) + 0.5) / grid_h,
                          (torch.arange(grid_w, device=vec.device, dtype=vec.dtype) + 0.5) / grid_w, indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)  # fractions of the image width / height
    cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u - cx)], -1)  # (N, P, 3)
    world = cam @ rot  # row-vector form of R^T d
    world = world / world.norm(dim=-1, keepdim=True)
    moment = torch.cross(centre.unsqueeze(1).expand_as(world), world, dim=-1)
    return torch.cat([world, moment], -1)


class CameraEncoder(nn.Module):
    def __init__(self, hidden_size: int, width: int = 256, num_frequencies: int = 2,
                 in_features: int = NUM_CAMERA_VALUES, rays: bool = True) -> None:
        super().__init__()
        self.in_features, self.num_frequencies = int(in_features), int(num_frequencies)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(self.num_frequencies, dtype=torch.float32),
                             persistent=False)
        per = 1 + 2 * self.num_frequencies
        self.token_mlp = _mlp(self.in_features * per, width, hidden_size)
        self.ray_mlp = _mlp(6 * per, width, hidden_size, zero_last=False) if rays else None
        # The ray encoding is RMS-normalised and scaled by tanh(gate) x the patch token's own RMS:
        # it can never drown the noisy latent's patch embedding (an unbounded add did, in tests,
        # and the model then ignored x_t), and gate = 0 makes the init harmless.
        self.ray_gate = nn.Parameter(torch.zeros(1)) if rays else None
        self.float()

    def arch(self) -> dict[str, int]:
        return {"hidden_size": int(self.token_mlp[-1].out_features), "width": int(self.token_mlp[0].out_features),
                "num_frequencies": self.num_frequencies, "in_features": self.in_features,
                "rays": self.ray_mlp is not None}

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        ang = x.unsqueeze(-1) * self.freqs.to(x.dtype)
        return torch.cat([x, torch.sin(ang).flatten(-2), torch.cos(ang).flatten(-2)], dim=-1)

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        """(N, 11) normalised camera vectors -> (N, hidden_size) for the camera token."""
        dtype = self.token_mlp[0].weight.dtype
        with torch.autocast(device_type=vec.device.type, enabled=False):
            return self.token_mlp(self._features(vec.to(dtype)))

    def rays(self, vec: torch.Tensor, grid_h: int, grid_w: int, token_rms: torch.Tensor) -> torch.Tensor:
        """(N, grid_h * grid_w, hidden_size) for the output-image patches whose tokens have RMS
        ``token_rms`` (N, P, 1)."""
        dtype = self.ray_mlp[0].weight.dtype
        with torch.autocast(device_type=vec.device.type, enabled=False):
            enc = self.ray_mlp(self._features(plucker_rays(vec.to(dtype), grid_h, grid_w)))
            enc = enc / (enc.pow(2).mean(-1, keepdim=True) + 1e-12).sqrt()
            return torch.tanh(self.ray_gate) * token_rms.to(dtype) * enc


class CameraEmbedHook:
    """Hooks on a transformer: marks the rows holding the camera token (pre-hook on the
    transformer), adds ``encoder(vector)`` at the token (``embed_tokens``) and the ray encodings
    to those rows' output-image tokens (``patch_embedding``, output image only).

    The vectors must be in the batch's row order (``batch["camera"]``) or one row (broadcast:
    in generation only the cond row holds the token).  Set them with
    ``with hook.cameras(vectors): model(...)``; a camera token without vectors is an error.
    """

    def __init__(self, encoder: CameraEncoder, token_id: int) -> None:
        self.encoder, self.token_id = encoder, int(token_id)
        self._vectors: torch.Tensor | None = None
        self._has: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None  # (B,) bool of the current forward
        self._handles: list[Any] = []

    def attach(self, transformer: nn.Module) -> CameraEmbedHook:
        if self._handles:
            raise RuntimeError("CameraEmbedHook is already attached")
        self._handles = [transformer.register_forward_pre_hook(self._mark_rows, with_kwargs=True),
                         transformer.embed_tokens.register_forward_hook(self._token_hook),
                         transformer.patch_embedding.register_forward_hook(self._patch_hook, with_kwargs=True)]
        self._patch_size = int(getattr(transformer.config, "patch_size", 2))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def cameras(self, vectors: torch.Tensor | None, has_camera: torch.Tensor | None = None) -> Iterator[None]:
        saved = self._vectors, self._has
        self._vectors = None if vectors is None else torch.as_tensor(vectors, dtype=torch.float32).reshape(-1, 11)
        self._has = None if has_camera is None else torch.as_tensor(has_camera, dtype=torch.bool).reshape(-1)
        try:
            yield
        finally:
            self._vectors, self._has = saved

    def _row_vectors(self, batch: int, device: torch.device) -> torch.Tensor:
        if self._vectors is None:
            raise CameraError(f"the input holds the camera token (id {self.token_id}) but no camera vector was "
                              "given: run the forward inside `with hook.cameras(vectors):`")
        vec = self._vectors.to(device)
        if vec.shape[0] == 1:
            return vec.expand(batch, -1)
        if vec.shape[0] != batch:
            raise CameraError(f"{vec.shape[0]} camera vectors for a batch of {batch} rows")
        return vec

    def _mark_rows(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[2] if len(args) > 2 else None)
        self._rows = None if input_ids is None else (input_ids == self.token_id).any(dim=1)
        if self._rows is not None and bool(self._rows.any()):
            self._row_vectors(int(input_ids.shape[0]), input_ids.device)  # fail early, with the message
            if self._has is not None and not bool(self._has.to(self._rows.device)[self._rows].all()):
                raise CameraError("a row holds the camera token but its has_camera flag is False")

    def _token_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        input_ids = args[0] if args else None
        if input_ids is None:
            return None
        mask = input_ids == self.token_id
        if not bool(mask.any()):
            return None
        rows, cols = mask.nonzero(as_tuple=True)
        enc = self.encoder(self._row_vectors(int(input_ids.shape[0]), output.device)[rows])
        return output.index_put((rows, cols), output[rows, cols] + enc.to(output.dtype))

    def _patch_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> torch.Tensor | None:
        is_input = kwargs.get("is_input_image", args[1] if len(args) > 1 else True)
        latents = args[0] if args else kwargs.get("hidden_states")
        if (is_input or self.encoder.ray_mlp is None or not isinstance(output, torch.Tensor) or self._rows is None
                or not bool(self._rows.any())):
            return None
        rows = self._rows.to(output.device).nonzero(as_tuple=True)[0]
        grid_h, grid_w = latents.shape[-2] // self._patch_size, latents.shape[-1] // self._patch_size
        token_rms = output[rows].detach().float().pow(2).mean(-1, keepdim=True).sqrt()
        enc = self.encoder.rays(self._row_vectors(int(output.shape[0]), output.device)[rows], grid_h, grid_w,
                                token_rms)
        return output.index_add(0, rows, enc.to(output.dtype))
