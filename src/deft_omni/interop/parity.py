"""The settings under which diffusers' ``OmniGenPipeline`` and ``python -m deft_omni.generate`` make
the same image (float tolerance; checked by tests/interop/test_pipeline.py).

Both run OmniGen's Euler sampler: t from 0 (noise) to 1 (data) over ``linspace``, the same
guidance formula, the same prompt template and tokenization.  What differs by default:

* negative prompt: the pipeline always uses its processor's long default (:func:`diffusers_negative_prompt`);
  deft_omni defaults to ``<cfg>``, the instruction that condition dropout trains.  Pass
  ``--negative-prompt "<that text>"`` to generate.
* noise: pass ``generator=torch.Generator().manual_seed(S)`` (CPU) to the pipeline and ``--seed S``
  to generate (its first image uses S; one CPU generator per image).
* steps, guidance: the same ``num_inference_steps``/``--steps``, ``guidance_scale``, ``img_guidance_scale``
  (defaults 2.5 and 1.6 on both sides), the same ``height``/``width``; fp32 (``--dtype fp32``).
* RoPE: diffusers' transformer computes the rotary embedding from the first row of the batch only.
  The pipeline's rows are [prompt, negative prompt(, image-only prompt)], so when the negative
  prompt tokenizes longer than the prompt, the pipeline rotates the negative row with shifted
  positions; deft_omni puts the longest row first, as every row's own positions would give.  The
  two agree when the prompt is at least as long (in tokens) as the negative prompt.
* input images: the pipeline encodes them with a *sample* of the VAE posterior (from the global
  RNG), deft_omni with its *mean*; they agree to the posterior's standard deviation (the tests use
  a VAE whose std is ~3e-7).  Images no larger than ``max_input_image_size`` are centre-cropped
  to multiples of 16 alike; larger ones are resized, diffusers first halving them (box filter)
  while the short side is at least twice the limit, so those may differ.
"""

from __future__ import annotations

import inspect


def diffusers_negative_prompt() -> str:
    """The negative prompt diffusers' ``OmniGenPipeline`` always uses (its processor's default)."""
    from diffusers.pipelines.omnigen.processor_omnigen import OmniGenMultiModalProcessor

    return inspect.signature(OmniGenMultiModalProcessor.__call__).parameters["negative_prompt"].default
