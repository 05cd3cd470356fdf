"""The processor's hook for extensions that condition a sample on more than its instruction.

A conditioner (the camera extension's, for example) may append text to the instruction, have a
text marker tokenized as one reserved id (split out like an image tag, so it is one id whatever
the tokenizer makes of its characters), and attach a fixed-width vector to the sample.  The
collated batch then holds ``batch[name]`` (B, width) and ``batch["has_" + name]`` (B,) for every
conditioner that gave some sample a vector.  Condition dropout drops the conditioning too."""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class SampleConditioner(Protocol):
    name: str  # batch key of the vectors
    width: int  # vector size
    marker: Optional[str]  # text marker tokenized as ``token_id`` (None: no marker)
    token_id: int

    def condition(self, sample: Any) -> tuple[str, Optional[torch.Tensor]]:
        """(instruction suffix, (width,) fp32 vector) of a parsed sample; ("", None) when it has none."""
