"""Stable seed derivation (processor, loader, loss, adapter init).

Python's ``hash`` is salted per process, so it cannot give the same seed in a
DataLoader worker, a resumed run or another rank; a cryptographic digest of the parts'
``repr`` does.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (ints, strings, tuples of them)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
