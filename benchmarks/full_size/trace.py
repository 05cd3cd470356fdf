"""Fake-tensor traces: the same training step on all 32 layers without allocating anything.

Under ``FakeTensorMode`` every operator runs for its shapes only; :class:`~.tracking.LiveBytes`
counts the storages it would allocate and ``FlopCounterMode`` the matmul/attention FLOPs.  The
ops are the CPU kernels' (the CPU flash-attention kernel with its mask, bf16 autocast), so a
trace of k = 1 or 2 layers equals the real measurement of the same case byte for byte (a test
checks this), and the trace of 32 layers cross-checks the extrapolation of the measured model.

OmniGen's RoPE picks its factor table from the largest position id (data-dependent, which a
fake tensor cannot answer): in a trace it is computed for real from the sequence length, as the
collated batch's first row has positions 0..S-1.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import torch

from .case import Case, make_backbone, make_batch, make_optimizer, make_step, sequence, text_tokens


def count_cpu_attention() -> None:
    """Teach ``FlopCounterMode`` the CPU flash-attention kernels (it knows the GPU ones): the
    same formulas, 2 matmuls forward and 4 backward."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    pairs = [(aten._scaled_dot_product_flash_attention_for_cpu, flop_counter.sdpa_flop),
             (aten._scaled_dot_product_flash_attention_for_cpu_backward, flop_counter.sdpa_backward_flop)]
    for op, formula in pairs:
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula([op], get_raw=True)(formula)


@contextlib.contextmanager
def _fake_safe_moves():
    """peft moves its new layers with ``Module.to``, which cannot swap a fake parameter (the fake
    mode holds weak references to it).  In a trace every tensor is on the CPU already, so a move
    that changes nothing returns the module as is, and peft's cast of a new adapter to the base
    dtype is skipped: the case casts peft's parameters to fp32 right after anyway
    (:func:`~.case.attach_adapter`), so they stay in the fp32 they are created in."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch import nn

    original_to, original_move = nn.Module.to, BaseTunerLayer._move_adapter_to_device_of_base_layer

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if all((device is None or t.device == device) and (dtype is None or not t.is_floating_point()
                                                             or t.dtype == dtype)
               for t in [*self.parameters(), *self.buffers()]):
            return self
        return original_to(self, *args, **kwargs)

    nn.Module.to = to
    BaseTunerLayer._move_adapter_to_device_of_base_layer = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        nn.Module.to, BaseTunerLayer._move_adapter_to_device_of_base_layer = original_to, original_move


def _real_rope(transformer: torch.nn.Module) -> None:
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    rope = transformer.rope
    original = rope.forward

    def forward(hidden_states, position_ids):
        seq = int(position_ids.shape[-1])
        with unset_fake_temporarily():
            cos, sin = original(torch.empty(0), torch.arange(seq)[None])
        # Fake twins made by an op here, so they are counted where the real ones are allocated
        # (before the blocks), not where a block first converts them.
        return torch.empty_like(cos), torch.empty_like(sin)

    rope.forward = forward


def trace_case(case: Case, flops: bool = True) -> dict[str, Any]:
    """A fake step of ``case`` (after one fake step that creates AdamW's states): the same
    fields as :func:`~.measure.measure_step`, plus the counted FLOPs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from .measure import measure_step

    with FakeTensorMode(allow_non_fake_inputs=True), _fake_safe_moves():
        backbone, groups = make_backbone(case, fake=True)
        _real_rope(backbone.denoiser)
        optimizer = make_optimizer(groups)
        batch = make_batch(case, backbone)
        step = make_step(case, backbone, optimizer, batch)
        step()
        row = measure_step(case, backbone, step, batch)
        if flops:
            # A step of its own: the counter's module hooks keep tensors alive that the
            # measured step would have freed.
            count_cpu_attention()
            counter = FlopCounterMode(display=False)
            with counter:
                step()
            row["flops"] = float(counter.get_total_flops())
    row.update({"case": case.to_dict(), "key": case.key, "label": case.label, "seq": sequence(batch),
                "text_tokens": text_tokens(batch, case), "source": "traced"})
    return row


def trace_vae_encode(side: int, images: int) -> dict[str, Any]:
    """SDXL's VAE encoding ``images`` pixel tensors of side x side in fp32, without grad (as
    ``LatentEncoder``): the peak bytes above its weights and the input, and the FLOPs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from deft_omni.model.latents import LatentEncoder

    from .arch import build_sdxl_vae
    from .tracking import LiveBytes, storage_bytes

    with FakeTensorMode(allow_non_fake_inputs=True):
        vae = build_sdxl_vae(fake=True)
        pixels = torch.zeros(images, 3, side, side)
        live = LiveBytes()
        live.register([*vae.parameters(), pixels])
        static = live.current
        count_cpu_attention()
        counter = FlopCounterMode(display=False)
        with live, counter:
            LatentEncoder().posterior(vae, pixels)
        weights = storage_bytes(vae.parameters())
    return {"side": side, "images": images, "peak": live.peak - static, "weights": weights,
            "flops": float(counter.get_total_flops())}


def trace_layers(case: Case, layers: tuple[int, ...] = (1, 2, 32)) -> list[dict[str, Any]]:
    return [trace_case(replace(case, layers=k)) for k in layers]
