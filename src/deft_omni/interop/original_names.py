"""Which Linear layer of OmniGen's original module tree holds each diffusers Linear layer.

OmniGen's own package (VectorSpaceLab/OmniGen) names its modules ``llm.layers.N.self_attn.qkv_proj``
and so on; diffusers' ``OmniGenTransformer2DModel`` splits ``qkv_proj`` into ``to_q``/``to_k``/``to_v``
and renames the rest.  The mapping is read from :func:`deft_omni.model.original_key_map` (the one
table the checkpoint converter uses), so the two cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..model import original_key_map

# Every Linear layer of the original OmniGen-v1 (no biases in the decoder; the time embedders and
# the final layer have biases, which adapters leave alone).
_PER_LAYER = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
_TOP = ("time_token.mlp.0", "time_token.mlp.2", "t_embedder.mlp.0", "t_embedder.mlp.2",
        "final_layer.adaLN_modulation.1", "final_layer.linear")
ORIGINAL_LINEARS_HELP = ("llm.layers.N.self_attn.qkv_proj / o_proj, llm.layers.N.mlp.gate_up_proj / down_proj, "
                         "time_token.mlp.0/2, t_embedder.mlp.0/2, final_layer.adaLN_modulation.1, final_layer.linear")
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class OriginalSlot:
    """Where one diffusers Linear layer sits inside an original one (rows stacked in `members` order)."""

    module: str  # original module name, e.g. llm.layers.0.self_attn.qkv_proj
    members: tuple[str, ...]  # the diffusers modules stacked in it, e.g. (..to_q, ..to_k, ..to_v)
    index: int  # position of this diffusers module among `members`


def original_slots(num_layers: int) -> dict[str, OriginalSlot]:
    """diffusers Linear module name -> its :class:`OriginalSlot`, for a model of `num_layers` blocks."""
    keys = [f"llm.layers.{i}.{m}.weight" for i in range(num_layers) for m in _PER_LAYER]
    keys += [f"{m}.weight" for m in _TOP]
    out: dict[str, OriginalSlot] = {}
    for key, targets in original_key_map(keys).items():
        members = tuple(t.removesuffix(".weight") for t in targets)
        for i, member in enumerate(members):
            out[member] = OriginalSlot(key.removesuffix(".weight"), members, i)
    return out


def count_layers(model: nn.Module) -> int:
    """Number of transformer blocks, read from module names (``layers.N.``)."""
    found = [int(m.group(1)) for name, _ in model.named_modules() if (m := _LAYER_RE.search(name + "."))]
    return max(found) + 1 if found else 0


def member_rows(model: nn.Module, slot: OriginalSlot) -> list[int]:
    """Output sizes of the slot's members in `model` (q, k, v rows of a fused qkv_proj)."""
    return [int(model.get_submodule(m).out_features) for m in slot.members]
