"""Errors caused by user input, artifacts or configuration.

Anything raised as a :class:`VflError` is shown to the user as one ``Error: ...`` line and
exit code 1. Any other exception is a bug and keeps its traceback.
"""


class VflError(Exception):
    """Base for errors caused by user input, artifacts or configuration."""


class InvalidArtifact(VflError):
    """An artifact is malformed, tampered with, or not the one expected now."""


class KeyMismatch(VflError):
    """Data was encrypted or signed under another key than the one at hand."""


class OutputExists(VflError):
    """A file would be overwritten."""


class WorkspaceError(VflError):
    """The workspace is missing, incomplete or inconsistent."""


class DataError(VflError):
    """A party's data file cannot be used as asked (missing column, bad ids, ...)."""


class CryptoError(VflError):
    """A cryptographic operation cannot be done safely (overflow, bad parameters)."""


class EncodingOverflow(CryptoError):
    """A value, sum or packed slot would not fit in the plaintext space."""
