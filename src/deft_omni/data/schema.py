"""The shard sample schema: the one definition shared by the converters and the loader.

A shard is a webdataset tar.  One sample is a group of tar members sharing a key:

``<key>.json``
    UTF-8 JSON object: ``instruction`` (str; input images are referenced as
    ``<img><|image_k|></img>`` for k = 1..n, in that order, each once), ``task`` (str),
    ``meta`` (object, free-form), optional ``camera`` (object of floats) and optional
    ``prior`` (bool, DreamBooth class-prior sample).
``<key>.output.<ext>``
    The target image, ``ext`` in png / jpg / jpeg / webp.
``<key>.input_<k>.<ext>``
    Input image k (1-based, matching ``<|image_k|>``).
``<key>.output_mask.png`` (optional)
    Where the output image is the subject: a single-channel (mode 'L') PNG of exactly the
    output image's size, 0 = background .. 255 = foreground (soft edges allowed); a masked
    loss weights the output's pixels by it.  Never empty; a full mask is allowed (it weights
    as no mask would) but warned about.

``<key>.latents.safetensors``, ``<key>.output_thumb.<ext>``, ``<key>.input_<k>_thumb.<ext>``
    Cached latents (optional), with thumbnails in place of the images when the pixels were
    dropped: see :mod:`.cached_latents`.

webdataset splits a member name at the *first* dot of its base name, so keys must not
contain dots (the extensions may).  Beside the shards lies ``manifest.json`` (see
:func:`write_manifest`), which records sample counts so that loaders can size epochs
without opening tars, and how many samples carry an output mask.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .cached_latents import LATENTS_MEMBER, LatentRecord, cached_images, decode_record
from .errors import ManifestError, SampleError
# The manifest's names and functions: importers of schema find them here too.
from .manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, read_manifest, write_manifest  # noqa: F401
# to_rgb: the processor and the converters import it from here.
from .images import (  # noqa: F401 - to_rgb
    LFS_FIX,
    PIL_FORMATS,
    check_mask,
    decode_image,
    encode_image,
    encode_mask,
    image_size,
    is_lfs_pointer,
    lfs_pointer_reason,
    to_rgb,
)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
OUTPUT_FIELD = "output"
OUTPUT_MASK_FIELD = "output_mask"
OUTPUT_MASK_MEMBER = f"{OUTPUT_MASK_FIELD}.png"
INPUT_FIELD_RE = re.compile(r"^input_(\d+)\.([a-z0-9]+)$")
IMAGE_TAG_RE = re.compile(r"<\|image_(\d+)\|>")
KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+(?:/[A-Za-z0-9_\-]+)*$")


# --------------------------------------------------------------------------- tags


def check_image_tags(instruction: str, n_images: int, *, key: str | None = None,
                     url: str | None = None) -> list[int]:
    """Validate the ``<|image_k|>`` tags against the number of input images.

    Tags must read 1, 2, ..., n in order of appearance, each once, with n equal to the
    number of input images.  Returns the tag numbers in order.  Raises SampleError.
    """
    tags = [int(m) for m in IMAGE_TAG_RE.findall(instruction)]
    if tags != list(range(1, len(tags) + 1)):
        raise SampleError(
            f"image tags {['<|image_%d|>' % t for t in tags]} are not numbered 1..n in order",
            key=key, url=url, field="json.instruction",
            fix="reference input image k as <img><|image_k|></img>, k = 1, 2, ... in order, each once")
    if len(tags) != n_images:
        raise SampleError(
            f"instruction has {len(tags)} image tag(s) but the sample has {n_images} input image(s)",
            key=key, url=url, field="json.instruction",
            fix="write one <img><|image_k|></img> per input_<k> image, or add/remove input images")
    return tags


# ------------------------------------------------------------------------ writing


def make_sample(key: str, instruction: str, output_image: Any, input_images: Sequence[Any] = (),
                task: str = "text_to_image", meta: Mapping[str, Any] | None = None,
                camera: Mapping[str, float] | None = None, image_format: str = "png",
                prior: bool = False, output_mask: Any = None) -> dict[str, Any]:
    """Build one sample dict for ``wds.ShardWriter.write`` (or :class:`ShardSetWriter`).

    Images are PIL images or already encoded bytes in ``image_format``; ``output_mask`` is
    None or a single-channel PIL image (or PNG bytes) of the output image's size, stored as
    ``output_mask.png``.  Everything the loader would reject is rejected here, at conversion
    time.
    """
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise SampleError("keys may hold only letters, digits, '_', '-' and inner '/' (no dots)",
                          key=key, field="__key__",
                          fix="webdataset splits member names at the first dot; replace dots with '_'")
    image_format = image_format.lower()
    if image_format not in PIL_FORMATS:
        raise SampleError(f"image_format {image_format!r} not in {IMAGE_EXTS}", key=key)
    if not isinstance(instruction, str):
        raise SampleError("instruction must be a string", key=key, field="json.instruction")
    check_image_tags(instruction, len(input_images), key=key)
    payload: dict[str, Any] = {"instruction": instruction, "task": str(task),
                               "meta": dict(meta or {})}
    if camera is not None:
        payload["camera"] = _check_camera(camera, key, None)
    if prior:
        payload["prior"] = True
    try:
        blob = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
    except TypeError as exn:
        raise SampleError(f"meta is not JSON-serialisable ({exn})", key=key, field="json.meta") from exn
    sample = {"__key__": key, "json": blob,
              f"{OUTPUT_FIELD}.{image_format}": encode_image(output_image, image_format, key, "output")}
    for k, img in enumerate(input_images, start=1):
        sample[f"input_{k}.{image_format}"] = encode_image(img, image_format, key, f"input_{k}")
    if output_mask is not None:
        sample[OUTPUT_MASK_MEMBER] = encode_mask(output_mask, image_size(output_image), key)
    return sample


def _check_camera(camera: Any, key: str | None, url: str | None) -> dict[str, float]:
    if not isinstance(camera, Mapping):
        raise SampleError("camera must be an object of floats", key=key, url=url, field="json.camera")
    try:
        return {str(k): float(v) for k, v in camera.items()}
    except (TypeError, ValueError) as exn:
        raise SampleError(f"camera values must be numbers ({exn})", key=key, url=url,
                          field="json.camera") from exn


# ------------------------------------------------------------------------ reading


@dataclass
class Sample:
    """One parsed shard sample (images decoded with PIL, not yet resized; with cached latents they are
    opened, decoded on first use, or only thumbnails: see ``thumbnails``)."""

    key: str
    instruction: str
    task: str
    output: Image.Image
    inputs: list[Image.Image] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    camera: dict[str, float] | None = None
    is_prior: bool = False
    url: str | None = None
    output_mask: Image.Image | None = None  # mode 'L', the output's stored size, 255 = foreground
    latents: LatentRecord | None = None  # the cached VAE posteriors (.cached_latents), if the shard has them
    thumbnails: bool = False  # output and inputs are thumbnails: the pixels were dropped for the latents

    def stored_size_images(self) -> tuple[Image.Image, list[Image.Image]]:
        """(output, inputs) at their stored sizes: the images, or, when the pixels were dropped, their
        thumbnails enlarged to those sizes (blurred previews, for sample grids)."""
        if not self.thumbnails or self.latents is None:
            return self.output, list(self.inputs)
        slots = self.latents.slots
        grown = [img.resize(slots[name].stored, Image.Resampling.BICUBIC)
                 for name, img in zip(slots, [self.output, *self.inputs])]
        return grown[0], grown[1:]


def parse_sample(raw: Mapping[str, Any]) -> Sample:
    """Validate one raw webdataset sample (bytes or decoded values) into a :class:`Sample`."""
    key = raw.get("__key__")
    url = raw.get("__url__")
    if not key:
        raise SampleError("no __key__", url=url, field="__key__")
    meta_raw = raw.get("json")
    if meta_raw is None:
        raise SampleError("no json member", key=key, url=url, field="json",
                          fix="write samples with deft_omni.data.schema.make_sample")
    if isinstance(meta_raw, (bytes, bytearray, str)):
        try:
            meta_raw = json.loads(meta_raw)
        except ValueError as exn:
            raise SampleError(f"json is not valid JSON ({exn})", key=key, url=url, field="json") from exn
    if not isinstance(meta_raw, Mapping):
        raise SampleError("json must be an object", key=key, url=url, field="json")
    instruction, task = meta_raw.get("instruction"), meta_raw.get("task")
    if not isinstance(instruction, str):
        raise SampleError("missing or non-string instruction", key=key, url=url, field="json.instruction")
    if not isinstance(task, str):
        raise SampleError("missing or non-string task", key=key, url=url, field="json.task")
    meta = meta_raw.get("meta", {})
    if not isinstance(meta, Mapping):
        raise SampleError("meta must be an object", key=key, url=url, field="json.meta")
    camera = meta_raw.get("camera")
    if camera is not None:
        camera = _check_camera(camera, key, url)

    record = None
    if raw.get(LATENTS_MEMBER) is not None:
        record = decode_record(raw[LATENTS_MEMBER], key=key, url=url)
    outputs = [name for name in raw if name.split(".", 1)[0] == OUTPUT_FIELD]
    outputs = [name for name in outputs if name.split(".", 1)[-1] in IMAGE_EXTS]
    if len(outputs) != 1 and (record is None or outputs):
        raise SampleError(f"expected exactly one output.<{'|'.join(IMAGE_EXTS)}>, found {outputs}",
                          key=key, url=url, field="output",
                          fix="every sample needs one target image stored as output.<ext>")
    inputs: dict[int, str] = {}
    for name in raw:
        m = INPUT_FIELD_RE.match(name)
        if not m or m.group(2) not in IMAGE_EXTS:
            continue
        k = int(m.group(1))
        if k in inputs:
            raise SampleError(f"input image {k} stored twice ({inputs[k]}, {name})",
                              key=key, url=url, field=name)
        inputs[k] = name
    if sorted(inputs) != list(range(1, len(inputs) + 1)):
        raise SampleError(f"input images {sorted(inputs)} are not numbered 1..n",
                          key=key, url=url, field="input_<k>",
                          fix="store input images as input_1.<ext>, input_2.<ext>, ...")
    check_image_tags(instruction, len(record.input_names) if record else len(inputs), key=key, url=url)
    if record is not None:
        members = {"output": outputs[0], **{f"input_{k}": n for k, n in inputs.items()}} if outputs else {}
        images, has_pixels = cached_images(raw, record, members, key=key, url=url)
        output, input_images = images["output"], [images[n] for n in record.input_names]
        output_size = record.slots["output"].stored
    else:
        output, has_pixels = decode_image(raw[outputs[0]], key, url, outputs[0]), True
        input_images = [decode_image(raw[inputs[k]], key, url, inputs[k]) for k in sorted(inputs)]
        output_size = output.size
    mask = raw.get(OUTPUT_MASK_MEMBER)
    if mask is not None:
        mask = check_mask(decode_image(mask, key, url, OUTPUT_MASK_MEMBER), output_size, key=key, url=url,
                          name=OUTPUT_MASK_MEMBER)
    return Sample(key=key, instruction=instruction, task=task, output=output, inputs=input_images, meta=dict(meta),
                  camera=camera, is_prior=bool(meta_raw.get("prior", False)), url=url, output_mask=mask,
                  latents=record, thumbnails=not has_pixels)


class ShardSetWriter:
    """Write a shard directory through ``wds.ShardWriter`` and finish it with a manifest.

    ``with ShardSetWriter(out_dir, source="insdet", maxcount=500) as w: w.write(make_sample(...))``;
    ``w.skip(key, reason)`` records a dropped input.  The manifest is written on a clean
    exit only, so a crashed conversion leaves no manifest and cannot be mistaken for a
    complete one.
    """

    def __init__(self, directory: str, *, source: str, prefix: str = "shard", maxcount: int = 1000,
                 maxsize: float = 1e9, options: Mapping[str, Any] | None = None):
        import webdataset as wds  # Local: schema.py stays importable for readers of manifests only.

        os.makedirs(directory, exist_ok=True)
        self.directory, self.source, self.options = directory, source, dict(options or {})
        self.counts: dict[str, int] = {}
        self.skipped: list[dict[str, Any]] = []
        self.output_masks = 0
        self._closed = False
        # mtime=0 makes identical inputs give byte-identical tars (idempotent converters).
        self._writer = wds.ShardWriter(os.path.join(directory, f"{prefix}-%06d.tar"),
                                       maxcount=maxcount, maxsize=maxsize, verbose=0, mtime=0)

    def write(self, sample: Mapping[str, Any]) -> None:
        self._writer.write(dict(sample))
        name = os.path.basename(self._writer.fname)
        self.counts[name] = self.counts.get(name, 0) + 1
        self.output_masks += OUTPUT_MASK_MEMBER in sample

    def skip(self, key: str, reason: str) -> None:
        self.skipped.append({"key": key, "reason": reason})

    def close(self, write_manifest_file: bool = True) -> str | None:
        if self._closed:
            return None
        self._closed = True
        last = self._writer.fname
        self._writer.close()
        # ShardWriter opens its first tar eagerly: with no sample written it is an empty,
        # useless shard.  Only the last opened file can be empty (new ones open on write).
        if last is not None and os.path.basename(last) not in self.counts and os.path.exists(last):
            os.unlink(last)
        if not write_manifest_file:
            return None
        return write_manifest(self.directory, sorted(self.counts.items()), source=self.source,
                              options=self.options, skipped=self.skipped, output_masks=self.output_masks)

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(write_manifest_file=exc_type is None)


# ----------------------------------------------------------------------- shard set


@dataclass
class ShardSet:
    """Shard urls with their sample counts (None when unknown), resolved from a manifest."""

    urls: list[str]
    counts: list[int | None]
    root: str | None = None
    manifest: dict[str, Any] | None = None

    @property
    def total(self) -> int | None:
        return None if any(c is None for c in self.counts) else sum(self.counts)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.urls)

    @classmethod
    def resolve(cls, spec: str | os.PathLike | ShardSet | Sequence[str]) -> ShardSet:
        """A directory (with manifest.json), a brace pattern (``dir/shard-{000000..000003}.tar``),
        a single tar, or a list of urls.  Counts come from the manifest beside the files."""
        if isinstance(spec, ShardSet):
            return spec
        if not isinstance(spec, (str, os.PathLike)):
            urls = [str(u) for u in spec]
            return cls(urls=urls, counts=[None] * len(urls))
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            manifest = read_manifest(spec)
            urls = [os.path.join(spec, s["file"]) for s in manifest["shards"]]
            missing = [u for u in urls if not os.path.exists(u)]
            if missing:
                raise ManifestError(f"{os.path.join(spec, MANIFEST_NAME)} lists missing shards "
                                    f"{missing[:3]}{'...' if len(missing) > 3 else ''}; re-run the converter")
            if not urls:
                raise ManifestError(f"{os.path.join(spec, MANIFEST_NAME)} lists no shards")
            _refuse_lfs_pointers(urls)
            return cls(urls=urls, counts=[s["samples"] for s in manifest["shards"]], root=spec,
                       manifest=manifest)
        from webdataset.shardlists import expand_urls

        urls = list(expand_urls(spec))
        root = os.path.dirname(urls[0]) if urls else None
        by_name: dict[str, int] = {}
        manifest = None
        if root is not None and os.path.isfile(os.path.join(root, MANIFEST_NAME)):
            manifest = read_manifest(root)
            by_name = {s["file"]: s["samples"] for s in manifest["shards"]}
        return cls(urls=urls, counts=[by_name.get(os.path.basename(u)) for u in urls], root=root,
                   manifest=manifest)


def _refuse_lfs_pointers(urls: Sequence[str]) -> None:
    """A shard set kept in git LFS but never pulled: say so now, not as a tar error per shard."""
    for url in urls:
        if os.path.getsize(url) < 1024:
            with open(url, "rb") as fh:
                head = fh.read()
            if is_lfs_pointer(head):
                raise ManifestError(f"shard {url!r} is {lfs_pointer_reason(head)}; {LFS_FIX}")
