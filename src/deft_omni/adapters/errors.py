"""Adapter errors: a folder that cannot be applied, a merge that cannot be done."""


class AdapterLoadError(ValueError):
    """An adapter folder that cannot be applied to this model (names the file and the fix)."""


class QuantizedMergeError(RuntimeError):
    """An adapter cannot be merged into a base whose weights are stored quantised."""
