"""The camera as a training extension (``camera.mode=text|embed``; docs/camera.md).

It contributes: the processor's conditioner (camera text after the instruction, the camera token
as one id, the normalised 11-vector per sample); in embed mode the learned encoder (a module with
its own optimizer group, trained, checkpointed and averaged with the adapter) and the hook that
adds its output at the camera token; resume checks; ``camera.json`` (+ the encoder) in every
adapter folder; and progress renders of training cameras."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..core.seeding import derive_seed
from ..training.extension import TrainingExtension
from .conditioning import CameraConditioning, resolve_token_id
from .config import CameraConfig
from .encoder import CameraEmbedHook, CameraEncoder
from .frame import SceneFrame, frame_from_shards
from .io import CameraBundle, save_camera_files


class CameraExtension(TrainingExtension):
    name = "camera"

    def __init__(self, cfg: Any, frame: Optional[SceneFrame] = None, instruction: str = "",
                 cameras: Sequence[dict] = (), sample_views: int = 0, sample_size: int = 32,
                 sample_every_n_steps: int = 0, sample_num_steps: int = 8) -> None:
        self.cfg = CameraConfig.from_any(cfg)
        self.frame, self.instruction = frame or SceneFrame(), str(instruction)
        self.cameras = list(cameras)
        self.sample_views, self.sample_size = int(sample_views), int(sample_size)
        self.sample_every_n_steps, self.sample_num_steps = int(sample_every_n_steps), int(sample_num_steps)
        self.conditioning: Optional[CameraConditioning] = None
        self.encoder: Optional[CameraEncoder] = None
        self.hook: Optional[CameraEmbedHook] = None
        self._module: Any = None

    @classmethod
    def from_shards(cls, cfg: Any, train_paths: Sequence[str], **kwargs: Any) -> "CameraExtension":
        """The scene frame, instruction and cameras come from the training shards' cameras."""
        cfg = CameraConfig.from_any(cfg)
        frame, instruction, cameras = frame_from_shards(list(train_paths), cfg.quat_tolerance)
        return cls(cfg, frame, instruction, cameras, **kwargs)

    def setup(self, module: Any) -> None:
        self._module = module
        embed = module.denoiser.embed_tokens
        token_id = resolve_token_id(module.tokenizer, self.cfg, int(embed.num_embeddings))
        self.conditioning = CameraConditioning(self.cfg, self.frame, token_id)
        if self.cfg.mode == "embed":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(int(module.model_cfg.init_seed), "camera-encoder", module.adapter_name))
                self.encoder = CameraEncoder(int(embed.embedding_dim), self.cfg.encoder_width,
                                             self.cfg.num_frequencies, rays=self.cfg.rays)
            self.encoder.to(embed.weight.device)
            self.hook = CameraEmbedHook(self.encoder, token_id).attach(module.denoiser)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder} if self.encoder is not None else {}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        if self.encoder is None:
            return []
        return [{"params": list(self.encoder.parameters()), "name": "camera", "lr": lr * float(self.cfg.lr_ratio),
                 "weight_decay": weight_decay}]

    def conditioner(self) -> Optional[CameraConditioning]:
        return self.conditioning

    def batch_scope(self, batch: Mapping[str, Any]) -> contextlib.AbstractContextManager:
        if self.hook is None:
            return contextlib.nullcontext()
        return self.hook.cameras(batch.get("camera"), batch.get("has_camera"))

    def bundle(self) -> CameraBundle:
        assert self.conditioning is not None, "setup() first"
        return CameraBundle(self.cfg, self.frame, self.conditioning.token_id, self.instruction, self.encoder)

    def checkpoint_meta(self) -> dict[str, Any]:
        assert self.conditioning is not None
        return {"config": self.cfg.to_dict(), "frame": self.frame.to_dict(), "token_id": self.conditioning.token_id}

    def check_resume(self, meta: Mapping[str, Any]) -> None:
        saved = (meta.get("config") or {}).get("mode", "none")
        if saved != self.cfg.mode:
            raise ValueError(f"checkpoint camera.mode={saved!r} but this run has {self.cfg.mode!r}: "
                             "resume with the same camera settings")

    def write_files(self, folder: Path) -> None:
        save_camera_files(folder, self.bundle())

    def callbacks(self, out_dir: Path) -> list:
        if not (self.cameras and self.sample_views > 0 and self.sample_every_n_steps > 0):
            return []
        from .callback import CameraSampleCallback, spread

        return [CameraSampleCallback(out_dir / "camera_samples", self, spread(self.cameras, self.sample_views),
                                     every_n_steps=self.sample_every_n_steps, size=self.sample_size,
                                     num_steps=self.sample_num_steps)]

    def config_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def describe(self) -> str:
        if self.encoder is None:
            return ""
        n = sum(p.numel() for p in self.encoder.parameters())
        return f"+ {n:,} camera encoder parameters (camera.mode=embed)"
