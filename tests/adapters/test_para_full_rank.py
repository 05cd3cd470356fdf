"""PaRa with a projector basis at rank = out width erases the weight: injection says so."""

from __future__ import annotations

import warnings

import pytest
import torch

from deft_omni.adapters import AdapterConfig, inject_adapter

from .conftest import TwoLayer


@pytest.mark.parametrize("decomposition", ["qr", "tsvd", "eigen"])
def test_para_at_rank_equal_to_out_warns_and_names_the_modules(decomposition):
    model = TwoLayer(d_in=12, d_qkv=6, bias=True)
    x = torch.randn(4, 12)
    with pytest.warns(UserWarning, match=r"PaRa .* rank 6 = the output width of 2 module\(s\) \['to_q', 'to_k'\].*"
                                         r"only output their bias") as record:
        inject_adapter(model, AdapterConfig(method="para", rank=6, decomposition=decomposition,
                                            target_modules=["to_q", "to_k", "o"]))
    assert len([w for w in record if "PaRa" in str(w.message)]) == 1  # one warning for all modules
    with torch.no_grad():  # the claim holds: the layer outputs its bias only
        torch.testing.assert_close(model.to_q(x), model.to_q.bias.expand(4, 6), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw", [
    {"method": "para", "rank": 5, "decomposition": "qr"},  # below the width
    {"method": "para", "rank": 6, "decomposition": "relu"},  # not a projector
    {"method": "deft", "rank": 6, "decomposition": "qr"},  # R re-injects
    {"method": "para", "rank": 6, "decomposition": "qr", "fused_groups": [["to_q", "to_k"]]},  # joint width 12
])
def test_no_warning_where_the_weight_survives(kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inject_adapter(TwoLayer(d_in=12, d_qkv=6), AdapterConfig(target_modules=["to_q", "to_k"], **kw))
