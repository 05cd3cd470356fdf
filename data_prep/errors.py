"""The converters' fatal errors: each message says what is wrong and how to fix it."""

from __future__ import annotations


class ConversionError(Exception):
    """A fatal problem with the inputs or the output; the message says what and how to fix it."""


class OutputExistsError(ConversionError):
    """The output folder already holds something and --overwrite was not given."""


class StrictError(ConversionError):
    """--strict turned a skip into an error."""
