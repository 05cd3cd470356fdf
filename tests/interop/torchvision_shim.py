"""A stand-in for the four torchvision transforms diffusers' OmniGen processor uses -- tests only.

diffusers' ``OmniGenPipeline`` builds its ``OmniGenMultiModalProcessor`` in ``__init__``, and that
module imports it only when torchvision is available; torchvision is not installed beside this
CPU torch.  This shim supplies ``torchvision.transforms.{Compose, Lambda, ToTensor, Normalize}``
(with torchvision's semantics: ``ToTensor`` maps uint8 HWC to float CHW / 255, ``Normalize``
subtracts the mean and divides by the std per channel) and tells diffusers torchvision is there.
Nothing of diffusers is replaced: the pipeline's ``__call__``, its processor, collator, scheduler
and VAE code run unmodified.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

import numpy as np
import torch


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Lambda:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


class ToTensor:
    def __call__(self, pic):
        arr = np.array(pic, dtype=np.uint8, copy=True)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, t):
        t = t if self.inplace else t.clone()
        mean = torch.as_tensor(self.mean, dtype=t.dtype)[:, None, None]
        std = torch.as_tensor(self.std, dtype=t.dtype)[:, None, None]
        return t.sub_(mean).div_(std)


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    mod.__dict__.update(attrs)
    return mod


# What pipeline_omnigen imports besides its processor: imported first, without the shim, so that
# nothing else (transformers' image utilities, diffusers' loaders) ever sees the stand-in.
_DEPENDENCIES = ("diffusers.image_processor", "diffusers.models.autoencoders", "diffusers.models.transformers",
                 "diffusers.schedulers", "diffusers.pipelines.pipeline_utils", "diffusers.loaders.peft")


def omnigen_pipeline_class():
    """diffusers' ``OmniGenPipeline`` class, imported with the shim in place for that import only.

    If diffusers' OmniGen modules were imported before without torchvision, they are re-imported so
    the processor exists.  The shim leaves ``sys.modules`` and diffusers' flag as they were: the
    processor keeps its reference to the stand-in ``transforms``, nothing else sees it."""
    import pytest
    from diffusers.utils import import_utils
    from transformers.utils import import_utils as transformers_imports

    transformers_imports.is_torchvision_available()  # cached (False) before the stand-in exists
    for name in _DEPENDENCIES:
        importlib.import_module(name)
    transforms = _module("torchvision.transforms", Compose=Compose, Lambda=Lambda, ToTensor=ToTensor,
                         Normalize=Normalize)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torchvision", _module("torchvision", transforms=transforms))
        mp.setitem(sys.modules, "torchvision.transforms", transforms)
        mp.setattr(import_utils, "_torchvision_available", True)
        processor = importlib.import_module("diffusers.pipelines.omnigen.processor_omnigen")
        if not hasattr(processor, "transforms"):
            processor = importlib.reload(processor)
        pipeline = importlib.import_module("diffusers.pipelines.omnigen.pipeline_omnigen")
        if not hasattr(pipeline, "OmniGenMultiModalProcessor"):
            pipeline = importlib.reload(pipeline)
    return pipeline.OmniGenPipeline
