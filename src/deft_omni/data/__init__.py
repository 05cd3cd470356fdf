"""Data for deft_omni: the shard schema, the OmniGen training processor, webdataset
loaders and the embedded synthetic demo set."""

from .errors import MaskWarning
from .loader import ShardSource, TrainLoader, ValLoader, build_train_loader, build_val_loader
from .read_counts import merge_counts, reduce_counts
from .shard_reader import ShardReadError
from .processor import (
    CFG_INSTRUCTION,
    OmniGenTrainProcessor,
    ProcessedSample,
    build_attention_mask,
    collate_processed,
    fit_image,
    image_to_tensor,
    num_image_tokens,
    prompt_for,
)
from .schema import (
    ManifestError,
    Sample,
    SampleError,
    ShardSet,
    ShardSetWriter,
    check_image_tags,
    make_sample,
    parse_sample,
    read_manifest,
    write_manifest,
)
from .synthetic import make_synthetic_shards

__all__ = [
    "CFG_INSTRUCTION",
    "ManifestError",
    "MaskWarning",
    "OmniGenTrainProcessor",
    "ProcessedSample",
    "Sample",
    "SampleError",
    "ShardReadError",
    "ShardSet",
    "ShardSetWriter",
    "ShardSource",
    "TrainLoader",
    "ValLoader",
    "build_attention_mask",
    "build_train_loader",
    "build_val_loader",
    "check_image_tags",
    "collate_processed",
    "fit_image",
    "image_to_tensor",
    "make_sample",
    "make_synthetic_shards",
    "merge_counts",
    "num_image_tokens",
    "parse_sample",
    "prompt_for",
    "read_manifest",
    "reduce_counts",
    "write_manifest",
]
