"""Camera-aware generation (paper §4.3): camera numbers of an SfM model as text
(``text``) or through a learned encoder at the camera token (``embed``); docs/camera.md."""

from .conditioning import CameraConditioning, resolve_token_id
from .config import DEFAULT_TOKEN, MODES, CameraConfig, CameraError
from .encoder import CameraEmbedHook, CameraEncoder
from .frame import SceneFrame, frame_from_shards
from .io import CameraBundle, load_camera_files, save_camera_files
from .pose import (
    camera_centre,
    normalise_quaternion,
    quat_to_rotmat,
    rotmat_to_quat,
    slerp,
)
from .serialize import CAMERA_KEYS, camera_vector, parse, round_vector, serialize

__all__ = [
    "CAMERA_KEYS", "DEFAULT_TOKEN", "MODES", "CameraBundle", "CameraConditioning", "CameraConfig",
    "CameraEmbedHook", "CameraEncoder", "CameraError", "SceneFrame", "camera_centre", "camera_vector",
    "frame_from_shards", "load_camera_files", "normalise_quaternion", "parse", "quat_to_rotmat",
    "resolve_token_id", "rotmat_to_quat", "round_vector", "save_camera_files", "serialize", "slerp",
]
