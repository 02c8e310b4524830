"""``vfl stats show`` and ``vfl stats psi`` through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import error_line, run


def _write(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def party(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(5)
    n = 400
    df = pd.DataFrame({
        "id": [f"c{i:04d}" for i in range(n)],
        "bad": rng.integers(0, 2, n),
        "income": rng.normal(50, 10, n).round(2),
        "age": rng.integers(18, 80, n).astype(float),
        "city": rng.choice(["paris", "lyon", "nice"], n, p=[0.6, 0.3, 0.1]),
    })
    df.loc[::10, "income"] = np.nan
    data = _write(tmp_path / "bank.csv", df)
    ws = tmp_path / "bank"
    run("init", str(ws), "--name", "bank", "--role", "active", "--data", str(data),
        "--id-column", "id", "--label-column", "bad", "--encode", "city=onehot")
    return ws, df


def test_show_json_matches_pandas(party: tuple[Path, pd.DataFrame]) -> None:
    ws, df = party
    out = json.loads(run("-w", str(ws), "stats", "show", "--json").stdout)
    by = {s["column"]: s for s in out}
    assert list(by) == ["income", "age", "city", "bad"]
    income = by["income"]
    assert income["count"] == df["income"].count() and income["missing"] == 40
    assert income["mean"] == pytest.approx(df["income"].mean())
    assert income["std"] == pytest.approx(df["income"].std())
    assert income["p50"] == pytest.approx(df["income"].median())
    assert income["p99"] == pytest.approx(df["income"].quantile(0.99))
    assert by["age"]["distinct"] == df["age"].nunique()
    city = by["city"]
    assert city["kind"] == "text" and city["mean"] is None
    counts = df["city"].value_counts()
    assert city["top"][0] == {"value": counts.index[0], "count": int(counts.iloc[0])}
    assert by["bad"]["mean"] == pytest.approx(df["bad"].mean())


def test_show_table_and_csv(party: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    ws, _ = party
    out = tmp_path / "summary.csv"
    result = run("-w", str(ws), "stats", "show", "--column", "income", "--column", "city",
                 "--csv", str(out))
    assert "income" in result.stdout and "paris" in result.stdout and "age" not in result.stdout
    assert f"Wrote {out}" in result.stderr
    written = pd.read_csv(out)
    assert written["column"].tolist() == ["income", "city"]
    assert written.loc[1, "top"].startswith("paris (")
    again = run("-w", str(ws), "stats", "show", "--csv", str(out), ok=False)
    assert error_line(again) == f"Error: {out} already exists; choose another name or pass --force"
    run("-w", str(ws), "stats", "show", "--csv", str(out), "--force")
    assert len(pd.read_csv(out)) == 4


def test_show_refuses_an_unknown_column(party: tuple[Path, pd.DataFrame]) -> None:
    ws, _ = party
    result = run("-w", str(ws), "stats", "show", "--column", "salary", ok=False)
    assert error_line(result).startswith("Error: 'salary' is not a column of ")


def test_psi_reads_stable_and_shifted_columns(party: tuple[Path, pd.DataFrame],
                                              tmp_path: Path) -> None:
    ws, df = party
    later = df.copy()
    later["income"] = later["income"] + 8  # almost a standard deviation later
    later["city"] = np.where(np.arange(len(df)) % 2 == 0, "oslo", later["city"])
    score = _write(tmp_path / "later.csv", later.drop(columns=["bad"]))
    rows = json.loads(run("-w", str(ws), "stats", "psi", "--score", str(score), "--json").stdout)
    by = {r["column"]: r for r in rows}
    assert set(by) == {"income", "age", "city"}  # the label is not a scoring column
    assert by["age"]["psi"] == pytest.approx(0.0) and by["age"]["reading"] == "stable"
    assert by["income"]["reading"] == "shift"
    assert by["city"]["reading"] == "shift"  # half the rows in a city never seen: 'other'
    assert [b["bin"] for b in by["city"]["bins"]] == ["missing", "paris", "lyon", "nice", "other"]
    t = np.array([b["train_share"] for b in by["income"]["bins"]])
    s = np.array([b["score_share"] for b in by["income"]["bins"]])
    t, s = np.maximum(t, 1e-4), np.maximum(s, 1e-4)
    assert by["income"]["psi"] == pytest.approx(float(np.sum((s - t) * np.log(s / t))))
    table = run("-w", str(ws), "stats", "psi", "--score", str(score), "--bins", "5")
    assert "shift" in table.stdout and "2 of 3 columns shifted" in table.stderr


@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop(columns=["age"]), "has no column 'age'"),
    (lambda d: d.assign(age=["n/a"] * len(d)), "column 'age' holds text ('n/a')"),
])
def test_psi_refuses_unusable_scoring_files(party: tuple[Path, pd.DataFrame], tmp_path: Path,
                                            change: object, message: str) -> None:
    ws, df = party
    score = _write(tmp_path / "score.csv", change(df))  # type: ignore[operator]
    result = run("-w", str(ws), "stats", "psi", "--score", str(score), ok=False)
    assert message in error_line(result)


def test_psi_refuses_bins_out_of_range(party: tuple[Path, pd.DataFrame]) -> None:
    ws, _ = party
    result = run("-w", str(ws), "stats", "psi", "--score", str(ws / ".." / "bank.csv"),
                 "--bins", "1", ok=False)
    assert error_line(result) == "Error: --bins must be between 2 and 100, not 1"
