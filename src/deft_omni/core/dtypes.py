"""The one dtype vocabulary: every config key and CLI flag that names a dtype reads it here."""

from __future__ import annotations

from typing import Union

import torch

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "16": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "64": torch.float64,
}
# The spellings a CLI shows in its help (the numeric ones are Lightning's precision words).
DTYPE_CHOICES = ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16", "fp64", "float64")


def resolve_dtype(value: Union[str, torch.dtype]) -> torch.dtype:
    """``torch.bfloat16`` for "bf16", "bfloat16", "torch.bfloat16" or the dtype itself; likewise fp32/fp16."""
    if isinstance(value, torch.dtype):
        return value
    key = str(value).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {value!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return _DTYPES[key]


def dtype_name(dtype: Union[str, torch.dtype]) -> str:
    """The canonical name ("float32", "bfloat16", "float16") of any accepted spelling."""
    return str(resolve_dtype(dtype)).removeprefix("torch.")


def parse_dtype_arg(value: str) -> str:
    """argparse ``type=``: accepts every spelling, returns the canonical name."""
    import argparse

    try:
        return dtype_name(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


__all__ = ["DTYPE_CHOICES", "dtype_name", "parse_dtype_arg", "resolve_dtype"]
