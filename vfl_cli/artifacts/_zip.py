"""The one canonical zip layout of an artifact, written and read byte for byte.

``zipfile`` is not used to read: it would parse whatever a crafted file declares (thousands of
entries, compressed members, zip64 records) before anything is checked. This reader accepts one
layout only and checks every header byte against it, walking a bounded number of entries:

- stored entries only (method 0, nothing is ever decompressed), compressed size = size;
- fixed version, flags, time (1980-01-01), attributes (0644 regular file), no extra fields, no
  comments, no zip64, one disk;
- entries back to back from offset 0, then the central directory, then the end record;
- each entry's CRC-32 matches its bytes.

Any standard tool (``unzip``, Python's ``zipfile``) reads the files this module writes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
_LOCAL_SIG, _CENTRAL_SIG, _END_SIG = 0x04034B50, 0x02014B50, 0x06054B50
_VERSION = 20  # 2.0: stored entries, no zip64
_MADE_BY = (3 << 8) | _VERSION  # Unix
_DOS_TIME, _DOS_DATE = 0, (1 << 5) | 1  # 1980-01-01 00:00:00
_ATTR = 0o100644 << 16  # a regular file, rw-r--r--
#: No zip64 records: every offset and size fits in 32 bits.
MAX_TOTAL = 0xFFFFFFFF

Fail = Callable[[str], Exception]


@dataclass(frozen=True)
class Entry:
    """One zip entry as read: its name and a view of its bytes inside the file (no copy)."""

    name: str
    content: memoryview

    @property
    def size(self) -> int:
        return len(self.content)


def _local(name: bytes, crc: int, size: int) -> bytes:
    return _LOCAL.pack(_LOCAL_SIG, _VERSION, 0, 0, _DOS_TIME, _DOS_DATE, crc, size, size, len(name), 0) + name


def pack(entries: list[tuple[str, bytes]]) -> bytes:
    """The canonical zip bytes of ``entries`` (name, content), in the order given.

    Raises:
        ValueError: if the result would need zip64 (over 4 GiB).
    """
    parts: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for name, data in entries:
        raw = name.encode("ascii")
        crc = zlib.crc32(data)
        central.append(_CENTRAL.pack(_CENTRAL_SIG, _MADE_BY, _VERSION, 0, 0, _DOS_TIME, _DOS_DATE, crc,
                                     len(data), len(data), len(raw), 0, 0, 0, 0, _ATTR, offset) + raw)
        parts += [_local(raw, crc, len(data)), data]
        offset += _LOCAL.size + len(raw) + len(data)
        if offset > MAX_TOTAL:
            raise ValueError("an artifact cannot exceed 4 GiB")
    directory = b"".join(central)
    end = _END.pack(_END_SIG, 0, 0, len(entries), len(entries), len(directory), offset, 0)
    return b"".join([*parts, directory, end])


def unpack(data: bytes | bytearray, *, max_entries: int, fail: Fail) -> list[Entry]:
    """The entries of a canonical artifact zip, refusing anything else before reading content.

    Work is bounded before any content is touched: at most ``max_entries`` directory records of
    fixed size are parsed, and nothing is copied (entries are views into ``data``).

    Raises:
        The exception ``fail(reason)`` returns, for any departure from the canonical layout.
    """
    view = memoryview(data)
    total = len(view)
    if total < _END.size or total > MAX_TOTAL:
        raise fail("not a vfl artifact (too short or too long to be one)")
    sig, disk, cd_disk, n_disk, count, cd_size, cd_offset, comment = _END.unpack_from(view, total - _END.size)
    if sig != _END_SIG or disk or cd_disk or comment or n_disk != count:
        raise fail("not a vfl artifact (no canonical zip end record)")
    if not 2 <= count <= max_entries:
        raise fail(f"holds {count} zip entries; an artifact holds 2 to {max_entries}")
    if cd_offset + cd_size != total - _END.size:
        raise fail("damaged zip directory (not where the end record says)")
    records = _directory(view, cd_offset, count, fail)
    return [_entry(view, name, crc, size, offset, fail) for name, crc, size, offset in records]


def _directory(view: memoryview, start: int, count: int, fail: Fail) -> list[tuple[str, int, int, int]]:
    """Parse ``count`` central directory records at ``start``: (name, crc, size, offset) each."""
    end = len(view) - _END.size
    pos, expected_offset, records = start, 0, []
    for i in range(count):
        if pos + _CENTRAL.size > end:
            raise fail("damaged zip directory (truncated)")
        (sig, made_by, version, flags, method, time, date, crc, csize, usize, nlen, xlen, clen, disk,
         iattr, eattr, offset) = _CENTRAL.unpack_from(view, pos)
        if sig != _CENTRAL_SIG:
            raise fail("damaged zip directory (bad record signature)")
        if method != 0:
            raise fail(f"zip entry {i + 1} is compressed (method {method}); artifacts hold only "
                       "stored entries and nothing is ever decompressed")
        canonical = (made_by, version, flags, time, date, xlen, clen, disk, iattr, eattr, csize) == (
            _MADE_BY, _VERSION, 0, _DOS_TIME, _DOS_DATE, 0, 0, 0, 0, _ATTR, usize)
        if not canonical or offset != expected_offset or nlen > 255 or pos + _CENTRAL.size + nlen > end:
            raise fail(f"zip directory record {i + 1} is not canonical (altered outside the signed content)")
        try:
            name = bytes(view[pos + _CENTRAL.size : pos + _CENTRAL.size + nlen]).decode("ascii")
        except UnicodeDecodeError:
            raise fail(f"zip entry {i + 1} has a name that is not ASCII") from None
        records.append((name, crc, usize, offset))
        pos += _CENTRAL.size + nlen
        expected_offset = offset + _LOCAL.size + nlen + usize
        if expected_offset > start:
            raise fail(f"zip entry {i + 1} declares {usize} bytes, more than the file holds")
    if pos != end or expected_offset != start:
        raise fail("damaged zip directory (entries and directory do not tile the file)")
    return records


def _entry(view: memoryview, name: str, crc: int, size: int, offset: int, fail: Fail) -> Entry:
    header = _local(name.encode("ascii"), crc, size)
    if view[offset : offset + len(header)] != header:
        raise fail(f"zip header of entry {name!r} is not canonical (altered outside the signed content)")
    content = view[offset + len(header) : offset + len(header) + size]
    if zlib.crc32(content) != crc:
        raise fail(f"zip entry {name!r} does not match its CRC-32 (damaged)")
    return Entry(name, content)
