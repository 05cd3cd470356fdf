"""The shapes world: procedural scenes with known ground truth, a deterministic judge, and a
small VAE for them (issue 12)."""
