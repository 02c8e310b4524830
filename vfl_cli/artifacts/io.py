"""Atomic, never-overwriting file writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vfl_cli.errors import OutputExists


def ensure_writable(path: Path, *, force: bool = False) -> None:
    """Refuse early (before any expensive work) if ``path`` exists and ``force`` is not set."""
    if path.exists() and not force:
        raise OutputExists(f"{path} already exists; choose another name or pass --force")


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; fail if ``path`` already exists.

    The bytes go to a temporary file in the same folder, are fsynced, and are then hard-linked
    into place, which fails instead of replacing an existing file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise OutputExists(f"{path} already exists; it is never overwritten") from None
    finally:
        os.unlink(tmp)


def replace_atomic(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (for state files the tool owns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def canonical_json(obj: Any) -> bytes:
    """The one JSON form that is hashed and signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pretty_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
