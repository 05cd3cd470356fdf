"""A low-memory frozen base: weight-only int8 storage of its Linear weights (``model.quantize``).

``int8`` quantises every ``nn.Linear`` weight of the network per output row, symmetrically,
through torchao (``Int8WeightOnlyConfig``, the optional extra ``deft_omni[quant]``):
``W ~ q * s`` with ``q`` int8 (out x in), ``s`` an fp32 scale per row and torchao's int8 zero point
per row (all zeros).  Biases, embeddings, norms, convolutions (OmniGen's patch embedding) and
the VAE keep their dtype.  Activations and the forward's arithmetic keep ``model.torch_dtype``.

Each quantised layer becomes a :class:`QuantizedLinear` (still an ``nn.Linear``, so adapters
wrap it as before).  Its forward is torchao's kernel, ``(x q^T) s``; its backward is
``grad(x) = g * dequantised W``, from the int8 weight.  Left to autograd, torchao's kernel would
keep a dense copy of every layer's weight, in the compute dtype, for that product: an int8 base
would then hold more memory in training than a bf16 one.

Quantise before injecting adapters: DEFT's identity init reads W0, and must read the W0 the
forward multiplies by (the dequantised one; see :mod:`deft_omni.adapters.dense`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import AdapterLinear
from ..adapters.dense import dense, is_quantized, storage_bytes

QUANTIZE_MODES = ("none", "int8")
# Per quantised row: an fp32 scale and torchao's int8 zero point.
_ROW_BYTES = {"int8": 4 + 1}
_EXTRA_HINT = ("pip install 'deft_omni[quant]' (or `pip install torchao`, checking with --dry-run that "
               "pip leaves your torch alone)")


class QuantizeExtraMissing(ImportError):
    """``model.quantize`` needs an optional package that is not installed."""


def check_mode(mode: Optional[str]) -> str:
    """``mode`` normalised (None -> 'none'); a clear error for anything else."""
    value = "none" if mode is None else str(mode).lower()
    if value not in QUANTIZE_MODES:
        raise ValueError(f"model.quantize={mode!r} is not a quantisation mode; choose one of {list(QUANTIZE_MODES)}")
    return value


def missing_extra(mode: Optional[str]) -> Optional[str]:
    """Why `mode` cannot run here (its package is not installed), without importing anything; else None."""
    if check_mode(mode) == "int8" and importlib.util.find_spec("torchao") is None:
        return f"model.quantize=int8 needs torchao, an optional extra: {_EXTRA_HINT}; or set model.quantize=none"
    return None


@contextlib.contextmanager
def _quiet(*names: str):
    # torchao logs, on import, every CUDA kernel library a CPU build cannot load; none is used here.
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _int8_config():
    try:
        with _quiet("torchao", "torch.utils._pytree"):
            from torchao.quantization import Int8WeightOnlyConfig
    except ImportError as err:
        raise QuantizeExtraMissing(f"model.quantize=int8 needs torchao, an optional extra ({err}). Install it: "
                                   f"{_EXTRA_HINT}; or set model.quantize=none.") from None
    # set_inductor_config=False: quantising must not change torch.compile's global settings.
    return Int8WeightOnlyConfig(set_inductor_config=False)


class _QuantizedLinearFn(torch.autograd.Function):
    """y = linear(x, W, b) with a quantised, frozen W; saves W itself (int8), never a dense copy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            # One layer's dense weight, transient: what torchao's own forward materialises too.
            grad_x = grad @ dense(weight, grad.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(dim=0)
        return grad_x, None, grad_bias


class QuantizedLinear(nn.Linear):
    """An ``nn.Linear`` whose weight is stored quantised and frozen (see the module docstring)."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad:
            raise RuntimeError(
                f"a quantised base weight ({self.out_features}x{self.in_features}) cannot train: model.quantize=int8 "
                f"stores the frozen base in 8 bits. Train an adapter (adapter.method=deft/para/lora), or load the "
                f"base unquantised (model.quantize=none) for adapter.method=full.")
        return _QuantizedLinearFn.apply(x, self.weight, self.bias)


def quantize_linears(model: nn.Module, mode: Optional[str] = "int8") -> list[str]:
    """Store every ``nn.Linear`` weight of `model` quantised (``mode``); returns their names.

    ``mode`` 'none' does nothing.  Refuses a model that already carries adapters (their
    identity init read the unquantised W0) and needs torchao (:class:`QuantizeExtraMissing`).
    """
    mode = check_mode(mode)
    if mode == "none":
        return []
    if any(isinstance(m, AdapterLinear) for m in model.modules()):
        raise RuntimeError("quantise the base before injecting adapters: DEFT's identity init reads W0, and must "
                           "read the quantised W0 the forward uses")
    targets = [name for name, m in model.named_modules()
               if type(m) is nn.Linear and m.weight.is_floating_point() and not m.weight.is_meta]
    if not targets:
        return []
    config = _int8_config()
    from torchao.quantization import quantize_  # already imported, quietly, by _int8_config

    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        linear.requires_grad_(False)
        quantize_(linear, config, filter_fn=lambda m, fqn: m is linear)
        setattr(parent, child, QuantizedLinear(linear))
    return targets


# ------------------------------------------------------------------------------ bytes
def weight_bytes(out_features: int, in_features: int, mode: Optional[str] = "int8",
                 dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of one Linear weight (out x in) stored as `mode`; `dtype` for 'none' (bias not included).

    int8: out*in bytes of integers plus 5 bytes per row (fp32 scale, int8 zero point), i.e.
    1 + 5/in bytes per parameter -- exactly what :func:`quantize_linears` allocates (tested).
    """
    mode = check_mode(mode)
    if mode == "none":
        return out_features * in_features * torch.empty(0, dtype=dtype).element_size()
    return out_features * (in_features + _ROW_BYTES[mode])


def linear_weight_bytes(model: nn.Module, mode: Optional[str] = "int8", dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of all of `model`'s Linear weights stored as `mode` (a meta-device model works: only
    shapes are read).  What `quantize_linears` quantises, counted without quantising anything."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += weight_bytes(m.out_features, m.in_features, mode, dtype)
    return total


def stored_linear_weight_bytes(model: nn.Module) -> int:
    """Bytes the Linear weights of `model` hold now (quantised ones: integers, scales, zero points)."""
    return sum(storage_bytes(m.weight) for m in model.modules() if isinstance(m, nn.Linear))


def is_quantized_model(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) and is_quantized(m.weight) for m in model.modules())
