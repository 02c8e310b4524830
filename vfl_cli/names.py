"""The one rule for names that arrive from outside: party names, job ids, kinds, member names.

A name read from a file or typed on the command line is data, never a path: it is checked
against one strict pattern wherever it enters (card import, proposal, manifest, CLI option), so
no received string can hold a ``/``, ``..``, a NUL, a newline, an escape code or rich markup.
"""

from __future__ import annotations

import re

from vfl_cli.errors import VflError

#: 1-32 characters: lowercase ASCII letters, digits, '-' and '_', starting with a letter or digit.
NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,31}"
#: A kind is 1-3 names joined by '/', e.g. ``psi/start`` or ``vfl/job-proposal``.
KIND_PATTERN = rf"{NAME_PATTERN}(?:/{NAME_PATTERN}){{0,2}}"

NAME_RE = re.compile(NAME_PATTERN)
KIND_RE = re.compile(KIND_PATTERN)

_RULE = "use 1-32 lowercase letters, digits, '-' or '_', starting with a letter or digit"


def _shown(value: object) -> str:
    """``repr`` of at most 40 characters: escapes newlines and escape codes, bounds the length."""
    text = value if isinstance(value, str) else str(type(value).__name__)
    return repr(text[:40]) + ("…" if len(text) > 40 else "")


def is_name(value: object) -> bool:
    """Whether ``value`` is a string that matches :data:`NAME_PATTERN` exactly."""
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def check_name(value: object, what: str = "party name") -> str:
    """Return ``value`` if it is a valid name.

    Args:
        value: the received or typed value.
        what: what the value is, for the message ("party name", "job id", "member name").

    Raises:
        VflError: naming ``what``, the (escaped, shortened) value and the rule.
    """
    if not (isinstance(value, str) and NAME_RE.fullmatch(value)):
        raise VflError(f"{what} {_shown(value)} is not allowed: {_RULE}")
    return value


def check_kind(value: object, what: str = "kind") -> str:
    """Return ``value`` if it is 1-3 valid names joined by '/'; raise :class:`VflError` if not."""
    if not (isinstance(value, str) and KIND_RE.fullmatch(value)):
        raise VflError(f"{what} {_shown(value)} is not allowed: {_RULE}, joined by '/'")
    return value
