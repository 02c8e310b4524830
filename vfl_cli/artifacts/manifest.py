"""The signed manifest: its JSON form and the strict rules every field must follow.

A manifest arrives from outside, so it is checked before anything in it is used: its size and
nesting are bounded, it must be canonical JSON (so there is one byte form for one content and no
duplicate keys), every field has one type, and every name in it (kind, job, step, sender,
recipient, member names) matches :data:`vfl_cli.names.NAME_PATTERN`, so no received string is
ever a path, a newline or an escape code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

from vfl_cli.artifacts.io import canonical_json
from vfl_cli.crypto import sealing
from vfl_cli.errors import VflError
from vfl_cli.names import check_kind, check_name, is_name

FORMAT = "vfl-artifact"
#: 2: payload members sealed to the recipient and sender. 1 (members in clear) is refused.
VERSION = 2
MAX_MANIFEST_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_MEMBERS = 64
_MAX_INT = 2**31 - 1
#: No zip64: a member, like the whole file, stays under 4 GiB.
MAX_TOTAL_BYTES = 0xFFFFFFFF

#: Member types and whether their values are encrypted, blinded or masked (never plaintext data)
#: even for their recipient. Every member, whatever its type, also travels sealed.
MEMBER_TYPES: dict[str, str] = {
    "ndarray": "plaintext array",
    "paillier": "Paillier ciphertexts",
    "points": "blinded X25519 points",
    "masked": "masked integers",
}
FIELDS = frozenset({"format", "version", "kind", "job", "seq", "step", "round", "sender", "sender_key",
                    "recipient", "created", "nonce", "meta", "members", "sealed"})
MEMBER_FIELDS = frozenset({"file", "type", "encrypted", "sha256", "size"})
SEALED_FIELDS = frozenset({"cipher", "key_commitment", "to_recipient", "to_sender"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_SEALED_KEY = re.compile(f"[0-9a-f]{{{2 * sealing.SEALED_KEY_BYTES}}}")
_CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")

Fail = Callable[[str], Exception]


def member_file(name: str, type_: str) -> str:
    """The one zip entry name of a member: ``payload/<name>.npy.sealed`` or ``.bin.sealed``."""
    return f"payload/{name}.{'npy' if type_ == 'ndarray' else 'bin'}.sealed"


def load(raw: bytes, fail: Fail) -> dict[str, Any]:
    """Parse manifest bytes: bounded size and depth, canonical JSON, then every field checked."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise fail(f"manifest of {len(raw):,} bytes exceeds the {MAX_MANIFEST_BYTES:,}-byte limit")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise fail(f"manifest nests deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"manifest is not valid JSON ({type(exc).__name__})") from None
    if depth(obj) > MAX_DEPTH:
        raise fail(f"manifest nests deeper than {MAX_DEPTH} levels")
    if canonical_json(obj) != raw:
        raise fail("manifest is not in canonical form (duplicate keys, spacing or order changed)")
    check(obj, fail)
    return obj  # type: ignore[no-any-return]  # check() proved it is a dict


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion; stops past :data:`MAX_DEPTH`."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        if isinstance(value, dict):
            stack.extend((v, d + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, d + 1) for v in value)
    return deepest


def check(m: Any, fail: Fail) -> None:
    """Check every manifest field's presence, type and form; raise ``fail(reason)`` if one is off."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise fail("not a vfl artifact (wrong format field)")
    _check_version(m.get("version"), fail)
    if m.keys() != FIELDS:
        missing, extra = sorted(FIELDS - m.keys()), sorted(m.keys() - FIELDS)
        raise fail(f"manifest fields wrong: missing {missing}, unexpected {[_short(k) for k in extra]}")
    _field(fail, "kind", check_kind, m["kind"])
    for key, what in (("job", "job id"), ("step", "step name"), ("sender", "sender name"),
                      ("recipient", "recipient name")):
        _field(fail, key, partial(check_name, what=what), m[key])
    for key in ("seq", "round"):
        if type(m[key]) is not int or not 0 <= m[key] <= _MAX_INT:
            raise fail(f"manifest field {key!r} must be an integer from 0 to {_MAX_INT}")
    for key, pattern in (("sender_key", _HEX64), ("nonce", _HEX32), ("created", _CREATED)):
        if not isinstance(m[key], str) or not pattern.fullmatch(m[key]):
            raise fail(f"manifest field {key!r} is not in its fixed form")
    if not isinstance(m["meta"], dict):
        raise fail("manifest field 'meta' must be an object")
    _check_members(m["members"], fail)
    _check_sealed(m["sealed"], fail)


def _check_version(version: Any, fail: Fail) -> None:
    if type(version) is int and version == VERSION:
        return
    if type(version) is int and version == 1:
        raise fail(f"format version 1 (payload members in clear) is no longer read; this vfl reads "
                   f"version {VERSION}, whose payloads are sealed to their recipient: ask the sender "
                   "to upgrade vfl and send the step again")
    raise fail(f"format version {_short(version)} is not supported (this vfl reads version "
               f"{VERSION}); upgrade vfl on both sides")


def _field(fail: Fail, key: str, checker: Callable[[Any], str], value: Any) -> None:
    try:
        checker(value)
    except VflError as exc:
        raise fail(f"manifest field {key!r}: {exc}") from None


def _check_members(members: Any, fail: Fail) -> None:
    if not isinstance(members, dict) or len(members) > MAX_MEMBERS:
        raise fail(f"manifest field 'members' must be an object of at most {MAX_MEMBERS} members")
    for name, desc in members.items():
        _field(fail, "members", lambda v: check_name(v, "member name"), name)
        if not isinstance(desc, dict) or not desc.keys() >= MEMBER_FIELDS:
            raise fail(f"member {name!r} lacks one of {sorted(MEMBER_FIELDS)}")
        type_ = desc["type"]
        if not isinstance(type_, str) or type_ not in MEMBER_TYPES:
            raise fail(f"member {name!r} has unknown type {_short(type_)}")
        if desc["file"] != member_file(name, type_) or desc["encrypted"] is not (type_ != "ndarray"):
            raise fail(f"member {name!r} has a file name or 'encrypted' flag other than its type's")
        if not isinstance(desc["sha256"], str) or not _HEX64.fullmatch(desc["sha256"]):
            raise fail(f"member {name!r} has no valid SHA-256")
        size = desc["size"]
        if type(size) is not int or not sealing.OVERHEAD <= size <= MAX_TOTAL_BYTES:
            raise fail(f"member {name!r} declares an impossible size")
        _check_info(name, {k: v for k, v in desc.items() if k not in MEMBER_FIELDS}, fail)


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_INT


#: The member fields protocols read, each with its one form; other fields must have name keys.
_INFO_FORMS: dict[str, Callable[[Any], bool]] = {
    "shape": lambda v: isinstance(v, list) and len(v) <= 8 and all(_count(x) for x in v),
    "count": _count,
    "width": _count,
    "slots": _count,
    "slot_bits": _count,
    "exponent": lambda v: type(v) is int and abs(v) <= _MAX_INT,
    "key_id": lambda v: isinstance(v, str) and _HEX64.fullmatch(v) is not None,
    "dtype": lambda v: isinstance(v, str) and len(v) <= 32 and v.isascii() and v.isprintable(),
    "packed": lambda v: isinstance(v, dict),
}


def _check_info(name: str, info: dict[str, Any], fail: Fail) -> None:
    for key, value in info.items():
        if not is_name(key):
            raise fail(f"member {name!r} has a field name that is not allowed: {_short(key)}")
        form = _INFO_FORMS.get(key)
        if form is not None and not form(value):
            raise fail(f"member {name!r}: field {key!r} is not in its form ({_short(value)})")


def _check_sealed(sealed: Any, fail: Fail) -> None:
    if not isinstance(sealed, dict) or sealed.keys() != SEALED_FIELDS:
        raise fail(f"manifest field 'sealed' must hold exactly {sorted(SEALED_FIELDS)}")
    if sealed["cipher"] != sealing.CIPHER:
        raise fail(f"payload cipher {_short(sealed['cipher'])} is not supported ({sealing.CIPHER} is)")
    if not isinstance(sealed["key_commitment"], str) or not _HEX64.fullmatch(sealed["key_commitment"]):
        raise fail("manifest field 'sealed.key_commitment' is not in its fixed form")
    for key in ("to_recipient", "to_sender"):
        if not isinstance(sealed[key], str) or not _SEALED_KEY.fullmatch(sealed[key]):
            raise fail(f"manifest field 'sealed.{key}' is not a sealed content key")


def _short(value: Any) -> str:
    """A received value for an error message: escaped by ``repr`` and at most 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
