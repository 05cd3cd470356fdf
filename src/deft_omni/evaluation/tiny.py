"""Tiny random-init metric models saved as local folders, for tests and ``--demo``.

Same classes and file layout as the real checkpoints (``save_pretrained`` folders with
config, safetensors weights, a PIL image processor and, for CLIP, a tokenizer), but
32x32 inputs, 2 layers and widths of 16, so a forward pass takes milliseconds. Their
numbers mean nothing; only the code paths are real.
"""

from __future__ import annotations

from ..core.atomic import atomic_path

import itertools
import os

import torch

TINY_IMAGE_SIZE = 32
_WIDTH = 16
_CLIP_PROJECTION = 8
_CLIP_SENTENCES = (
    "a photo of sks dog", "a sks dog in the jungle", "a red cube on a wooden table", "a cat sleeping on a sofa",
    "a depth map of a room", "a canny edge map of a street", "a photo of a backpack in the snow",
)


def _vit_args() -> dict:
    return {"image_size": TINY_IMAGE_SIZE, "patch_size": 8, "hidden_size": _WIDTH, "num_hidden_layers": 2,
                "num_attention_heads": 2}


def build_clip_tokenizer():
    """A byte-level BPE with CLIP's two special tokens (bos 0, eos/pad 1), wrapped for transformers."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE(unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(_CLIP_SENTENCES), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{specials[0]} $A {specials[1]}",
                                                       special_tokens=[(specials[0], 0), (specials[1], 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1],
                                   unk_token=specials[1], pad_token=specials[1], model_max_length=16)


def build_tiny_clip(folder: str, seed: int = 0) -> str:
    """CLIPModel (projection width 8, text context 16) + tokenizer + CLIPImageProcessorPil."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tok = build_clip_tokenizer()
    text = {"vocab_size": len(tok), "hidden_size": _WIDTH, "intermediate_size": 2 * _WIDTH, "num_hidden_layers": 2,
                "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = dict(_vit_args(), intermediate_size=2 * _WIDTH)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=_CLIP_PROJECTION))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": TINY_IMAGE_SIZE},
                          crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(folder)
    return folder


def build_tiny_dino(folder: str, seed: int = 1) -> str:
    """A DINOv1-style ``ViTModel`` (no pooler, like facebook/dino-vits16) + ViTImageProcessorPil."""
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(seed)
    ViTModel(ViTConfig(**_vit_args(), intermediate_size=2 * _WIDTH), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(folder)
    return folder


def build_tiny_dinov2(folder: str, seed: int = 2) -> str:
    """A ``Dinov2Model`` + BitImageProcessorPil (resize + centre crop, ImageNet statistics)."""
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(**_vit_args(), mlp_ratio=2)).save_pretrained(folder)
    BitImageProcessorPil(size={"shortest_edge": TINY_IMAGE_SIZE},
                         crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def build_tiny_depth(folder: str, seed: int = 3) -> str:
    """A ``DepthAnythingForDepthEstimation`` on a 2-layer DINOv2 backbone + DPTImageProcessorPil."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessorPil,
    )

    backbone = Dinov2Config(**_vit_args(), mlp_ratio=2, out_indices=[1, 2], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, patch_size=8, reassemble_hidden_size=_WIDTH,
                              reassemble_factors=[2, 1], neck_hidden_sizes=[8, 16], fusion_hidden_size=8,
                              head_hidden_size=8, head_in_index=-1)
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(cfg)
    with torch.no_grad():
        # Default init leaves the neck/head outputs near constant (their ReLU-ended output is ~0.5 everywhere);
        # unit-gain weights and a positive last bias give depth maps that actually vary over the image.
        for name, param in model.named_parameters():
            if param.ndim > 1 and name.startswith(("neck.", "head.")):
                param.normal_(0.0, 1.0 / param[0].numel() ** 0.5)
        model.head.conv3.bias.fill_(0.5)
    model.save_pretrained(folder)
    DPTImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, keep_aspect_ratio=False,
                         ensure_multiple_of=1).save_pretrained(folder)
    return folder


def build_tiny_aesthetic_head(path: str, layout: str = "mlp", width: int = _CLIP_PROJECTION, seed: int = 4) -> str:
    """A random LAION-layout head: ``weight``/``bias`` (linear) or ``layers.{0,2,4,6,7}.*`` (MLP).

    Written as a torch state dict (``.pth``, as LAION publishes them) or as safetensors
    when ``path`` ends in ``.safetensors``.
    """
    gen = torch.Generator().manual_seed(seed)
    if layout == "linear":
        state = {"weight": torch.randn(1, width, generator=gen), "bias": torch.randn(1, generator=gen)}
    elif layout == "mlp":
        dims = [width, 32, 16, 8, 4, 1]  # the real head: width, 1024, 128, 64, 16, 1
        state = {}
        for idx, (d_in, d_out) in zip((0, 2, 4, 6, 7), itertools.pairwise(dims)):
            state[f"layers.{idx}.weight"] = torch.randn(d_out, d_in, generator=gen) / d_in ** 0.5
            state[f"layers.{idx}.bias"] = torch.randn(d_out, generator=gen)
    else:
        raise ValueError(f"layout must be 'linear' or 'mlp', got {layout!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
    else:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    return path


def build_tiny_metric_models(root: str) -> dict[str, str]:
    """All tiny metric models under ``root``; returns {clip, dino, dinov2, depth, aesthetic_head}."""
    paths = {name: os.path.join(root, name) for name in ("clip", "dino", "dinov2", "depth")}
    build_tiny_clip(paths["clip"])
    build_tiny_dino(paths["dino"])
    build_tiny_dinov2(paths["dinov2"])
    build_tiny_depth(paths["depth"])
    paths["aesthetic_head"] = build_tiny_aesthetic_head(os.path.join(root, "aesthetic_mlp.safetensors"))
    return paths
