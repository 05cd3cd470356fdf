"""The one error type of the generation command: bad input, reported without a traceback."""

from __future__ import annotations


class GenerationError(ValueError):
    """An input the generation command cannot use; the message names the file or flag and the fix."""
