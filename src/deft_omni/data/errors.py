"""The data package's errors: each names the sample (or file), the field and the fix."""

from __future__ import annotations


class SampleError(ValueError):
    """A sample that cannot be used; names the key, the shard, the field and the fix."""

    def __init__(self, message: str, *, key: str | None = None, url: str | None = None,
                 field: str | None = None, fix: str | None = None):
        self.key, self.url, self.field, self.fix = key, url, field, fix
        self.reason = message
        where = f"sample {key!r}" if key is not None else "sample"
        if url:
            where += f" in shard {url!r}"
        if field:
            where += f", field {field!r}"
        text = f"{where}: {message}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class ManifestError(ValueError):
    """A missing, unreadable or inconsistent manifest.json."""


class MaskWarning(UserWarning):
    """An output mask that is valid but weights nothing out (every pixel foreground)."""
