"""The error every adapter-folder reader raises for a file it cannot use."""


class AdapterLoadError(ValueError):
    """An adapter folder that cannot be applied to this model (names the file and the fix)."""
