"""vfl init's data checks read the file a chunk at a time (issue #17) and say what a whole read said.

Every case is a file of 2,000 rows, larger than the check's chunk (256 rows under a 1MB memory
bound), with one mistake spread over several chunks. The expected messages are the ones the
whole-file check (pandas reading the whole file, before the checks were chunked) gave for these
files, recorded from it; each is checked in chunks of 256 rows and in one chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, run

from vfl_cli import columns, tables
from vfl_cli.columns import check_data, check_rows
from vfl_cli.errors import DataError
from vfl_cli.protocol import psi
from vfl_cli.protocol.psi_stream import Budget

# ----- the files (data row r is body[r - 1]; "c00004" is the id of row 5)

N = 2000


def rows(n: int = N, *, label: bool = True) -> list[list[str]]:
    out = []
    for i in range(n):
        row = [f"c{i:05d}", f"{(i * 37) % 101 / 10:.1f}", str(i % 7)]
        if label:
            row.append(str(i % 2))
        out.append(row)
    return out


def text(header: list[str], body: list[list[str]]) -> str:
    return ",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in body)


H = ["id", "x1", "x2", "y"]


def set_cell(body, row, col, value):
    body[row - 1][col] = value  # row: data row number (1 = first data row)
    return body


def case_empty_ids():
    b = rows()
    for r in (3, 300, 900, 1200, 1500, 1800, 1999):
        set_cell(b, r, 0, "")
    return text(H, b), {}


def case_empty_id_late():
    return text(H, set_cell(rows(), 1900, 0, "  ")), {}


def case_repeated_across_chunks():
    b = rows()
    b[1799][0] = b[4][0]  # row 1800 repeats row 5's id, 6 chunks apart
    return text(H, b), {}


def case_many_repeats():
    b = rows()
    for k in range(8):  # 8 ids repeated; the first one five times
        b[1000 + k][0] = b[10 * k][0]
    for r in (1300, 1600, 1900, 1950):
        b[r - 1][0] = b[0][0]
    b[1700][0] = " " + b[20][0] + " "  # the same id after trimming
    return text(H, b), {}


def case_no_label_column():
    return text(H, rows()), {"label_column": "target"}


def case_text_feature():
    return text(H, set_cell(rows(), 1500, 2, "seven")), {}


def case_two_text_features():
    b = set_cell(rows(), 1700, 2, "n/a")
    set_cell(b, 600, 1, "high")
    set_cell(b, 1900, 1, "low")
    return text(H, b), {}


def case_text_feature_excluded_ok():
    return text(H, set_cell(rows(), 1500, 2, "seven")), {"exclude": ["x2"]}


def case_text_feature_encoded_ok():
    return text(H, set_cell(rows(), 1500, 2, "seven")), {"encode": {"x2": "onehot"}}


def case_empty_labels():
    b = rows()
    for r in (2, 400, 800, 1200, 1600, 1700, 2000):
        set_cell(b, r, 3, "")
    return text(H, b), {}


def case_text_labels_two_values():
    b = rows()
    for i, r in enumerate(b):
        r[3] = "yes" if i < 1500 else "no"
    return text(H, b), {}


def case_text_labels_positive_ok():
    b = rows()
    for i, r in enumerate(b):
        r[3] = "yes" if i < 1500 else "no"
    return text(H, b), {"positive_label": "yes"}


def case_positive_not_a_value():
    b = rows()
    for i, r in enumerate(b):
        r[3] = "yes" if i < 1500 else "no"
    return text(H, b), {"positive_label": "Yes"}


def case_positive_three_values():
    b = rows()
    for i, r in enumerate(b):
        r[3] = "yes" if i < 1500 else "no"
    b[1998][3] = "maybe"
    return text(H, b), {"positive_label": "yes"}


def case_label_many_text_values():
    b = rows()
    for i, r in enumerate(b):
        r[3] = f"class{i % 9}" if i >= 700 else str(i % 2)
    return text(H, b), {}


def case_label_one_text_cell():
    return text(H, set_cell(rows(), 1234, 3, "unknown")), {}


def case_regression_label_ok():
    b = rows()
    for i, r in enumerate(b):
        r[3] = f"{i * 0.37:.2f}"
    return text(H, b), {}


def case_long_row():
    b = rows()
    b[1600].append("9")
    return text(H, b), {}


def case_exclude_unknown():
    return text(H, rows()), {"exclude": ["x9"]}


def case_passive_no_features():
    return text(["id"], [[f"c{i:05d}"] for i in range(N)]), {"role": "passive", "label_column": None}


def case_passive_repeats():
    b = rows(label=False)
    b[1999][0] = b[0][0]
    return text(H[:3], b), {"role": "passive", "label_column": None}


def case_valid():
    return text(H, rows()), {}


def case_valid_semicolon_decimal_comma():
    b = rows()
    return (";".join(H) + "\n" + "".join(";".join([r[0], r[1].replace(".", ","), r[2], r[3]]) + "\n" for r in b)), {}




# ----- two mistakes at once: the one the whole-file check named first
def case_no_label_column_and_repeats():
    b = rows()
    b[1799][0] = b[4][0]
    return text(H, b), {"label_column": "target"}


def case_long_row_and_empty_id():
    b = set_cell(rows(), 3, 0, "")
    b[1600].append("9")
    return text(H, b), {}


def case_repeats_and_text_feature():
    b = set_cell(rows(), 100, 2, "seven")
    b[1799][0] = b[4][0]
    return text(H, b), {}


def case_empty_id_and_repeats():
    b = set_cell(rows(), 1900, 0, "")
    b[1799][0] = b[4][0]
    return text(H, b), {}


def case_text_feature_and_empty_label():
    return text(H, set_cell(set_cell(rows(), 1500, 2, "seven"), 20, 3, "")), {}


#: what the whole-file check said of each file (None: accepted)
EXPECTED = {
    'empty_ids': "id column 'id': 7 row(s) have an empty id (rows 3, 300, 900, 1200, 1500, ...); every row needs an id",
    'empty_id_late': "id column 'id': 1 row(s) have an empty id (rows 1900); every row needs an id",
    'repeated_across_chunks': (
        "id column 'id': 1 id(s) appear more than once: 'c00004' (rows 5, 1800). Ids must be "
        'unique (rows sharing an id cannot be aligned one to one): remove the duplicates or choose '
        'a column with unique ids'),
    'many_repeats': (
        "id column 'id': 8 id(s) appear more than once: 'c00000' (rows 1, 1001, 1300, ...); "
        "'c00010' (rows 11, 1002); 'c00020' (rows 21, 1003, 1701); 'c00030' (rows 31, 1004); "
        "'c00040' (rows 41, 1005); and 3 more. Ids must be unique (rows sharing an id cannot be "
        'aligned one to one): remove the duplicates or choose a column with unique ids'),
    'no_label_column': "{path} has no label column 'target'; its columns are: id, x1, x2, y",
    'text_feature': (
        "{path}: column 'x2' (e.g. 'seven') is text, not numbers; leave it out with 'vfl init ... "
        "--exclude x2', or encode it with 'vfl init ... --encode x2=onehot' (or ordinal, frequency)"),
    'two_text_features': (
        "{path}: columns 'x1' (e.g. 'high'), 'x2' (e.g. 'n/a') are text, not numbers; leave them "
        "out with 'vfl init ... --exclude x1 --exclude x2', or encode them with 'vfl init ... "
        "--encode x1=onehot --encode x2=onehot' (or ordinal, frequency)"),
    'text_feature_excluded_ok': None,
    'text_feature_encoded_ok': None,
    'empty_labels': (
        "{path}: the label column 'y' is empty in 7 row(s) (lines 3, 401, 801, 1201, 1601, ...); "
        'fill in or delete those rows'),
    'text_labels_two_values': (
        "{path}: the label column 'y' holds text ('no', 'yes'); say which value is the positive "
        "class with --positive-label, e.g. --positive-label 'yes'"),
    'text_labels_positive_ok': None,
    'positive_not_a_value': (
        "{path}: --positive-label 'Yes' is not a value of the label column 'y' (its values: 'no', "
        "'yes')"),
    'positive_three_values': (
        "{path}: the label column 'y' holds 3 different values ('maybe', 'no', 'yes'); a yes/no "
        'label has two'),
    'label_many_text_values': (
        "{path}: the label column 'y' holds 11 different text values (e.g. 'class7'); a classifier "
        'needs two classes, a regression numbers'),
    'label_one_text_cell': (
        "{path}: the label column 'y' holds 3 different text values (e.g. 'unknown'); a classifier "
        'needs two classes, a regression numbers'),
    'regression_label_ok': None,
    'long_row': (
        "{path} is not a readable CSV (separator ',', decimal mark '.', UTF-8): Error tokenizing "
        'data. C error: Expected 4 fields in line 1602, saw 5'),
    'exclude_unknown': "{path} has no column 'x9' to exclude (did you mean 'x2'?); its columns are: id, x1, x2, y",
    'passive_no_features': '{path} has no feature columns besides the id column',
    'passive_repeats': (
        "id column 'id': 1 id(s) appear more than once: 'c00000' (rows 1, 2000). Ids must be "
        'unique (rows sharing an id cannot be aligned one to one): remove the duplicates or choose '
        'a column with unique ids'),
    'valid': None,
    'valid_semicolon_decimal_comma': None,
    'no_label_column_and_repeats': (
        "{path} has no label column 'target'; its columns are: id, x1, x2, y"),
    'long_row_and_empty_id': (
        "{path} is not a readable CSV (separator ',', decimal mark '.', UTF-8): Error tokenizing "
        'data. C error: Expected 4 fields in line 1602, saw 5'),
    'repeats_and_text_feature': (
        "id column 'id': 1 id(s) appear more than once: 'c00004' (rows 5, 1800). Ids must be "
        'unique (rows sharing an id cannot be aligned one to one): remove the duplicates or choose '
        'a column with unique ids'),
    'empty_id_and_repeats': (
        "id column 'id': 1 row(s) have an empty id (rows 1900); every row needs an id"),
    'text_feature_and_empty_label': (
        "{path}: column 'x2' (e.g. 'seven') is text, not numbers; leave it out with 'vfl init ... "
        "--exclude x2', or encode it with 'vfl init ... --encode x2=onehot' (or ordinal, frequency)"),
}
CASES: dict[str, Callable[[], tuple[str, dict]]] = {name[5:]: f for name, f in dict(globals()).items()
                                                   if name.startswith("case_")}


def _check(tmp_path: Path, body: str, kw: dict, memory: int | None = None) -> str | None:
    kw = dict(kw)
    role, label = kw.pop("role", "active"), kw.pop("label_column", "y")
    path = tmp_path / "data.csv"
    path.write_text(body)
    try:
        check_data(path, role=role, id_column="id", label_column=label, memory=memory, **kw)
    except DataError as exc:
        return str(exc).replace(str(path), "{path}")
    return None


def test_every_case_is_checked() -> None:
    assert set(CASES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_chunked_check_says_what_the_whole_read_said(tmp_path: Path, name: str) -> None:
    body, kw = CASES[name]()
    assert _check(tmp_path, body, kw, memory=10**6) == EXPECTED[name]  # chunks of 256 rows
    assert _check(tmp_path, body, kw, memory=None) == EXPECTED[name]  # one chunk (the default 2 GB bound)


def test_chunk_size_follows_the_memory_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_rows(10**6, 4) == 256
    assert check_rows(2 * 10**9, 4) == Budget(2 * 10**9).chunk  # the streamed alignment's chunk of ids
    assert check_rows(2 * 10**9, 400) < check_rows(2 * 10**9, 4)  # a wide file: fewer rows at once
    monkeypatch.setenv("VFL_MEMORY", "1MB")
    assert columns.memory_bound() == 10**6
    monkeypatch.delenv("VFL_MEMORY")
    assert columns.memory_bound() == 2 * 10**9


def test_init_reads_the_data_file_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`vfl init` under VFL_MEMORY=1MB or --memory 1MB: no whole read of the file, chunks of at most 256 rows; the
    repeat of row 5's id at row 1800 is still refused; the empty cells are still counted."""
    whole: list[str] = []
    chunks: list[int] = []
    read_table, read_chunks = columns.read_table, tables.read_table_chunks

    def counted(*a, **k):
        for first, frame in read_chunks(*a, **k):
            chunks.append(len(frame))
            yield first, frame

    monkeypatch.setattr(columns, "read_table", lambda *a, **k: whole.append(a[0]) or read_table(*a, **k))
    monkeypatch.setattr(columns, "read_table_chunks", counted)
    monkeypatch.setenv("VFL_MEMORY", "1MB")
    data = tmp_path / "data.csv"
    data.write_text(case_valid()[0])
    run("init", str(tmp_path / "bank"), "--role", "active", "--data", str(data), "--id-column", "id",
        "--label-column", "y")
    assert json.loads((tmp_path / "bank" / "vfl.json").read_text())["label_column"] == "y"
    # two passes, each in 8 chunks: the checks, then the count of empty cells for the notes
    assert whole == [] and sum(chunks) == 2 * N and max(chunks) == 256 and len(chunks) == 16
    data.write_text(text(H, set_cell(set_cell(rows(), 7, 1, ""), 1900, 1, "")))  # 2 empty cells of x1
    monkeypatch.delenv("VFL_MEMORY")
    chunks.clear()
    noted = run("init", str(tmp_path / "shop"), "--role", "active", "--data", str(data), "--id-column", "id",
                "--label-column", "y", "--memory", "1MB")  # the bound given to init, kept in vfl.json
    assert "2 empty cell(s) in 1 feature column(s) (x1: 2)" in noted.stderr
    assert whole == [] and sum(chunks) == 2 * N and max(chunks) == 256
    monkeypatch.setenv("VFL_MEMORY", "1MB")
    data.write_text(case_repeated_across_chunks()[0])
    result = run("init", str(tmp_path / "bureau"), "--role", "active", "--data", str(data), "--id-column", "id",
                 "--label-column", "y", ok=False)
    assert "'c00004' (rows 5, 1800)" in error_line(result)
    assert whole == []


def test_hash_collisions_are_not_repeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every id hashed alike: the second pass tells repeats from collisions by the ids themselves."""
    monkeypatch.setattr(psi, "_hash_ids", lambda ids: np.zeros(len(ids), dtype=np.uint64))
    assert _check(tmp_path, *case_valid(), memory=10**6) is None
    assert _check(tmp_path, *case_many_repeats(), memory=10**6) == EXPECTED["many_repeats"]


def test_many_label_values_are_counted_past_the_kept_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past LabelScan.SMALL distinct values the values are hashed: the counts stay exact."""
    body, kw = case_regression_label_ok()
    lines = body.splitlines()
    lines[1500] = lines[1500].rsplit(",", 1)[0] + ",unknown"  # one text label among 2,000 numbers
    body = "\n".join(lines) + "\n"
    whole = _check(tmp_path, body, kw)
    assert whole is not None and "holds 2000 different text values (e.g. 'unknown')" in whole
    monkeypatch.setattr(columns.LabelScan, "SMALL", 10)
    assert _check(tmp_path, body, kw, memory=10**6) == whole
