"""Reading a party's CSV file as users have it: Excel's UTF-8 BOM, ``;`` with decimal commas,
quoted headers, CRLF line ends.

The format is detected from the first 64 KiB of the file, or given (``vfl init --sep ';'
--decimal ','``, kept in vfl.json). Detection never guesses: when two separators both give a
consistent table, or numbers are written with both decimal marks, the error says which option
settles it. Ids are always read as text, exactly as written (``007`` stays ``007``).

Every problem with the file raises :class:`DataError` naming the file and the fix; nothing
else escapes (a malformed file is a user mistake, not a bug).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfl_cli.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

SEPARATORS = (",", ";", "\t", "|")
DECIMALS = (".", ",")
SAMPLE_BYTES = 64 * 1024
_SEP_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
_COMMA_NUMBER = re.compile(r"^\s*[+-]?\d*,\d+(?:[eE][+-]?\d+)?\s*$")
_DOT_NUMBER = re.compile(r"^\s*[+-]?\d*\.\d+(?:[eE][+-]?\d+)?\s*$")
#: numbers with digit groups and a decimal part: "1.234,56" (decimal comma), "1,234.56" (decimal point)
_GROUPED = {",": re.compile(r"^\s*[+-]?\d{1,3}(?:\.\d{3})+,\d+\s*$"),
            ".": re.compile(r"^\s*[+-]?\d{1,3}(?:,\d{3})+\.\d+\s*$")}


@dataclass(frozen=True)
class CsvFormat:
    """How a CSV file is written: field separator, decimal mark and text encoding."""

    sep: str = ","
    decimal: str = "."
    encoding: str = "utf-8"
    #: digit grouping mark, detected from numbers written as displayed ("1.234,56", "1,234.56")
    thousands: str | None = None

    def describe(self) -> str:
        encoding = "UTF-8" if self.encoding in ("utf-8", "utf-8-sig") else self.encoding
        return f"separator {_SEP_NAMES.get(self.sep, repr(self.sep))}, decimal mark {self.decimal!r}, {encoding}"


def near(name: str, columns: list[str]) -> str:
    """' (did you mean 'x'?)' for a misspelt, mis-cased or padded column name, else ''."""
    folded = {c.strip().lower(): c for c in columns}
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.5)
    match = folded.get(name.strip().lower()) or (close[0] if close else None)
    return f" (did you mean {match!r}?)" if match else ""


def check_options(sep: str | None = None, decimal: str | None = None, encoding: str | None = None) -> dict[str, str]:
    """The format options a user gave, checked; what vfl.json keeps (only the ones given)."""
    out: dict[str, str] = {}
    if sep is not None:
        sep = "\t" if sep in ("\\t", "tab", "TAB") else sep
        if sep not in SEPARATORS:
            raise DataError(f"--sep must be one of ',', ';', tab ('\\t') or '|', not {sep!r}")
        out["sep"] = sep
    if decimal is not None:
        if decimal not in DECIMALS:
            raise DataError(f"--decimal must be '.' or ',', not {decimal!r}")
        out["decimal"] = decimal
    if sep == "," and decimal == ",":
        raise DataError("--decimal ',' needs another separator than ','; give --sep ';' (Excel's choice)")
    if encoding is not None:
        try:
            out["encoding"] = codecs.lookup(encoding).name
        except LookupError as exc:
            raise DataError(f"--encoding {encoding!r} is not a known text encoding (e.g. utf-8, cp1252)") from exc
    return out


def _sample(path: Path, encoding: str | None) -> tuple[str, str, bool]:
    """The first lines of ``path`` as text, the encoding used, and whether that is the whole file."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        with path.open("rb") as fh:
            head = fh.read(SAMPLE_BYTES + 1)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc
    whole = len(head) <= SAMPLE_BYTES
    head = head[:SAMPLE_BYTES]
    if encoding is None:
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            encoding = "utf-16"  # Excel's "Unicode Text"
        else:
            encoding = "utf-8-sig"  # a BOM (Excel's "CSV UTF-8") is dropped, not read as part of a name
    try:
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=whole)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not {encoding.removesuffix('-sig').upper()} text (byte {exc.start + 1}); save it as "
            "'CSV UTF-8', or give its encoding (e.g. --encoding cp1252 for Excel's plain 'CSV' on Windows)"
        ) from exc
    if not whole:  # the last line may be cut in the middle
        text = text[: text.rfind("\n") + 1] if "\n" in text else text
    if not text.strip():
        raise DataError(f"{path} is empty; it needs a header row and data rows")
    return text, encoding, whole


def _rows(text: str, sep: str) -> list[list[str]]:
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, skipinitialspace=True)
        return [r for r in reader if r and any(c.strip() for c in r)]
    except csv.Error:
        return []


def _detect_sep(path: Path, text: str) -> str:
    widths = {}
    for sep in SEPARATORS:
        rows = _rows(text, sep)
        if rows and len({len(r) for r in rows}) == 1 and len(rows[0]) > 1:
            widths[sep] = len(rows[0])
    if len(widths) == 1:
        return next(iter(widths))
    if not widths:  # one column, or rows of different lengths: the reader says which row
        header_widths = {sep: len(next(iter(_rows(text, sep)), [])) for sep in SEPARATORS}
        return max(SEPARATORS, key=lambda s: (header_widths[s], s == ","))
    found = ", ".join(f"{_SEP_NAMES[s]} gives {n} columns" for s, n in widths.items())
    options = " or ".join("--sep " + ("'\\t'" if s == "\t" else repr(s)) for s in widths)
    raise DataError(f"cannot tell how the columns of {path} are separated ({found}); give {options} to vfl init")


def _detect_thousands(path: Path, text: str, sep: str) -> tuple[str, str] | None:
    """(decimal mark, grouping mark) when numbers are written with digit groups, else None."""
    cells = [c for r in _rows(text, sep)[1:] for c in r]
    found = {d: next((c for c in cells if rx.match(c)), None) for d, rx in _GROUPED.items()}
    if found[","] is not None and found["."] is not None:
        raise DataError(f"{path} writes numbers with digit groups both ways ({found[','].strip()!r} and "
                        f"{found['.'].strip()!r}); save the numbers without digit grouping")
    for decimal, cell in found.items():
        if cell is None or (sep == "," and decimal == ","):
            continue
        group = "." if decimal == "," else ","
        # any other number with the grouping mark must be grouped too ("12.5" beside "1.234,5" is
        # not a number pandas could read right either way)
        other = _DOT_NUMBER if decimal == "," else _COMMA_NUMBER
        grouped_int = re.compile(rf"^\s*[+-]?\d{{1,3}}(?:{re.escape(group)}\d{{3}})+\s*$")
        odd = next((c for c in cells if other.match(c) and not grouped_int.match(c)), None)
        if odd is not None:
            raise DataError(f"{path} writes some numbers with digit groups ({cell.strip()!r}) and others that "
                            f"would read differently with them ({odd.strip()!r}); save the numbers without "
                            "digit grouping")
        return decimal, group
    return None


def _detect_decimal(path: Path, text: str, sep: str) -> str:
    if sep == ",":
        return "."
    cells = [c for r in _rows(text, sep)[1:] for c in r]
    comma = next((c for c in cells if _COMMA_NUMBER.match(c)), None)
    dot = next((c for c in cells if _DOT_NUMBER.match(c)), None)
    if comma is not None and dot is not None:
        raise DataError(f"{path} writes numbers with both decimal marks ({comma.strip()!r} and {dot.strip()!r}); "
                        "give --decimal ',' or --decimal '.' to vfl init")
    return "," if comma is not None else "."


def detect_format(path: Path, *, sep: str | None = None, decimal: str | None = None,
                  encoding: str | None = None) -> CsvFormat:
    """The format of ``path``: what is given, the rest detected from its first 64 KiB.

    Raises:
        DataError: the file is missing, empty, not text in its encoding, or its format is ambiguous.
    """
    check_options(sep, decimal, encoding)
    if sep == "\\t":
        sep = "\t"
    text, enc, _ = _sample(path, encoding)
    sep = sep or _detect_sep(path, text)
    grouped = _detect_thousands(path, text, sep)
    if grouped is not None and decimal in (None, grouped[0]):
        return CsvFormat(sep=sep, decimal=grouped[0], encoding=enc, thousands=grouped[1])
    return CsvFormat(sep=sep, decimal=decimal or _detect_decimal(path, text, sep), encoding=enc)


def read_header(path: Path, **options: Any) -> list[str]:
    """The column names of ``path`` (surrounding spaces and quotes removed), checked for blanks and repeats."""
    fmt = detect_format(path, **options)
    text, _, _ = _sample(path, fmt.encoding)
    rows = _rows(text, fmt.sep)
    if not rows:
        raise DataError(f"{path} is not a readable CSV: its header row cannot be parsed")
    names = [c.strip() for c in rows[0]]
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"column {i + 1} of {path} has no name in the header row; name it or delete it")
        if name in names[:i]:
            raise DataError(f"column name {name!r} appears twice in the header of {path}; rename one")
    return names


def read_table(path: Path, id_column: str, **options: Any) -> pd.DataFrame:
    """Read a CSV with the id column as text (ids are strings, never numbers).

    Empty cells (and only empty cells) are missing values; numbers are parsed with the file's
    decimal mark.

    Raises:
        DataError: the file cannot be read as a table, or has no column ``id_column``.
    """
    fmt, names = _table_layout(path, id_column, options)
    with _read_errors(path, fmt, len(names)):
        df = _read_csv(path, fmt, names, id_column)
    df[id_column] = df[id_column].fillna("").astype(str)
    return df


def read_table_chunks(path: Path, id_column: str, rows: int, **options: Any) -> Iterator[tuple[int, pd.DataFrame]]:
    """:func:`read_table` ``rows`` rows at a time: ``(first, frame)`` with ``first`` the number
    of data rows before the frame (its index counts from ``first``), never the whole file.

    Each chunk's columns are typed from that chunk alone (a column of numbers with one text cell
    is text only in the chunk that holds it); cells read as in :func:`read_table`.

    Raises:
        DataError: as :func:`read_table`, when the chunk with the problem is reached.
    """
    fmt, names = _table_layout(path, id_column, options)
    with _read_errors(path, fmt, len(names)):
        reader = _read_csv(path, fmt, names, id_column, chunksize=max(1, rows))
        with reader:
            for frame in reader:
                frame[id_column] = frame[id_column].fillna("").astype(str)
                yield int(frame.index[0]) if len(frame) else 0, frame


def _table_layout(path: Path, id_column: str, options: dict[str, Any]) -> tuple[CsvFormat, list[str]]:
    fmt = detect_format(path, **options)
    names = read_header(path, sep=fmt.sep, decimal=fmt.decimal, encoding=fmt.encoding)
    if id_column not in names:
        raise DataError(f"{path} has no id column {id_column!r}{near(id_column, names)}; its columns are: "
                        f"{', '.join(names[:12])}")
    return fmt, names


def _read_csv(path: Path, fmt: CsvFormat, names: list[str], id_column: str, **more: Any) -> Any:
    import pandas as pd

    return pd.read_csv(path, sep=fmt.sep, decimal=fmt.decimal, thousands=fmt.thousands,
                       encoding=fmt.encoding, header=0,
                       names=names, index_col=False, dtype={id_column: str}, keep_default_na=False,
                       na_values=[""], skipinitialspace=True, engine="c", **more)


@contextlib.contextmanager
def _read_errors(path: Path, fmt: CsvFormat, columns: int) -> Iterator[None]:
    """pandas' errors reading ``path`` as DataError naming the file and the fix."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            # rows longer than the header would otherwise lose their last cells silently
            warnings.simplefilter("error", pd.errors.ParserWarning)
            yield
    except pd.errors.ParserWarning as exc:
        raise DataError(f"{path} has rows with more cells than its header has names ({columns}, "
                        f"{fmt.describe()}); name every column, or give the right --sep") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not {fmt.encoding} text further down (byte {exc.start + 1}); "
                        "save it as 'CSV UTF-8'") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, csv.Error, OSError) as exc:
        raise DataError(f"{path} is not a readable CSV ({fmt.describe()}): {str(exc).strip()}") from exc
