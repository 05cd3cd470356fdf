"""One benchmark case: a k-layer full-width OmniGen with an adapter, a batch, a training step.

Everything runs through the project's own code: ``OmniGenBackbone.training_loss`` (the tiny VAE
encodes the pixels, so the latents have the real shape at no cost; the real VAE is a separate
term), ``OmniGenTrainProcessor`` + ``collate`` for the sequence (left-padded text, time token,
output tokens, an input image's tokens), ``AdapterTarget`` for deft_omni's adapters on the
paper's layout, and AdamW on the target's parameter groups.  peft's adapters are injected with
``peft.inject_adapter_in_model`` on the same module names (q, k, v stay separate there: peft
cannot fuse siblings) and made fp32, as ``get_peft_model`` does for a half-precision base.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .arch import PAPER_FUSED, PAPER_TARGETS, build_transformer, tiny_config, transformer_config

INSTRUCTION = "a red vintage bicycle leaning against a weathered brick wall, evening light"
EDIT_INSTRUCTION = "make the bicycle in <img><|image_1|></img> blue, evening light"
IMPLS = ("base", "ours", "peft")


@dataclass(frozen=True)
class Case:
    impl: str = "ours"        # base (frozen, no adapter) | ours | peft
    method: str = "deft"      # deft | para | lora | none
    basis: str = "qr"         # DEFT's decomposition (qr | relu); '-' for LoRA and the base
    rank: int = 64
    side: int = 512           # output image side (px); input images have the same side
    inputs: int = 0           # input images per sample
    batch: int = 1
    ckpt: bool = False        # gradient checkpointing of every block
    layers: int = 1
    dtype: str = "bf16"       # the frozen base (and autocast) dtype; adapters are fp32
    arch: str = "omnigen"     # omnigen (full width) | tiny (the project's test model)
    # Measure every block as an interior one: the first block's input then requires grad, as
    # every later block's does (else the first block keeps less for the backward and skips its
    # input gradients, and one block would not stand for the other 31).  False: plain training.
    interior: bool = True

    def __post_init__(self) -> None:
        if self.impl not in IMPLS:
            raise ValueError(f"impl={self.impl!r}; choose one of {IMPLS}")
        if self.dtype not in ("bf16", "fp32"):
            raise ValueError(f"dtype={self.dtype!r}; choose bf16 or fp32")

    @property
    def label(self) -> str:
        if self.impl == "base":
            return "frozen base"
        name = {"ours": "deft_omni", "peft": "peft"}[self.impl]
        kind = "LoRA" if self.method == "lora" else ("PaRa" if self.method == "para" else "DEFT")
        return f"{name} {kind}" + (f" {self.basis}" if self.method in ("deft", "para") else "")

    @property
    def key(self) -> str:
        return (f"{self.impl}-{self.method}-{self.basis}-r{self.rank}-{self.side}px-in{self.inputs}-b{self.batch}"
                f"-{'ckpt' if self.ckpt else 'nockpt'}-k{self.layers}-{self.dtype}-{self.arch}"
                + ("" if self.interior else "-plain"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_config(case: Case) -> dict[str, Any]:
    return transformer_config(case.layers) if case.arch == "omnigen" else tiny_config(case.layers)


def torch_dtype(case: Case) -> torch.dtype:
    return torch.bfloat16 if case.dtype == "bf16" else torch.float32


def _input_requires_grad(module, args):
    hidden = args[0]
    return args if hidden.requires_grad else (hidden.detach().requires_grad_(), *args[1:])


def attach_adapter(case: Case, transformer: torch.nn.Module, lr: float = 1e-4) -> list[dict]:
    """Inject the case's adapter; returns AdamW parameter groups (empty for the frozen base)."""
    transformer.requires_grad_(False)
    if case.interior or case.impl == "base":
        # (The frozen base needs it too, or its backward would not run through the blocks.)
        transformer.layers[0].register_forward_pre_hook(_input_requires_grad)
    if case.impl == "base":
        return []
    if case.impl == "ours":
        from deft_omni.adapters import AdapterConfig
        from deft_omni.training.targets import AdapterTarget

        cfg = AdapterConfig(method=case.method, rank=case.rank, decomposition=case.basis if case.basis != "-" else "qr",
                            target_modules=PAPER_TARGETS, fused_groups=PAPER_FUSED)
        target = AdapterTarget(cfg)
        target.attach(transformer)
        return target.param_groups(transformer, lr, 0.0)
    import peft

    if case.method == "lora":
        config = peft.LoraConfig(r=case.rank, lora_alpha=case.rank, target_modules=PAPER_TARGETS)
    else:
        config = peft.DeftConfig(r=case.rank, target_modules=PAPER_TARGETS, decomposition_method=case.basis,
                                 para=case.method == "para")
    peft.inject_adapter_in_model(config, transformer)
    params = [p for p in transformer.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.data = p.data.float()
    return [{"params": params, "lr": lr}]


def make_backbone(case: Case, fake: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                  vae: str = "tiny"):
    """(backbone, AdamW param groups): the k-layer transformer, a VAE (``tiny``: right latent
    shapes at no cost, the real VAE being a term of its own; ``sdxl``: SDXL's, random) and the
    tiny tokenizer."""
    from deft_omni.backbones.omnigen import OmniGenBackbone
    from deft_omni.model import OmniGenParts, build_tiny_tokenizer, build_tiny_vae, default_omnigen_scheduler

    from .arch import build_sdxl_vae

    transformer = build_transformer(model_config(case), torch_dtype(case), seed=seed, fake=fake, device=device)
    if case.ckpt:
        transformer.enable_gradient_checkpointing()
    groups = attach_adapter(case, transformer)
    transformer.train()
    encoder = build_sdxl_vae(fake=fake, seed=seed) if vae == "sdxl" else build_tiny_vae(seed)
    if torch.device(device).type != "cpu":  # (a fake module cannot be moved, and need not be)
        encoder = encoder.to(device)
    parts = OmniGenParts(transformer, encoder, build_tiny_tokenizer(), default_omnigen_scheduler(),
                         "diffusers", Path("random-init"))
    return OmniGenBackbone(parts), groups


def make_batch(case: Case, backbone) -> dict[str, Any]:
    """A collated batch: ``case.batch`` samples of one output size, ``case.inputs`` input images each."""
    import numpy as np
    from PIL import Image

    from deft_omni.data.schema import Sample

    rng = np.random.default_rng(0)

    def image() -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (case.side, case.side, 3), dtype=np.uint8))

    processor = backbone.make_processor(max_image_side=case.side, cfg_dropout=0.0)
    instruction = EDIT_INSTRUCTION if case.inputs else INSTRUCTION
    if case.inputs > 1:
        instruction += "".join(f" and <img><|image_{k}|></img>" for k in range(2, case.inputs + 1))
    samples = [Sample(key=f"s{b}", instruction=instruction, task="bench", output=image(),
                      inputs=[image() for _ in range(case.inputs)]) for b in range(case.batch)]
    return processor.collate([processor(s, train=False) for s in samples])


def text_tokens(batch: dict[str, Any], case: Case) -> int:
    """Text tokens of the batch (the sequence minus the time token and every image token)."""
    n = (case.side // 16) ** 2
    return int(batch["input_ids"].shape[1]) - case.inputs * n


def sequence(batch: dict[str, Any]) -> int:
    return int(batch["attention_mask"].shape[-1])


def make_optimizer(groups: list[dict]) -> Optional[torch.optim.Optimizer]:
    """AdamW as the training module builds it (the DEFT authors' betas); None for the frozen base."""
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.99)) if groups else None


def make_step(case: Case, backbone, optimizer: Optional[torch.optim.Optimizer],
              batch: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """One optimizer step: the training loss under autocast (as Lightning's bf16-mixed), its
    backward, AdamW.  Returns a function giving the phase times."""
    import time

    from deft_omni.backbones.objective import LossConfig

    loss_cfg = LossConfig()
    device = next(backbone.vae.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if case.dtype == "bf16" else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(hook: Optional[Callable[[str], None]] = None) -> dict[str, float]:
        sync()
        t0 = time.perf_counter()
        gen = torch.Generator(device=device).manual_seed(0)
        with autocast:
            out = backbone.training_loss(batch, loss_cfg, gen)
        sync()
        t1 = time.perf_counter()
        if hook:
            hook("forward")
        out.loss.backward()
        sync()
        t2 = time.perf_counter()
        if hook:
            hook("backward")
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        return {"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2, "step_s": t3 - t0,
                "loss": out.loss.detach()}

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


def warm_up_case(case: Case) -> Case:
    """A few-token twin of ``case`` (one-time initialisation and AdamW's states, not the case's cost)."""
    return replace(case, side=32, batch=1)
