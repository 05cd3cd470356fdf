"""The bottom layer: the atomic writer, the dtype vocabulary and seed derivation.

Everything in deft_omni may import from here; this package imports nothing of deft_omni."""

from .atomic import atomic_dir, atomic_file, atomic_path, clean_stale, write_bytes, write_json, write_text
from .dtypes import DTYPE_CHOICES, dtype_name, parse_dtype_arg, resolve_dtype
from .seeding import derive_seed

__all__ = [
    "DTYPE_CHOICES",
    "atomic_dir",
    "atomic_file",
    "atomic_path",
    "clean_stale",
    "derive_seed",
    "dtype_name",
    "parse_dtype_arg",
    "resolve_dtype",
    "write_bytes",
    "write_json",
    "write_text",
]
