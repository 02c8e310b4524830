"""Atomic, never-overwriting file writes, and bounded reads of untrusted files."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from vfl_cli.errors import InvalidArtifact, OutputExists

_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def shown_path(path: Path | str) -> str:
    """``path`` for a message: as is when printable, else escaped by ``repr`` (a received file's
    name may hold newlines or escape codes meant for the terminal)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def read_regular(path: Path, *, max_bytes: int, limit: str | None = None) -> bytearray:
    """Read an untrusted file: a regular file only, at most ``max_bytes``, without blocking.

    ``limit`` names where the cap comes from in the message for a file over it (a workspace
    setting and how to change it); by default "the N-byte limit for an artifact".

    The file is opened without following a final symlink and without waiting for a FIFO's
    writer; what it is and its size are checked on the open descriptor (``fstat``) before a
    byte is read, and no more than its size plus one byte is ever read.

    Raises:
        InvalidArtifact: naming the file: a symlink, FIFO, device, folder, too large, unreadable.
    """
    shown = shown_path(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidArtifact(f"{shown}: is a symbolic link; only regular files are read "
                                  "(copy the file itself)") from None
        raise InvalidArtifact(f"{shown}: cannot read: {exc.strerror}") from None
    try:
        return _read_fd(fd, shown, max_bytes, limit)
    finally:
        os.close(fd)


def _read_fd(fd: int, shown: str, max_bytes: int, limit: str | None = None) -> bytearray:
    st = os.fstat(fd)
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise InvalidArtifact(f"{shown}: is a {kind}, not a regular file; it is not read")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArtifact(f"{shown}: is not a regular file; it is not read")
    if st.st_size > max_bytes:
        raise InvalidArtifact(f"{shown}: {st.st_size:,} bytes exceeds "
                              + (limit or f"the {max_bytes:,}-byte limit for an artifact"))
    buf = bytearray(st.st_size)
    view, done = memoryview(buf), 0
    try:
        while done < st.st_size:
            n = os.readv(fd, [view[done:]])
            if n == 0:
                raise InvalidArtifact(f"{shown}: shrank while it was read; try again when it is complete")
            done += n
        if os.read(fd, 1):
            raise InvalidArtifact(f"{shown}: grew while it was read; try again when it is complete")
    except OSError as exc:
        raise InvalidArtifact(f"{shown}: cannot read: {exc.strerror}") from None
    return buf


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
