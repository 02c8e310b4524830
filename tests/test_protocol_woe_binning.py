"""Joint WOE/IV binning: the encrypted job through real workspaces equals ``fit_woe`` on the
joined rows (numeric, missing and category bins; with and without monotone merging).

Jobs run in-process through the job engine with 512-bit keys, on a subset of default_credit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FATE, TEST_KEY_BITS, drive, introduce, make_party, run

from vfl_cli import jobs
from vfl_cli.errors import InvalidArtifact
from vfl_cli.models.binning import NUMERIC, ColumnBins, fit_binning
from vfl_cli.models.features import split_rows
from vfl_cli.models.woe import WoeEncoder, fit_woe, monotone_merge
from vfl_cli.protocol.woe_binning import Sums, column_figures, passive_figures
from vfl_cli.workspace import Workspace

ROWS = 400


def _parts(root: Path, *, text: bool = False) -> None:
    """default_credit's first rows, some cells blanked (missing bins), optionally a text column."""
    guest = pd.read_csv(FATE / "default_credit_hetero_guest.csv", nrows=ROWS)
    host = pd.read_csv(FATE / "default_credit_hetero_host.csv", nrows=ROWS)
    rng = np.random.default_rng(5)
    for df, cols in ((guest, ["x1", "x2"]), (host, ["x0", "x3"])):
        for c in cols:
            df.loc[rng.random(ROWS) < 0.1, c] = np.nan
    if text:
        y = guest["y"].to_numpy()
        host["region"] = np.where(rng.random(ROWS) < 0.3 + 0.3 * y, "north",
                                  rng.choice(["south", "east", "west"], ROWS))
        host.loc[rng.random(ROWS) < 0.05, "region"] = None
        host = host[["id", "region", "x0", "x1", "x3"]]
    else:
        host = host[["id", "x0", "x1", "x2", "x3"]]
    guest[["id", "y", "x0", "x1", "x2", "x3"]].to_csv(root / "guest.csv", index=False)
    host.to_csv(root / "host.csv", index=False)


def _setup(root: Path, *, text: bool = False) -> list[Path]:
    _parts(root, text=text)
    wss = [make_party(root, "bank", "active", root / "guest.csv", label_column="y")]
    if text:  # a text column needs an encoding for training jobs; WOE binning bins it by category
        run("init", str(root / "bureau"), "--name", "bureau", "--role", "passive", "--data",
            str(root / "host.csv"), "--id-column", "id", "--encode", "region=ordinal")
        run("-w", str(root / "bureau"), "keygen", "--key-bits", str(TEST_KEY_BITS),
            "--insecure-test-keys")
        run("-w", str(root / "bureau"), "keys", "export", "--out", str(root / "bureau.card"))
        wss.append(root / "bureau")
    else:
        wss.append(make_party(root, "bureau", "passive", root / "host.csv"))
    introduce(root, "bank", "bureau")
    jobs.start_job(Workspace(wss[0]), "psi", {}, job="al")
    drive(wss, "al")
    return wss


def _joined(wss: list[Path], params: dict) -> tuple[pd.DataFrame, np.ndarray, dict[str, list[str]]]:
    frames, y, cols = [], None, {}
    for ws in wss:
        w = Workspace(ws)
        state, _ = jobs.load_state(w, "al")
        df = w.read_data().iloc[state.arrays["aligned_rows"]].reset_index(drop=True)
        split = split_rows(len(df), params["test_fraction"], params["seed"],
                           ids=state.arrays.get("aligned_ids"))
        df = df.iloc[np.sort(split.train)].reset_index(drop=True)
        if w.label_column:
            y = df[w.label_column].to_numpy(dtype=int)
        cols[w.config["name"]] = list(w.features)
        frames.append(df[w.features].add_prefix(w.config["name"] + ":"))
    return pd.concat(frames, axis=1), y, cols


def _run(wss: list[Path], job: str, params: dict) -> list[dict]:
    jobs.start_job(Workspace(wss[0]), "woe-binning", {"alignment": "al", **params}, job=job)
    drive(wss, job)
    return [jobs.load_state(Workspace(ws), job)[0].results for ws in wss]


def _check(wss: list[Path], results: list[dict], params: dict) -> None:
    joined, y, cols = _joined(wss, params)
    for ws, res in zip(wss, results, strict=True):
        name = Workspace(ws).config["name"]
        df = joined[[f"{name}:{c}" for c in cols[name]]].rename(columns=lambda c: c.split(":")[1])
        binning = fit_binning(df, cols[name], method=params["method"], max_bins=params["bins"])
        ref, figures = fit_woe(binning, df, y, monotone=params["monotone"])
        got = WoeEncoder.from_json(res["encoder"])
        assert got.binning == ref.binning
        for c in cols[name]:
            np.testing.assert_allclose(got.woe[c], ref.woe[c], rtol=0, atol=1e-12)
            assert res["iv"][c] == pytest.approx(figures[c].iv, abs=1e-12)
        np.testing.assert_allclose(got.transform(df).to_numpy(), ref.transform(df).to_numpy(),
                                   atol=1e-12)
        rows = [r for r in res["table"] if r["column"] == cols[name][0]]
        assert sum(r["rows"] for r in rows) == len(df)


@pytest.mark.parametrize("method,monotone", [("quantile", False), ("equal-width", True)])
def test_joint_woe_equals_the_plaintext_reference(tmp_path: Path, method: str, monotone: bool
                                                 ) -> None:
    wss = _setup(tmp_path)
    params = {"method": method, "bins": 6, "monotone": monotone, "test_fraction": 0.2, "seed": 7,
              "min_bin_rows": 1}
    results = _run(wss, "wb", params)
    _check(wss, results, params)
    # the missing bins hold rows, and the active party sees passive figures by opaque id only
    assert any(r["bin"] == 0 and r["rows"] > 0 for r in results[1]["table"])
    shown = results[0]["passive"]["bureau"]
    assert {s["column"] for s in shown} == set(range(4))
    assert all("x0" not in str(s) for s in shown)


def test_category_bins(tmp_path: Path) -> None:
    wss = _setup(tmp_path, text=True)
    params = {"method": "quantile", "bins": 5, "monotone": True, "test_fraction": 0.2, "seed": 7,
              "min_bin_rows": 1}
    results = _run(wss, "wb", params)
    _check(wss, results, params)
    labels = [r["label"] for r in results[1]["table"] if r["column"] == "region"]
    assert labels[0] == "missing" and "north" in labels and labels[-1] == "other"


def _sums(counts: list[int], column: list[int], rank: list[int]) -> Sums:
    n = len(counts)
    return Sums(n, None, np.array(counts), np.array(column), np.array(rank))


def test_the_active_party_refuses_impossible_sums() -> None:
    with pytest.raises(InvalidArtifact, match="exceed"):
        passive_figures(_sums([3, 2], [0, 0], [-1, -1]), np.array([4.0, 0.0]), monotone=False,
                        adjustment=0.5)
    with pytest.raises(InvalidArtifact, match="ranks"):
        passive_figures(_sums([3, 2, 5], [0, 0, 0], [0, 2, 2]), np.array([1.0, 1.0, 1.0]),
                        monotone=True, adjustment=0.5)


def test_monotone_merge_over_ranks_equals_the_reference() -> None:
    # bins in rank order: missing, then 4 value bins whose WOE is not monotone
    e, n = np.array([2.0, 5, 9, 4, 12]), np.array([20.0, 40, 30, 35, 10])
    res, group = column_figures(e, n, ordered=True, monotone=True, adjustment=0.5)
    ref_col, ref = monotone_merge(ColumnBins("c", NUMERIC, (1.0, 2.0, 3.0)), e, n)
    np.testing.assert_allclose(res.woe, ref.woe)
    assert group[0] == 0 and len(set(group[1:].tolist())) == len(ref_col.cuts) + 1


def test_a_small_passive_bin_gets_no_woe() -> None:
    # one column: missing (0 rows), a bin of 3 rows, two large bins
    result, shown = passive_figures(_sums([0, 3, 50, 47], [0, 0, 0, 0], [-1] * 4),
                                    np.array([0.0, 2.0, 10.0, 30.0]), monotone=False,
                                    adjustment=0.5, min_rows=10)
    assert result.woe[1] == 0 and result.iv_bins[1] == 0
    assert result.woe[2] != 0 and result.iv[0] == pytest.approx(result.iv_bins[2:].sum())
    assert shown[0]["withheld"] == [1]
