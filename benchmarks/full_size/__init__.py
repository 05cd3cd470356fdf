"""How much GPU memory and time full-size OmniGen training takes, before anyone rents a GPU.

Measure what fits on two CPU cores, compute the rest:

* :mod:`.arch`: OmniGen-v1's real architecture from random weights (hidden 3072, 32 heads,
  intermediate 8192, vocabulary 32064, longrope with its 48 factors), exact parameter counts,
  matmul FLOPs;
* :mod:`.case` / :mod:`.measure` / :mod:`.tracking`: real training steps of 1-2 full-width blocks
  through the project's own code (backbone loss, processor + collate, adapters, AdamW), memory
  counted as live tensor bytes (per block, per phase) and peak RSS;
* :mod:`.trace`: the same step replayed on fake tensors (no allocation, exact bytes), for all 32
  blocks and for SDXL's VAE;
* :mod:`.fit` / :mod:`.matrix`: the case matrices and the fitted a*S + b*S^2 coefficients;
* :mod:`.predict`: the GPU peak as a sum of measured, traced and computed terms, and the step cost;
* :mod:`.cards` / :mod:`.report`: recommendations per card, the public figures, the tables;
* :mod:`.gpu_check`: the script that measures the same on a GPU (``--tiny`` runs it on CPU).

``python -m benchmarks.full_size --help``.
"""
