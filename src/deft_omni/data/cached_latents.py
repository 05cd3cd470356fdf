"""Cached latents in shards: the VAE posterior of every image of a sample, stored beside (or instead
of) its pixels by ``python -m deft_omni.encode_latents``.

Members a cached sample adds (webdataset fields, the key's first dot excluded):

``latents.safetensors``
    One safetensors blob: tensors ``<slot>.mean`` and ``<slot>.std`` of shape (C, h, w) for the
    slots ``output`` and ``input_1`` .. ``input_n``, in fp16, bf16 or fp32: the posterior of the
    *unscaled* VAE latent ``z`` of the image fitted exactly as the processor fits it.  Its
    metadata entry ``deft_omni.latents`` is a JSON object: ``format``, ``version``, ``vae`` (the
    encoder's fingerprint, see ``deft_omni.model.vae_identity``) and ``slots``: a list of
    ``{"name", "stored": [w, h] (the image as stored in the source shard), "resize": [w, h] or
    null, "crop": [w, h] (the pixel size it trains at)}``, the geometry of
    :func:`deft_omni.data.fitting.fit_geometry`.
``output_thumb.<ext>``, ``input_<k>_thumb.<ext>``
    With ``--drop-pixels`` only: the images replaced by thumbnails of at most
    :data:`THUMBNAIL_SIDE` px a side (sample grids and ``data_prep.summary`` show them).  The
    output mask, if any, stays at the stored output size.

The manifest's ``latents`` block (:func:`latents_block`) says how the set was made; a run whose VAE
or image fitting differs is refused before training (:func:`latents_mismatch`).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .errors import ManifestError, SampleError
from .fitting import fit_geometry
from .images import decode_image, to_rgb

LATENTS_MEMBER = "latents.safetensors"
LATENTS_FORMAT = "deft_omni.latents"
LATENTS_VERSION = 1
THUMBNAIL_SIDE = 128
THUMB_RE = re.compile(r"^(output|input_(\d+))_thumb\.([a-z0-9]+)$")
STORAGE_DTYPES = ("float16", "bfloat16", "float32")
REENCODE = "python -m deft_omni.encode_latents --model MODEL --in PIXEL_SHARDS --out NEW_FOLDER"


def thumb_member(slot: str, ext: str) -> str:
    return f"{slot}_thumb.{ext}"


def make_thumbnail(img: Image.Image, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """RGB, the longer side at most ``side`` px (never enlarged), aspect kept."""
    thumb = to_rgb(img).copy()
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    return thumb


# ------------------------------------------------------------------------- one sample


@dataclass(frozen=True)
class LatentSlot:
    """One image's cached posterior and the geometry it was fitted with (sizes are (w, h))."""

    name: str
    stored: tuple[int, int]
    resize: tuple[int, int] | None
    crop: tuple[int, int]
    mean: torch.Tensor  # (C, h, w), the storage dtype
    std: torch.Tensor

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(H, W) of the fitted image, as the processor's tensors are shaped."""
        return self.crop[1], self.crop[0]

    def posterior(self) -> torch.Tensor:
        """(2, C, h, w): mean and std stacked, in the storage dtype."""
        return torch.stack([self.mean, self.std])


@dataclass(frozen=True)
class LatentRecord:
    """A sample's ``latents.safetensors``: the VAE fingerprint and one slot per image."""

    vae: str
    slots: dict[str, LatentSlot]

    @property
    def input_names(self) -> list[str]:
        return [n for n in self.slots if n != "output"]


def encode_record(slots: Sequence[LatentSlot], vae: str) -> bytes:
    """The ``latents.safetensors`` bytes of ``slots`` (output first, then the inputs in order)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    meta = []
    for slot in slots:
        tensors[f"{slot.name}.mean"] = slot.mean.contiguous()
        tensors[f"{slot.name}.std"] = slot.std.contiguous()
        meta.append({"name": slot.name, "stored": list(slot.stored),
                     "resize": None if slot.resize is None else list(slot.resize), "crop": list(slot.crop)})
    # One metadata entry: safetensors writes several in a random order, and the shards must come out
    # byte-identical from identical inputs.
    info = {"format": LATENTS_FORMAT, "version": LATENTS_VERSION, "vae": vae, "slots": meta}
    return save(tensors, metadata={LATENTS_FORMAT: json.dumps(info, sort_keys=True)})


def record_header(data: bytes) -> dict[str, Any]:
    """The metadata of ``latents.safetensors`` bytes without reading a tensor: ``vae`` and ``slots``
    (parsed), for readers that want sizes only (``data_prep.summary``).  Raises ValueError."""
    data = bytes(data[:8 + 65536]) if len(data) > 8 + 65536 else bytes(data)
    if len(data) < 8:
        raise ValueError("too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("the safetensors header is longer than the data")
    meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    if LATENTS_FORMAT not in meta:
        raise ValueError(f"no {LATENTS_FORMAT!r} entry in the safetensors metadata")
    info = json.loads(meta[LATENTS_FORMAT])
    if info.get("version") != LATENTS_VERSION:
        raise ValueError(f"latents version {info.get('version')!r}; this code reads {LATENTS_VERSION}")
    return {"vae": str(info.get("vae", "")), "slots": list(info.get("slots", []))}


def _size(value: Any) -> tuple[int, int]:
    w, h = (int(v) for v in value)
    if w <= 0 or h <= 0:
        raise ValueError(f"size {value} is not positive")
    return w, h


def decode_record(data: Any, *, key: str | None, url: str | None) -> LatentRecord:
    """Parse ``latents.safetensors`` bytes; a SampleError names the sample when they are unusable."""
    from safetensors.torch import load

    try:
        header = record_header(data)
        tensors = load(bytes(data))
        slots = {}
        for entry in header["slots"]:
            name = str(entry["name"])
            mean, std = tensors[f"{name}.mean"], tensors[f"{name}.std"]
            crop = _size(entry["crop"])
            if mean.dim() != 3 or mean.shape != std.shape:
                raise ValueError(f"{name}: mean {tuple(mean.shape)} and std {tuple(std.shape)} are not one (C, h, w)")
            if crop[0] * mean.shape[1] != crop[1] * mean.shape[2]:
                raise ValueError(f"{name}: latent {tuple(mean.shape[1:])} does not have the crop {crop}'s aspect")
            slots[name] = LatentSlot(name, _size(entry["stored"]),
                                     None if entry.get("resize") is None else _size(entry["resize"]), crop, mean, std)
    except (ValueError, KeyError, TypeError, RuntimeError) as exn:
        raise SampleError(f"the cached latents cannot be read ({type(exn).__name__}: {exn})", key=key, url=url,
                          field=LATENTS_MEMBER, fix=f"re-encode the shards: {REENCODE}") from exn
    names = list(slots)
    if not names or names[0] != "output" or names[1:] != [f"input_{k}" for k in range(1, len(names))]:
        raise SampleError(f"the cached latents hold the slots {names}, not output, input_1, ..", key=key,
                          url=url, field=LATENTS_MEMBER, fix=f"re-encode the shards: {REENCODE}")
    return LatentRecord(header["vae"], slots)


def cached_images(raw: Mapping[str, Any], record: LatentRecord, pixels: Mapping[str, str], *, key: str,
                  url: str | None) -> tuple[dict[str, Image.Image], bool]:
    """The images of a cached sample by slot, and whether they are the stored pixels (else the
    thumbnails).  ``pixels``: slot -> member name of the stored images found.  Either kind is
    opened, not decoded (training needs the latents only; grids decode on use); stored pixels must
    have the sizes the latents were made from."""
    if pixels:
        if set(pixels) != set(record.slots):
            raise SampleError(f"the sample stores the images {sorted(pixels)} but latents of {list(record.slots)}",
                              key=key, url=url, field=LATENTS_MEMBER, fix=f"re-encode the shards: {REENCODE}")
        images = {slot: decode_image(raw[member], key, url, member, lazy=True) for slot, member in pixels.items()}
        for slot, img in images.items():
            if img.size != record.slots[slot].stored:
                raise SampleError(f"{slot} is {img.size[0]}x{img.size[1]} px but its latents were made from a "
                                  f"{record.slots[slot].stored[0]}x{record.slots[slot].stored[1]} px image", key=key,
                                  url=url, field=pixels[slot], fix=f"re-encode the shards: {REENCODE}")
        return images, True
    thumbs = {}
    for name in raw:
        m = THUMB_RE.match(name)
        if m:
            thumbs[m.group(1)] = name
    if set(thumbs) != set(record.slots):
        raise SampleError(f"pixels were dropped, and the thumbnails {sorted(thumbs)} do not match the latents' "
                          f"slots {list(record.slots)}", key=key, url=url, field="output_thumb",
                          fix=f"re-encode the shards: {REENCODE}")
    return {slot: decode_image(raw[thumbs[slot]], key, url, thumbs[slot], lazy=True) for slot in record.slots}, False


def check_record_fitting(record: LatentRecord, max_side: int, multiple: int,
                         bucket_sizes: Sequence[tuple[int, int]] | None, *, key: str | None,
                         url: str | None) -> None:
    """A SampleError unless every slot was fitted as the processor fits it now (the output with
    ``bucket_sizes``, inputs without), so that its latents are the ones training would compute."""
    for name, slot in record.slots.items():
        try:
            want = fit_geometry(*slot.stored, max_side, multiple, bucket_sizes if name == "output" else None)
        except ValueError as exn:
            raise SampleError(str(exn), key=key, url=url, field=name) from exn
        if want != (slot.resize, slot.crop):
            raise SampleError(
                f"{name}'s latents were made from the image resized to {slot.resize} and cropped to {slot.crop}, "
                f"but this processor fits it to {want[0]} and {want[1]} (max_image_side {max_side}, bucket sizes "
                f"{bucket_sizes if name == 'output' else None})", key=key, url=url, field=LATENTS_MEMBER,
                fix=f"train with the settings the latents were made for, or re-encode: {REENCODE}")


# -------------------------------------------------------------------------- the manifest


def fit_settings(max_image_side: int, bucket_sizes: Sequence[Sequence[int]] | None, size_multiple: int = 16
            ) -> dict[str, Any]:
    """The image fitting of a run or of a cached set, as the manifest records it."""
    return {"max_image_side": int(max_image_side), "size_multiple": int(size_multiple),
            "bucket_sizes": [[int(h), int(w)] for h, w in bucket_sizes] if bucket_sizes else None}


def latents_block(*, space: Mapping[str, Any], model: str, dtype: str, fit: Mapping[str, Any],
                  pixels_dropped: bool, thumbnail_side: int, encoded_from: str) -> dict[str, Any]:
    """The manifest's ``latents`` block.  ``space``: the VAE's identity
    (``deft_omni.model.vae_identity.latent_space``: fingerprint, class, scaling and shift factors,
    latent channels, downsampling)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"latent storage dtype {dtype!r}; choose one of {STORAGE_DTYPES}")
    return {"format": LATENTS_FORMAT, "version": LATENTS_VERSION, "member": LATENTS_MEMBER,
            "vae": {**dict(space), "model": str(model)}, "dtype": dtype, "fitting": dict(fit),
            "pixels": "dropped" if pixels_dropped else "kept",
            "thumbnail_side": int(thumbnail_side) if pixels_dropped else None, "encoded_from": str(encoded_from)}


def check_latents_block(block: Any, path: str) -> dict[str, Any]:
    """The manifest's ``latents`` block, checked (ManifestError naming ``path`` otherwise)."""
    fix = f"re-encode the shards: {REENCODE}"
    if not isinstance(block, dict) or block.get("format") != LATENTS_FORMAT:
        raise ManifestError(f"{path}: the 'latents' block is not a {LATENTS_FORMAT} description; {fix}")
    if block.get("version") != LATENTS_VERSION:
        raise ManifestError(f"{path}: latents version {block.get('version')!r}; this code reads {LATENTS_VERSION}; {fix}")
    vae, fit = block.get("vae"), block.get("fitting")
    if not isinstance(vae, dict) or not isinstance(vae.get("fingerprint"), str) or not isinstance(fit, dict) or \
            not {"max_image_side", "size_multiple", "bucket_sizes"} <= fit.keys() or \
            block.get("dtype") not in STORAGE_DTYPES or block.get("pixels") not in ("kept", "dropped"):
        raise ManifestError(f"{path}: the 'latents' block lacks vae.fingerprint, fitting, dtype or pixels; {fix}")
    return block


def latents_mismatch(block: Mapping[str, Any], manifest_path: str, *, space: Mapping[str, Any],
                     fit: Mapping[str, Any], model: str) -> str | None:
    """Why a run (``space``: the identity of its model's VAE, ``fit``: its fitting, ``model``: its
    model.path) cannot use a set's cached latents, or None when it can."""
    theirs, problems = block["vae"], []
    if theirs["fingerprint"] != space["fingerprint"]:
        problems.append(f"they were encoded by the VAE with fingerprint {theirs['fingerprint'][:16]} (model "
                        f"{theirs.get('model')!r}), but model.path={model} has a VAE with fingerprint "
                        f"{space['fingerprint'][:16]}")
    mine = dict(block["fitting"])
    if mine != dict(fit):
        problems.append(f"they were fitted with {_fit_text(mine)}, but this run fits images with {_fit_text(fit)}")
    if not problems:
        return None
    command = (f"python -m deft_omni.encode_latents --model {model} --in {block.get('encoded_from', 'PIXEL_SHARDS')} "
               f"--out NEW_FOLDER --max-image-side {fit['max_image_side']}")
    if fit["bucket_sizes"]:
        command += " --bucket-sizes " + ",".join(f"{h}x{w}" for h, w in fit["bucket_sizes"])
    return (f"the cached latents of {manifest_path} do not fit this run: {'; and '.join(problems)}. Re-encode the "
            f"pixel shards for this run ({command}), or train on the pixel shards")


def _fit_text(fit: Mapping[str, Any]) -> str:
    return (f"max_image_side={fit['max_image_side']}, bucket_sizes={fit['bucket_sizes']}, "
            f"size multiple {fit['size_multiple']}")


__all__ = [
    "LATENTS_MEMBER",
    "LatentRecord",
    "LatentSlot",
    "THUMBNAIL_SIDE",
    "cached_images",
    "check_latents_block",
    "check_record_fitting",
    "decode_record",
    "encode_record",
    "fit_settings",
    "latents_block",
    "latents_mismatch",
    "make_thumbnail",
    "record_header",
    "thumb_member",
]
