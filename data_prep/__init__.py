"""Converters from the public data sets' own layouts to deft_omni shards.

Each converter (OmniGen JSONL, InsDet, VisualCloze/Graph200K, COLMAP SfM, DreamBooth,
DreamBench++) is a module or package here with a CLI (``python -m data_prep.<name>``) and a
`make prepare-*` target; all of them write through `deft_omni.data.schema` (sample schema +
manifest), which is the contract the training loader reads.  What they share:

* ``conversion``: one run (output folder, shard writer, workers, --strict, progress, summary);
* ``output``: the output folder, absent or complete (deft_omni.core.atomic);
* ``pool``: the ordered process pool behind --workers;
* ``images``: decode-checked image reading; ``text``: keys and caption words;
* ``cli``: the shared options and error handling; ``errors``: the fatal errors.

``python -m data_prep.summary SHARDS...`` looks at a converted set before training (counts,
sizes, lengths, duplicates, tag mismatches, a contact sheet); see docs/data.md.
"""
