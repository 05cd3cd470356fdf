"""The world base's recipe: one dataclass whose defaults are what ``python -m deft_omni.world.build``
trains and what the committed weights in ``deft_omni/assets/world_base`` came from.

The transformer is OmniGen's architecture (diffusers' ``OmniGenTransformer2DModel``: Phi-3 layers,
RoPE, patch embedding, time tokens) at 1/24 of OmniGen-v1's width and 6 of its 32 layers; images are
96 px, so an output is 36 latent tokens and a prompt about 20 words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .tasks import DEFAULT_MIX


@dataclass
class WorldBaseConfig:
    """Everything that decides the world base's weights (with the VAE's ``WorldVAEConfig``)."""

    seed: int = field(default=0, metadata={"help": "Seed of the data, the init and every draw of training."})
    # -- the transformer (OmniGenTransformer2DModel)
    hidden_size: int = field(default=128, metadata={"help": "Width (OmniGen-v1: 3072)."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads (and key/value heads)."})
    num_layers: int = field(default=6, metadata={"help": "Phi-3 decoder layers (OmniGen-v1: 32)."})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width (OmniGen-v1: 8192)."})
    pos_embed_max_size: int = field(default=8, metadata={
        "help": "Patch-position table side: images up to 8 x 2 x 8 = 128 px a side."})
    # -- data: drawn once from the world, encoded once with the world VAE
    n_train: int = field(default=20000, metadata={"help": "Training tasks drawn from the world (seen combinations)."})
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX), metadata={
        "help": "Task shares: text_one/text_two (text-to-image), recolour/move/background/same_but (edits)."})
    # -- optimisation (AdamW through DeftOmniModule with adapter.method=full)
    steps: int = field(default=4500, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=32, metadata={"help": "Samples per step (one kind per batch: text or edit)."})
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate (cosine to lr x min_lr_ratio)."})
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    cfg_dropout: float = field(default=0.1, metadata={
        "help": "Share of samples trained on the <cfg> instruction without inputs (classifier-free guidance)."})
    # -- the sampler defaults stored with the model (world.json)
    sample_steps: int = 16
    guidance_scale: float = 2.5
    img_guidance_scale: float = 1.6
    image_size: int = 96

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        if min(self.steps, self.batch_size, self.n_train, self.num_layers) < 1:
            raise ValueError("steps, batch_size, n_train and num_layers must be positive")
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size={self.batch_size} exceeds n_train={self.n_train}")

    def transformer_config(self, vocab_size: int) -> dict[str, Any]:
        head = self.hidden_size // self.num_heads
        return dict(in_channels=4, patch_size=2, hidden_size=self.hidden_size, num_attention_heads=self.num_heads,
                    num_key_value_heads=self.num_heads, intermediate_size=self.intermediate_size,
                    num_layers=self.num_layers, vocab_size=vocab_size, pad_token_id=0, rms_norm_eps=1e-5,
                    max_position_embeddings=131072, original_max_position_embeddings=4096, rope_base=10000,
                    rope_scaling={"short_factor": [1.0] * (head // 2), "long_factor": [1.0] * (head // 2)},
                    pos_embed_max_size=self.pos_embed_max_size)

    def sampler_defaults(self) -> dict[str, Any]:
        return {"steps": self.sample_steps, "guidance_scale": self.guidance_scale,
                "img_guidance_scale": self.img_guidance_scale, "height": self.image_size, "width": self.image_size}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
