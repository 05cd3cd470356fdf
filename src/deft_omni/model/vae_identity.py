"""Which latent space a VAE encodes into: a fingerprint of everything that decides its posterior.

Cached latents (``deft_omni.data.cached_latents``) are valid for one encoder only.  The fingerprint
is a sha256 over the VAE's class, its config (less the scaling and shift factors, which apply after
the posterior and are recorded beside it, and diffusers' bookkeeping keys ``_*``) and the fp32
values of the weights the posterior depends on: everything except the decoder's.  Two copies of
one VAE agree whatever their file format (safetensors, .bin) or storage dtype (load_omnigen loads
fp32), and a VAE whose decoder alone was fine-tuned computes the same latents, so it agrees too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from .latents import vae_downsampling

# Applied to the posterior's sample afterwards (scale_latents), so they do not change it.
_AFTER_POSTERIOR = ("scaling_factor", "shift_factor")
_DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def vae_fingerprint(vae: nn.Module) -> str:
    """The sha256 (hex) of the VAE's encoder side; see the module docstring."""
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_") and k not in _AFTER_POSTERIOR}
    digest.update(json.dumps({"class": type(vae).__name__, "config": config}, sort_keys=True,
                             default=str).encode("utf-8"))
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith(_DECODER_PREFIXES):
            continue
        values = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)}".encode("utf-8"))
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def latent_space(vae: nn.Module) -> dict[str, Any]:
    """What a cached set records about the VAE that made it (``fingerprint`` decides; the rest is
    for people reading the manifest)."""
    shift = getattr(vae.config, "shift_factor", None)
    return {"fingerprint": vae_fingerprint(vae), "class": type(vae).__name__,
            "scaling_factor": float(vae.config.scaling_factor), "shift_factor": None if shift is None else float(shift),
            "latent_channels": int(vae.config.latent_channels), "downsampling": vae_downsampling(vae)}


__all__ = ["latent_space", "vae_fingerprint"]
