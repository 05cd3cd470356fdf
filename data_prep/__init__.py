"""Converters from the public data sets' own layouts to deft_omni shards.

Each converter (OmniGen JSONL, InsDet, VisualCloze/Graph200K, COLMAP SfM, DreamBooth,
DreamBench++) is a module here with a CLI and a `make prepare-*` target; all of them write
through `deft_omni.data.schema` (sample schema + manifest), which is the contract the
training loader reads.
"""
