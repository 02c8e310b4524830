"""Reading CSV files as users have them (vfl_cli/tables.py): formats detected or given, clear errors."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfl_cli.errors import DataError, VflError
from vfl_cli.tables import CsvFormat, check_options, detect_format, read_header, read_table

EXPECTED = {"id": ["007", "8"], "x": [1.5, -2.25], "y": [0, 1]}


def write(tmp_path: Path, data: bytes, name: str = "t.csv") -> Path:
    f = tmp_path / name
    f.write_bytes(data)
    return f


@pytest.mark.parametrize("data, fmt", [
    (b"id,x,y\n007,1.5,0\n8,-2.25,1\n", CsvFormat(",", ".", "utf-8-sig")),
    # Excel's "CSV UTF-8": a BOM and CRLF
    (codecs.BOM_UTF8 + b"id,x,y\r\n007,1.5,0\r\n8,-2.25,1\r\n", CsvFormat(",", ".", "utf-8-sig")),
    # Excel in a decimal-comma locale: ';' separators, decimal commas, quoted names
    (codecs.BOM_UTF8 + b'"id";"x";"y"\r\n007;1,5;0\r\n8;-2,25;1\r\n', CsvFormat(";", ",", "utf-8-sig")),
    (b'"id" , "x","y"\n"007",1.5,0\n"8",-2.25,1\n', CsvFormat(",", ".", "utf-8-sig")),
    ("id\tx\ty\r\n007\t1.5\t0\r\n8\t-2.25\t1\r\n".encode("utf-16"), CsvFormat("\t", ".", "utf-16")),
    (b"id|x|y\n007|1.5|0\n8|-2.25|1\n", CsvFormat("|", ".", "utf-8-sig")),
])
def test_formats_users_have_are_detected_and_read_alike(tmp_path: Path, data: bytes, fmt: CsvFormat) -> None:
    f = write(tmp_path, data)
    assert detect_format(f) == fmt
    assert read_header(f) == ["id", "x", "y"]
    assert read_table(f, "id").to_dict("list") == EXPECTED


def test_given_options_win_over_detection(tmp_path: Path) -> None:
    # 'a;b' in every row would also be a consistent ';' table: detection is unsure, the option settles it
    f = write(tmp_path, b"id,x;y\n1,a;b\n2,c;d\n")
    with pytest.raises(DataError, match=r"cannot tell how the columns .* give --sep ',' or --sep ';'"):
        detect_format(f)
    assert read_table(f, "id", sep=",")["x;y"].tolist() == ["a;b", "c;d"]
    g = write(tmp_path, b"id;x\n1;1,5\n2;2.5\n", "mixed.csv")
    with pytest.raises(DataError, match=r"both decimal marks \('1,5' and '2.5'\); give --decimal"):
        detect_format(g)
    assert read_table(g, "id", decimal=".")["x"].astype(str).tolist() == ["1,5", "2.5"]


@pytest.mark.parametrize("text, fmt, x", [
    # Excel writes numbers as displayed: digit groups with either decimal mark
    ("id;x\n1;1.234,5\n2;12,5\n3;7\n", CsvFormat(";", ",", "utf-8-sig", "."), [1234.5, 12.5, 7.0]),
    ('id,x\n1,"1,234.5"\n2,12.5\n3,"2,000"\n', CsvFormat(",", ".", "utf-8-sig", ","), [1234.5, 12.5, 2000.0]),
])
def test_digit_groups_are_detected(tmp_path: Path, text: str, fmt: CsvFormat, x: list[float]) -> None:
    f = write(tmp_path, text.encode())
    assert detect_format(f) == fmt
    assert read_table(f, "id")["x"].tolist() == x


@pytest.mark.parametrize("text, message", [
    ("id;x\n1;1.234,5\n2;12.5\n", r"digit groups \('1.234,5'\) and others .* \('12.5'\)"),
    ('id;x\n1;1.234,5\n2;"1,234.5"\n', "digit groups both ways"),
])
def test_unreadable_digit_groups_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        detect_format(write(tmp_path, text.encode()))


@pytest.mark.parametrize("options, message", [
    ({"sep": ":"}, "--sep must be one of"),
    ({"decimal": ";"}, "--decimal must be '.' or ','"),
    ({"sep": ",", "decimal": ","}, "give --sep ';'"),
    ({"encoding": "klingon"}, "not a known text encoding"),
])
def test_bad_options(options: dict[str, str], message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_options(**{"sep": None, "decimal": None, "encoding": None, **options})


def test_tab_is_accepted_as_backslash_t() -> None:
    assert check_options("\\t", None, None) == {"sep": "\t"}


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"id,x,x\n1,2,3\n", "'x' appears twice"),
    (b",id,x\n0,1,2\n", "column 1 .* has no name"),
    (b"id,x\n1,2,3\n2,3,4\n", "more cells than its header has names"),
    ("id,x\n\xe9t\xe9,1\n".encode("latin-1"), r"not UTF-8 text .* --encoding cp1252"),
])
def test_malformed_files_name_the_problem(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_table(write(tmp_path, data), "id")


def test_cp1252_file_is_read_with_its_encoding(tmp_path: Path) -> None:
    f = write(tmp_path, "id;région\n1;2,5\n".encode("cp1252"))
    assert read_table(f, "id", encoding="cp1252").to_dict("list") == {"id": ["1"], "région": [2.5]}


def test_missing_id_column_lists_the_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no id column 'id' \(did you mean 'ID'\?\); its columns are: ID, x"):
        read_table(write(tmp_path, b"ID,x\n1,2\n"), "id")


def test_large_file_is_detected_from_its_head(tmp_path: Path) -> None:
    rows = "".join(f"{i:06d};{i},5\n" for i in range(20_000))  # > 64 KiB; last sampled line is cut
    f = write(tmp_path, ("id;x\n" + rows).encode())
    df = read_table(f, "id")
    assert detect_format(f) == CsvFormat(";", ",", "utf-8-sig")
    assert len(df) == 20_000 and df["id"].iloc[7] == "000007" and df["x"].iloc[3] == 3.5


cell = st.text(alphabet=st.sampled_from(list('ab01,;."\t\r\n |-eé\ufeff')), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(cell, min_size=1, max_size=4), min_size=0, max_size=5),
       raw=st.binary(max_size=40), use_raw=st.booleans())
def test_any_input_is_read_or_refused_with_a_vfl_error(tmp_path: Path, rows: list[list[str]], raw: bytes,
                                                       use_raw: bool) -> None:
    data = raw if use_raw else "\n".join(",".join(r) for r in [["id", "x"], *rows]).encode()
    f = write(tmp_path, data, "fuzz.csv")
    try:
        df = read_table(f, "id")
    except VflError:
        return
    assert "id" in df.columns and all(isinstance(v, str) for v in df["id"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(cell, cell, cell), min_size=0, max_size=6),
       positive=st.one_of(st.none(), st.sampled_from(["a", "1", "yes"])),
       sep=st.sampled_from([",", ";"]))
def test_any_table_passes_the_init_checks_or_is_refused_with_a_vfl_error(
        tmp_path: Path, rows: list[tuple[str, str, str]], positive: str | None, sep: str) -> None:
    from vfl_cli.columns import check_data

    body = "\n".join(sep.join(r) for r in [("id", "y", "x"), *rows])
    f = write(tmp_path, body.encode(), "init.csv")
    try:
        config = check_data(f, role="active", id_column="id", label_column="y", positive_label=positive)
    except VflError:
        return
    assert config["id_column"] == "id" and config["label_column"] == "y"
