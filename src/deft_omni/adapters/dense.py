"""Dense views of base weights that may be stored quantised (``model.quantize``).

A quantised base weight is a tensor subclass (torchao's ``Int8Tensor``) that holds integer data
and scales and reports the dtype it was quantised from.  Everything the adapters compute from W0
(DEFT's ``right^T W0``, the fingerprint, the inference cache's storage key) reads it here, as
its dequantised values: the same W0 the base layer's forward multiplies by, so DEFT is exactly the
identity at init with respect to the quantised base.  Nothing here imports a quantisation library:
a quantised weight is recognised by being a wrapper subclass with a ``dequantize`` method.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether `weight` is stored quantised (a wrapper subclass that can dequantise itself)."""
    return is_traceable_wrapper_subclass(weight) and callable(getattr(weight, "dequantize", None))


def dense_rows(weight: torch.Tensor, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows [start, stop) of `weight` as a plain tensor of `dtype` (dequantised when quantised).

    Only that block is materialised.  A quantised weight's values are its fp32 dequantisation
    (integers times fp32 scales, one rounding): fp32 and fp64 get exactly those, never a pass
    through the half-precision compute dtype; fp16/bf16 get them rounded once.
    """
    block = weight[start:stop]
    if not is_quantized(block):
        return block.to(dtype)
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return block.dequantize(dtype)
    return block.dequantize(torch.float32).to(dtype)


def dense(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The whole of `weight` as a plain tensor of `dtype`; use `dense_rows` where size matters."""
    return dense_rows(weight, 0, weight.shape[0], dtype)


def inner_tensors(weight: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold `weight`'s values: itself, or a quantised weight's parts."""
    if not is_traceable_wrapper_subclass(weight):
        return [weight]
    names, _ = weight.__tensor_flatten__()
    parts = []
    for name in names:
        part = getattr(weight, name)
        if part is not None:
            parts.extend(inner_tensors(part))
    return parts


def storage_bytes(weight: torch.Tensor) -> int:
    """Bytes held by `weight`'s values (for a quantised weight: its integers, scales and offsets)."""
    return sum(t.numel() * t.element_size() for t in inner_tensors(weight))
