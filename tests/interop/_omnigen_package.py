"""OmniGen's own package (``omnigen==1.0.3``) as an extra oracle, when it is installed (tests only).

Install it apart from the environment: ``pip install --no-deps --target /tmp/omnigen_pkg
omnigen==1.0.3`` (or point ``DEFT_OMNI_OMNIGEN_PKG`` at such a folder).  It does not import as is
beside transformers 5: its ``__init__`` pulls in its scheduler, which imports ``OffloadedCache``
(gone from transformers), its processor needs torchvision, and ``model.py`` imports three timm
classes it never uses.  So its ``model.py``, ``transformer.py`` and ``pipeline.py`` are loaded
under a stub ``OmniGen`` package that skips ``__init__``, with those three timm names stubbed; the
code that matters here -- the ``OmniGen`` module tree and ``OmniGenPipeline.merge_lora`` -- is
theirs, unmodified.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import types
from pathlib import Path
from typing import Optional

import pytest

ENV = "DEFT_OMNI_OMNIGEN_PKG"
DEFAULT = "/tmp/omnigen_pkg"


def _module(name: str, package: bool = False, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=package)
    mod.__dict__.update(attrs)
    return mod


class _Unused:
    """Stands in for names their modules import and never use."""


def omnigen_package() -> Optional[types.SimpleNamespace]:
    """(OmniGen, Phi3Config, merge_lora) from OmniGen's package, or None when it is not there."""
    root = Path(os.environ.get(ENV, DEFAULT)) / "OmniGen"
    if not (root / "pipeline.py").is_file():
        return None
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in sys.modules if n == "OmniGen" or n.startswith("OmniGen.")]:
            mp.delitem(sys.modules, name)
        stub = _module("OmniGen", package=True, __path__=[str(root)])
        mp.setitem(sys.modules, "OmniGen", stub)
        if importlib.util.find_spec("timm") is None:
            mp.setitem(sys.modules, "timm", _module("timm", package=True))
            mp.setitem(sys.modules, "timm.models", _module("timm.models", package=True))
            mp.setitem(sys.modules, "timm.models.vision_transformer",
                       _module("timm.models.vision_transformer", PatchEmbed=_Unused, Attention=_Unused, Mlp=_Unused))
        model = importlib.import_module("OmniGen.model")
        transformer = importlib.import_module("OmniGen.transformer")
        stub.OmniGen, stub.OmniGenProcessor, stub.OmniGenScheduler = model.OmniGen, _Unused, _Unused
        pipeline = importlib.import_module("OmniGen.pipeline")
    return types.SimpleNamespace(OmniGen=model.OmniGen, Phi3Config=transformer.Phi3Config,
                                 merge_lora=pipeline.OmniGenPipeline.merge_lora)
