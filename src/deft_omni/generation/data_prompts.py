"""Progress-grid prompts taken from the user's own data: a few samples of a shard set, with their
input images and their real output as a reference, at fixed seeds (the same every run)."""

from __future__ import annotations

import warnings
from typing import Any

import webdataset as wds

from ..data.errors import SampleError
from ..data.processor import fit_image
from ..data.schema import ShardSet, parse_sample
from .sampler import SamplePrompt


def prompts_from_shards(path: Any, n: int, max_image_side: int) -> list[SamplePrompt]:
    """The first ``n`` readable samples of a shard set (shards in manifest order, no shuffling) as
    :class:`SamplePrompt` objects sized like the processor would size their outputs."""
    prompts: list[SamplePrompt] = []
    if n <= 0:
        return prompts
    stream = wds.WebDataset(ShardSet.resolve(path).urls, shardshuffle=False, empty_check=False,
                            handler=wds.warn_and_continue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for raw in stream:
            try:
                sample = parse_sample(raw)
                stored_output, inputs = sample.stored_size_images()  # thumbnails enlarged if pixels were dropped
                output = fit_image(stored_output, max_image_side)
            except (SampleError, ValueError):
                continue
            prompts.append(SamplePrompt(instruction=sample.instruction,
                                        input_images=[im.convert("RGB") for im in inputs],
                                        height=output.height, width=output.width, seed=len(prompts),
                                        reference=output))
            if len(prompts) == n:
                break
    return prompts
