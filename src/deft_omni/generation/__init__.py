"""Image generation with a (possibly adapted) OmniGen: a minimal Euler sampler and grid helpers."""

from .sampler import (
    SamplePrompt,
    build_guidance_batch,
    decode_latents,
    euler_timesteps,
    generate_image,
    generate_latents,
    generate_latents_batch,
    initial_noise,
    load_input_image,
    make_grid,
    tensor_to_pil,
)

__all__ = [
    "SamplePrompt",
    "build_guidance_batch",
    "decode_latents",
    "euler_timesteps",
    "generate_image",
    "generate_latents",
    "generate_latents_batch",
    "initial_noise",
    "load_input_image",
    "make_grid",
    "tensor_to_pil",
]
