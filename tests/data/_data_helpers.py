"""Helpers shared by the data tests (a uniquely named module: several test folders have a
conftest.py, so ``import conftest`` would be ambiguous)."""

from __future__ import annotations

import contextlib
import os

from PIL import Image

from deft_omni.data import ShardSetWriter, make_sample

SPECIALS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "<|diffusion|>"]
CORPUS = [
    "Generate an image according to the following instructions",
    "a red circle on a blue background",
    "a green square on a white background",
    "the same shape in yellow",
    "<img> </img> a photo of sks dog <cfg>",
]


def build_tiny_tokenizer():
    """Byte-level BPE (vocab 300) with Phi-3-like specials and a BOS-prepending post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def solid(size_hw, colour=(200, 30, 30)):
    return Image.new("RGB", (size_hw[1], size_hw[0]), colour)


def write_shards(directory, n_shards, per_shard, *, prefix="s", sizes=((32, 32),), bad=None,
                 with_inputs=False):
    """n_shards x per_shard samples keyed ``<prefix>_<shard>_<i>``; sizes cycle per sample.

    ``bad``: {index_in_shard: kind} replaces those samples in every shard with a broken one
    ("png": undecodable output, "tags": tag/image mismatch).  Returns the directory.
    """
    os.makedirs(directory, exist_ok=True)
    with ShardSetWriter(directory, source="test", prefix=prefix, maxcount=per_shard) as writer:
        n = 0
        for shard in range(n_shards):
            for i in range(per_shard):
                key = f"{prefix}_{shard}_{i}"
                size = sizes[n % len(sizes)]
                n += 1
                kind = (bad or {}).get(i)
                if kind == "png":
                    sample = make_sample(key, "a red circle", solid(size))
                    sample["output.png"] = b"definitely not a png"
                elif kind == "tags":
                    sample = make_sample(key, "a red circle", solid(size))
                    sample["json"] = b'{"instruction": "<img><|image_1|></img> x", "task": "t", "meta": {}}'
                elif with_inputs and i % 2:
                    sample = make_sample(key, "<img><|image_1|></img> the same shape in green", solid(size),
                                         [solid((32, 32), (0, 0, 200))], task="image_edit",
                                         meta={"size": list(size)})
                else:
                    sample = make_sample(key, "a red circle on a blue background", solid(size),
                                         meta={"size": list(size)})
                writer.write(sample)
    return str(directory)


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 123456\n")


@contextlib.contextmanager
def umask(mask):
    """Run a block under another process umask (CI runs as root, where permissions never fail)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(*paths):
    """The permission bits of each path."""
    return [os.stat(p).st_mode & 0o777 for p in paths]


def cached_sample(key, output_wh, input_whs=(), *, max_side=64, drop=False, vae="ab" * 32, fmt="png", mask=False):
    """A sample dict with cached latents made without a VAE (random posteriors of the right shapes and
    the processor's geometry); ``drop``: thumbnails in place of the images, as --drop-pixels writes."""
    import torch

    from deft_omni.data.cached_latents import LATENTS_MEMBER, LatentSlot, encode_record, make_thumbnail, thumb_member
    from deft_omni.data.fitting import fit_geometry
    from deft_omni.data.images import encode_image

    sizes = [("output", output_wh)] + [(f"input_{k}", wh) for k, wh in enumerate(input_whs, start=1)]
    images = {name: solid((h, w), (40 * i, 120, 200)) for i, (name, (w, h)) in enumerate(sizes)}
    tags = " ".join(f"<img><|image_{k}|></img>" for k in range(1, len(input_whs) + 1))
    mask_img = None
    if mask:
        mask_img = Image.new("L", output_wh, 0)
        mask_img.paste(255, (0, 0, output_wh[0] // 2, output_wh[1]))
    sample = make_sample(key, f"{tags} a thing".strip(), images["output"], [images[n] for n, _ in sizes[1:]],
                         image_format=fmt, output_mask=mask_img)
    g = torch.Generator().manual_seed(len(key))
    slots = []
    for name, (w, h) in sizes:
        resize, crop = fit_geometry(w, h, max_side, 16, None)
        shape = (4, crop[1] // 8, crop[0] // 8)
        slots.append(LatentSlot(name, (w, h), resize, crop, torch.randn(shape, generator=g).half(),
                                torch.rand(shape, generator=g).half()))
    sample[LATENTS_MEMBER] = encode_record(slots, vae)
    if drop:
        for name, _ in sizes:
            del sample[f"{name}.{fmt}"]
            sample[thumb_member(name, fmt)] = encode_image(make_thumbnail(images[name]), fmt, key, name)
    return sample
