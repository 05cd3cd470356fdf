"""Load OmniGen (transformer, VAE, tokenizer, scheduler) from a local folder, offline.

Two layouts are recognised:

* diffusers (hub ``Shitao/OmniGen-v1-diffusers``): ``transformer/``, ``vae/``,
  ``tokenizer/``, ``scheduler/`` sub-folders (+ ``model_index.json``);
* original (hub ``Shitao/OmniGen-v1``): ``config.json`` + ``model.safetensors`` (or
  ``model.pt``) + tokenizer files at the top level + ``vae/``; converted on load.

Nothing is ever downloaded. A missing file raises :class:`OmniGenWeightsNotFound`,
naming the files and the command that fetches them. Only diffusers' and transformers'
model classes are imported here (never ``OmniGenPipeline``: its processor imports
torchvision).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, OmniGenTransformer2DModel

from .convert import convert_original_state_dict, original_key_of, transformer_config_from_original

HUB_DIFFUSERS = "Shitao/OmniGen-v1-diffusers"
HUB_ORIGINAL = "Shitao/OmniGen-v1"

_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)
_ORIGINAL_WEIGHTS = ("model.safetensors", "model.pt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class OmniGenWeightsNotFound(FileNotFoundError):
    """Raised when an OmniGen folder is absent or incomplete.

    ``path``: the folder; ``missing``: the missing files (relative to it);
    ``layout``: the layout it was checked against (``None`` if undetectable).
    """

    def __init__(self, path: Path, missing: list[str], layout: str | None):
        self.path, self.missing, self.layout = path, list(missing), layout
        what = {"diffusers": "diffusers layout", "original": "original OmniGen-v1 layout"}.get(
            layout or "", "no OmniGen layout recognised"
        )
        lines = [f"OmniGen weights not found at {path} ({what}). Missing:"]
        lines += [f"  - {m}" for m in self.missing]
        lines.append("Nothing is downloaded automatically. With internet access, fetch them with")
        repos = [HUB_ORIGINAL] if layout == "original" else [HUB_DIFFUSERS]
        if layout is None:
            repos.append(HUB_ORIGINAL)
        for repo in repos:
            lines.append(f"  huggingface-cli download {repo} --local-dir {path}")
        lines.append(
            "(`hf download ...` with huggingface_hub >= 1.0). "
            f"{HUB_DIFFUSERS} is the diffusers layout, {HUB_ORIGINAL} the original one."
        )
        if layout == "original" and any(m.startswith("vae/") for m in self.missing):
            lines.append(
                "The original layout's VAE is SDXL's: "
                f"`huggingface-cli download stabilityai/sdxl-vae --local-dir {path / 'vae'}` also works."
            )
        super().__init__("\n".join(lines))


@dataclass
class OmniGenParts:
    """The loaded pieces of OmniGen. The VAE is fp32, frozen and in eval mode."""

    transformer: OmniGenTransformer2DModel
    vae: AutoencoderKL
    tokenizer: object  # a transformers tokenizer
    scheduler: FlowMatchEulerDiscreteScheduler
    layout: Literal["diffusers", "original"]
    path: Path


def default_omnigen_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """OmniGen's sampler as diffusers' pipeline builds it: Euler from t=0 (noise) to 1.

    Note: with ``num_train_timesteps=1`` the schedule must be set through
    ``set_timesteps(sigmas=np.linspace(1, 0, n + 1)[:n])`` as the pipeline does;
    ``set_timesteps(n)`` alone gives all-zero timesteps.
    """
    return FlowMatchEulerDiscreteScheduler(invert_sigmas=True, num_train_timesteps=1)


def _is_lfs_pointer(file: Path) -> bool:
    # A git clone without git-lfs leaves ~130-byte text stubs in place of the weights.
    if file.stat().st_size > 1024:
        return False
    with open(file, "rb") as fh:
        return fh.read(40).startswith(b"version https://git-lfs")


def _check_one_of(root: Path, folder: str, names: tuple[str, ...], missing: list[str]) -> None:
    base = root / folder if folder else root
    prefix = f"{folder}/" if folder else ""
    for name in names:
        file = base / name
        if not file.is_file():
            continue
        if _is_lfs_pointer(file):
            missing.append(f"{prefix}{name} (a git-lfs pointer, not the file: run `git lfs pull`)")
        elif name.endswith(".index.json"):
            # A sharded checkpoint is only complete when every shard is there.
            shards = sorted(set(json.loads(file.read_text()).get("weight_map", {}).values()))
            missing.extend(f"{prefix}{s}" for s in shards if not (base / s).is_file())
        return
    missing.append(prefix + " or ".join(names))


def detect_layout(path: str | os.PathLike) -> Literal["diffusers", "original"] | None:
    """``"diffusers"``, ``"original"`` or ``None`` from the folder's top-level entries."""
    path = Path(path)
    if (path / "model_index.json").is_file() or (path / "transformer").is_dir():
        return "diffusers"
    if (path / "config.json").is_file() or any((path / w).exists() for w in _ORIGINAL_WEIGHTS):
        return "original"
    return None


def missing_files(path: str | os.PathLike, layout: str) -> list[str]:
    """Files (relative to ``path``) that ``layout`` needs and that are absent."""
    path = Path(path)
    missing: list[str] = []
    if layout == "diffusers":
        for sub in ("transformer", "vae"):
            if not (path / sub / "config.json").is_file():
                missing.append(f"{sub}/config.json")
            _check_one_of(path, sub, _DIFFUSERS_WEIGHTS, missing)
        _check_one_of(path, "tokenizer", _TOKENIZER_FILES, missing)
    elif layout == "original":
        if not (path / "config.json").is_file():
            missing.append("config.json")
        _check_one_of(path, "", _ORIGINAL_WEIGHTS, missing)
        _check_one_of(path, "", _TOKENIZER_FILES, missing)
        if not (path / "vae" / "config.json").is_file():
            missing.append("vae/config.json")
        _check_one_of(path, "vae", _DIFFUSERS_WEIGHTS, missing)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return missing


def _load_original_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(path / "model.safetensors"), device="cpu")
    # weights_only: a pickle from the internet must not be able to run code.
    try:
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch.save format cannot be memory-mapped
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path / 'model.pt'} is not a flat state dict of tensors")
    return state


def _check_converted(model: torch.nn.Module, converted: dict[str, torch.Tensor], path: Path) -> None:
    """Name what an original-layout file lacks, or holds in the wrong shape, by its own keys."""
    weights = path / ("model.safetensors" if (path / "model.safetensors").is_file() else "model.pt")
    expected = model.state_dict()
    missing = sorted({original_key_of(k) for k in expected if k not in converted})
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} tensor(s) of the original OmniGen-v1 layout: "
                         f"{missing[:8]}{' ...' if len(missing) > 8 else ''}; the file is incomplete or not "
                         f"OmniGen-v1's (compare with {HUB_ORIGINAL})")
    wrong = sorted({f"{original_key_of(k)} {tuple(converted[k].shape)} (expected {tuple(t.shape)})"
                    for k, t in expected.items() if tuple(converted[k].shape) != tuple(t.shape)})
    if wrong:
        raise ValueError(f"{weights}: tensor shape(s) disagree with {path / 'config.json'}: {wrong[:5]}")


def _load_original_transformer(path: Path, torch_dtype: torch.dtype) -> OmniGenTransformer2DModel:
    config_json = json.loads((path / "config.json").read_text())
    state = _load_original_weights(path)
    config = transformer_config_from_original(config_json, state_dict=state)
    converted = convert_original_state_dict(state, config)
    del state
    # Cast entry by entry, replacing in place so each source tensor is freed as we go
    # (peak: one extra tensor, not one extra model); also avoids ModelMixin.to(dtype),
    # which warns about fp32-kept modules.
    for key in list(converted):
        if converted[key].is_floating_point():
            converted[key] = converted[key].to(torch_dtype)
    # Build without allocating (a 3.8B-parameter random init would cost minutes and
    # 15 GB), then adopt the checkpoint tensors as the parameters.
    with torch.device("meta"):
        model = OmniGenTransformer2DModel(**config)
    _check_converted(model, converted, path)
    model.load_state_dict(converted, strict=True, assign=True)
    # The only non-persistent buffer (RoPE inverse frequencies) is still on meta:
    # rebuild that small module for real.
    rope = model.rope
    model.rope = type(rope)(
        rope.dim,
        max_position_embeddings=config["max_position_embeddings"],
        original_max_position_embeddings=config["original_max_position_embeddings"],
        base=config["rope_base"],
        rope_scaling=config["rope_scaling"],
    )
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left uninitialised after conversion: {left}")
    return model.eval()


def load_omnigen(
    path: str | os.PathLike,
    torch_dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> OmniGenParts:
    """Load OmniGen from a local folder in diffusers' or the original layout.

    The transformer is returned in ``torch_dtype`` (eval mode; call ``.train()`` to
    train). The VAE is always fp32, frozen (``requires_grad_(False)``) and in eval
    mode, whatever ``torch_dtype`` is. A missing ``scheduler/`` folder gives
    :func:`default_omnigen_scheduler`. Raises :class:`OmniGenWeightsNotFound` when the
    folder does not exist or lacks files; never downloads (``local_files_only=True``).
    """
    from transformers import AutoTokenizer, PretrainedConfig

    path = Path(path).expanduser()
    if not path.is_dir():
        raise OmniGenWeightsNotFound(path, [f"{path} (the folder itself)"], None)
    layout = detect_layout(path)
    if layout is None:
        needs = [
            "diffusers layout: transformer/, vae/, tokenizer/, scheduler/",
            "original layout: config.json, model.safetensors (or model.pt), tokenizer.json, vae/",
        ]
        raise OmniGenWeightsNotFound(path, needs, None)
    missing = missing_files(path, layout)
    if missing:
        raise OmniGenWeightsNotFound(path, missing, layout)

    if layout == "diffusers":
        transformer = OmniGenTransformer2DModel.from_pretrained(
            path / "transformer", torch_dtype=torch_dtype, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    else:
        transformer = _load_original_transformer(path, torch_dtype)
        # AutoTokenizer would parse the top-level config.json as a Phi3Config, which
        # current transformers rejects (legacy "su" rope dict): hand it a neutral config
        # so the class comes from tokenizer_config.json / tokenizer.json alone.
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, config=PretrainedConfig())
    transformer = transformer.to(device)

    # from_pretrained already gives fp32; only the device changes here.
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch.float32, local_files_only=True)
    vae = vae.to(device).requires_grad_(False).eval()

    if (path / "scheduler" / "scheduler_config.json").is_file():
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler", local_files_only=True)
    else:
        scheduler = default_omnigen_scheduler()
    return OmniGenParts(transformer, vae, tokenizer, scheduler, layout, path)
