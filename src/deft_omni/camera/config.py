"""`CameraConfig`: how camera numbers reach the model (none | text | embed) and `CameraError`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MODES = ("none", "text", "embed")
# The text marker of the camera token.  It is never tokenized as text: the processor splits the
# instruction at it and inserts one token id (see conditioning.resolve_token_id).
DEFAULT_TOKEN = "<|camera|>"


class CameraError(ValueError):
    """Bad camera input (non-finite numbers, a non-unit quaternion, an unknown image or camera id,
    a path of fewer than two cameras, a broken camera file); the message names what and where."""


@dataclass
class CameraConfig:
    """Camera conditioning settings (Hydra group ``camera``).

    ``mode``: ``none`` (cameras ignored, the default), ``text`` (camera token + the 11 numbers
    written into the instruction) or ``embed`` (camera token whose embedding gets a learned
    encoding of the 11 numbers added).  ``token_id``: the id the marker maps to; None picks one
    (the tokenizer's own ``token`` if it is a single id, else Phi-3's reserved
    ``<|placeholder1|>``, else the first embedding row past the tokenizer's vocabulary).
    ``*_decimals``: text-mode precision of the normalised intrinsics, quaternion and
    translation.  ``quat_tolerance``: how far |q| may be from 1 before the input is refused.
    Encoder (embed mode): ``encoder_width`` hidden units, ``num_frequencies`` Fourier octaves of
    the input, ``rays``: also add per-patch Plücker ray encodings to the output-image tokens,
    ``lr_ratio`` x optim.lr as its learning rate.
    """

    mode: str = "none"
    token: str = DEFAULT_TOKEN
    token_id: int | None = None
    intrinsics_decimals: int = 4
    rotation_decimals: int = 4
    translation_decimals: int = 3
    quat_tolerance: float = 1e-3
    encoder_width: int = 256
    num_frequencies: int = 2
    rays: bool = True
    lr_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"camera.mode={self.mode!r}; choose one of {MODES}")
        if not isinstance(self.token, str) or not self.token.strip() or self.token != self.token.strip():
            raise ValueError(f"camera.token={self.token!r} must be a non-empty string without outer spaces")
        for name in ("intrinsics_decimals", "rotation_decimals", "translation_decimals"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 8:
                raise ValueError(f"camera.{name}={value!r} must be an integer in [0, 8]")
        if not 0 < float(self.quat_tolerance) < 0.5:
            raise ValueError(f"camera.quat_tolerance must lie in (0, 0.5), got {self.quat_tolerance}")
        if int(self.encoder_width) < 1 or int(self.num_frequencies) < 0:
            raise ValueError("camera.encoder_width must be >= 1 and camera.num_frequencies >= 0, got "
                             f"{self.encoder_width}, {self.num_frequencies}")
        if not float(self.lr_ratio) > 0:
            raise ValueError(f"camera.lr_ratio must be > 0, got {self.lr_ratio}")
        if self.token_id is not None and int(self.token_id) < 0:
            raise ValueError(f"camera.token_id must be >= 0 or null, got {self.token_id}")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_any(cls, value: Any) -> CameraConfig:
        """A CameraConfig, a mapping (Hydra node included) or None (mode none)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        try:
            from omegaconf import DictConfig, OmegaConf
            if isinstance(value, DictConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
        if not isinstance(value, dict):
            raise TypeError(f"camera settings must be a mapping, got {type(value).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"camera: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**value)
