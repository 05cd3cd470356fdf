"""Camera files in an adapter folder: ``camera.json`` (settings, token id, scene frame, the
training instruction, the encoder's shape) and, in embed mode, ``camera_encoder.safetensors``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ..core.atomic import atomic_path, write_json
from .config import CameraConfig, CameraError
from .encoder import CameraEncoder
from .frame import SceneFrame

CAMERA_JSON = "camera.json"
ENCODER_FILE = "camera_encoder.safetensors"
FORMAT = "deft_omni.camera"


@dataclass
class CameraBundle:
    """What generation needs to condition on cameras the way training did."""

    cfg: CameraConfig
    frame: SceneFrame
    token_id: int
    instruction: str = ""
    encoder: CameraEncoder | None = None


def save_camera_files(folder: str | Path, bundle: CameraBundle) -> None:
    folder = Path(folder)
    info: dict[str, Any] = {"format": FORMAT, "version": 1, "config": bundle.cfg.to_dict(),
                            "token_id": int(bundle.token_id), "frame": bundle.frame.to_dict(),
                            "instruction": bundle.instruction,
                            "encoder": None if bundle.encoder is None else bundle.encoder.arch()}
    if bundle.encoder is not None:
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in bundle.encoder.state_dict().items()}
        with atomic_path(folder / ENCODER_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_json(folder / CAMERA_JSON, info, indent=1, sort_keys=True)


def load_camera_files(folder: str | Path, hidden_size: int | None = None) -> CameraBundle:
    """Read ``camera.json`` (+ the encoder) of an adapter folder; CameraError when absent or broken."""
    folder = Path(folder)
    path = folder / CAMERA_JSON
    if not path.is_file():
        raise CameraError(f"{folder} has no {CAMERA_JSON}: this adapter was trained without cameras "
                          "(camera.mode=none); train with camera.mode=text or embed")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("format") != FORMAT:
            raise ValueError(f"format != {FORMAT!r}")
        cfg = CameraConfig.from_any(info["config"])
        frame = SceneFrame.from_dict(info["frame"], source=str(path))
        token_id = int(info["token_id"])
    except (ValueError, KeyError, TypeError) as exn:
        raise CameraError(f"{path}: broken camera file ({exn}); re-save the adapter") from exn
    encoder = None
    if cfg.mode == "embed":
        arch = info.get("encoder") or {}
        weights = folder / ENCODER_FILE
        if not weights.is_file():
            raise CameraError(f"{path} says camera.mode=embed but {weights} is missing; copy the whole adapter folder")
        if hidden_size is not None and int(arch.get("hidden_size", -1)) != int(hidden_size):
            raise CameraError(f"{weights}: the camera encoder outputs {arch.get('hidden_size')} values but the "
                              f"transformer's hidden size is {hidden_size}: another base model?")
        encoder = CameraEncoder(int(arch["hidden_size"]), int(arch["width"]), int(arch["num_frequencies"]),
                                int(arch.get("in_features", 11)), rays=bool(arch.get("rays", True)))
        try:
            encoder.load_state_dict(load_file(str(weights)))
        except Exception as exn:  # safetensors and load_state_dict raise several types
            raise CameraError(f"{weights}: cannot load the camera encoder ({exn})") from exn
        encoder.requires_grad_(False).eval()
    return CameraBundle(cfg, frame, token_id, str(info.get("instruction", "")), encoder)
