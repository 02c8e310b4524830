"""Statistics a party computes on its own columns alone: column summaries and the population
stability index (PSI) between its training and scoring data. Nothing here leaves the party.

PSI of one column (docs/stats.md): bins from the training rows (quantile cut points for a
numeric column, one bin per category holding at least 1% of the training rows for a text
column, missing values in a bin of their own), then with ``t_i`` and ``s_i`` the shares of the
training and scoring rows in bin ``i``::

    PSI = sum_i (s_i - t_i) * ln(s_i / t_i)

A share of 0 counts as 0.0001, so that a bin empty on one side adds a large but finite term.
Usual reading: below 0.1 stable, 0.1 to 0.25 watch, above 0.25 shifted.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from vfl_cli.errors import DataError, VflError
from vfl_cli.models.binning import CATEGORY, as_numbers, as_text, fit_column

QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
QUANTILE_KEYS = ("p1", "p25", "p50", "p75", "p99")
SUMMARY_KEYS = ("column", "kind", "count", "missing", "mean", "std", "min", *QUANTILE_KEYS, "max",
                "distinct", "top")
#: Text columns list their most frequent categories, this many.
TOP_CATEGORIES = 5
#: A bin share of 0 counts as this in the PSI (a finite, large term instead of infinity).
PSI_FLOOR = 1e-4
PSI_STABLE = 0.1
PSI_SHIFT = 0.25
PSI_MIN_SHARE = 0.01
MIN_PSI_BINS, MAX_PSI_BINS = 2, 100


def is_text(values: pd.Series) -> bool:
    """Whether a column holds text (its cells are not all numbers)."""
    return not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _numeric_summary(values: pd.Series, name: str) -> dict[str, Any]:
    x = as_numbers(values, name)
    x = x[~np.isnan(x)]
    if not len(x):
        return {k: None for k in ("mean", "std", "min", *QUANTILE_KEYS, "max")}
    q = np.quantile(x, QUANTILES)
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else None,
            "min": float(x.min()), **{k: float(v) for k, v in zip(QUANTILE_KEYS, q, strict=True)},
            "max": float(x.max())}


def column_summary(name: str, values: pd.Series) -> dict[str, Any]:
    """Count, missing cells, mean, standard deviation, min, quantiles 1/25/50/75/99, max and
    distinct values of one column; for a text column its most frequent categories instead of
    the numeric figures (those are None)."""
    missing = int(values.isna().sum())
    text = is_text(values)
    summary: dict[str, Any] = {"column": name, "kind": "text" if text else "numeric",
                               "count": len(values) - missing, "missing": missing,
                               "distinct": int(values.nunique(dropna=True))}
    if text:
        counts = as_text(values).value_counts(dropna=True)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:TOP_CATEGORIES]
        summary |= {k: None for k in ("mean", "std", "min", *QUANTILE_KEYS, "max")}
        summary["top"] = [{"value": str(v), "count": int(n)} for v, n in ranked]
    else:
        summary |= _numeric_summary(values, name)
        summary["top"] = None
    return {k: summary[k] for k in SUMMARY_KEYS}


def _check_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    absent = [c for c in columns if c not in df.columns]
    if absent:
        shown = ", ".join(map(str, df.columns[:12]))
        raise DataError(f"{what} has no column {absent[0]!r}; its columns are: {shown}")


def summarise(df: pd.DataFrame, columns: Sequence[str], *,
              what: str = "the data") -> list[dict[str, Any]]:
    """One :func:`column_summary` per column, in the order given.

    Raises:
        DataError: a column is not in ``df``.
    """
    _check_columns(df, columns, what)
    return [column_summary(c, df[c]) for c in columns]


def summaries_csv(summaries: Sequence[dict[str, Any]]) -> str:
    """The summaries as CSV text, one row per column; top categories as ``value (count); ...``."""
    rows = [{**s, "top": "; ".join(f"{t['value']} ({t['count']})" for t in s["top"] or [])}
            for s in summaries]
    buf = io.StringIO()
    pd.DataFrame(rows, columns=list(SUMMARY_KEYS)).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


# ----- population stability --------------------------------------------------------------------
def psi_reading(psi: float) -> str:
    """``stable`` below 0.1, ``watch`` from 0.1 to 0.25, ``shift`` above 0.25."""
    return "stable" if psi < PSI_STABLE else "watch" if psi <= PSI_SHIFT else "shift"


def psi_value(train_share: np.ndarray, score_share: np.ndarray) -> float:
    """PSI of two distributions over the same bins (shares of 0 count as :data:`PSI_FLOOR`)."""
    t = np.maximum(np.asarray(train_share, dtype=float), PSI_FLOOR)
    s = np.maximum(np.asarray(score_share, dtype=float), PSI_FLOOR)
    return float(np.sum((s - t) * np.log(s / t)))


def column_psi(name: str, train: pd.Series, score: pd.Series, *, bins: int = 10) -> dict[str, Any]:
    """PSI of one column: bins fitted on ``train`` (``bins`` quantile bins, or categories),
    shares of ``train`` and ``score`` rows per bin, the PSI and its reading."""
    col = fit_column(train, name=name, max_bins=bins + 1, min_share=PSI_MIN_SHARE)
    t = np.bincount(col.transform(train), minlength=col.n_bins) / len(train)
    s = np.bincount(col.transform(score), minlength=col.n_bins) / len(score)
    psi = psi_value(t, s)
    return {"column": name, "kind": "text" if col.kind == CATEGORY else "numeric", "psi": psi,
            "reading": psi_reading(psi),
            "bins": [{"bin": label, "train_share": float(a), "score_share": float(b)}
                     for label, a, b in zip(col.labels, t, s, strict=True)]}


def population_stability(train: pd.DataFrame, score: pd.DataFrame, columns: Sequence[str], *,
                         bins: int = 10, names: tuple[str, str] = ("the training data",
                                                                  "the scoring data"),
                         ) -> list[dict[str, Any]]:
    """:func:`column_psi` of every column, training rows against scoring rows.

    Raises:
        DataError: a file has no rows or lacks a column; text in a column that is numeric in
            the training rows.
        VflError: ``bins`` out of range.
    """
    if not MIN_PSI_BINS <= bins <= MAX_PSI_BINS:
        raise VflError(f"--bins must be between {MIN_PSI_BINS} and {MAX_PSI_BINS}, not {bins}")
    for df, what in zip((train, score), names, strict=True):
        if not len(df):
            raise DataError(f"{what} has no rows")
        _check_columns(df, columns, what)
    return [column_psi(c, train[c], score[c], bins=bins) for c in columns]


# ----- joint statistics (the joint-stats job) ---------------------------------------------------
JOINT_CSV_KEYS = ("what", "column", "other", "bin", "label", "rows", "events", "value")


def joint_column_numbers(features: Sequence[str], names: Sequence[str], raw: pd.DataFrame,
                         *, party: str) -> list[int]:
    """The 1-based numbers of ``names`` among the job's columns ``features`` (the job names
    columns by number, so that names stay with the party).

    Raises:
        DataError: an unknown column, or a text column (Pearson needs numbers).
    """
    out = []
    for name in names:
        if name in raw.columns and is_text(raw[name]):
            raise DataError(f"column {name!r} of {party} holds text; Pearson correlation needs "
                            "numeric columns: leave it out of --pearson")
        if name not in features:
            raise DataError(f"{name!r} is not a column of {party}; its columns are: "
                            f"{', '.join(list(features)[:12])}")
        out.append(list(features).index(name) + 1)
    if len(set(out)) != len(out):
        raise DataError("--pearson names a column twice")
    return out


def joint_result(ws: Any, job: str) -> dict[str, Any]:
    """This party's results of the finished ``joint-stats`` job ``job``.

    Raises:
        VflError: no such job, another protocol, or not finished yet.
    """
    from vfl_cli import jobs

    info = jobs.load_info(ws, job)
    if info.get("protocol") != "joint-stats":
        raise VflError(f"job {job} is a {info.get('protocol')} job, not a joint-stats job "
                       "(vfl stats joint start)")
    state, _ = jobs.load_state(ws, job)
    if not state.done:
        raise VflError(f"joint-stats job {job} is not finished on {ws.name} (phase "
                       f"{state.phase}); run 'vfl step {job}' when its files have arrived")
    return dict(state.results)


def joint_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The result as lines: every correlation (own columns, then each peer's) and every label
    rate of this party's bins."""
    rows: list[dict[str, Any]] = []
    cols = result.get("columns", [])
    for i, a in enumerate(cols):
        for j, b in enumerate(cols):
            if i < j:
                rows.append({"what": "pearson", "column": a, "other": b,
                             "value": result["within"][i][j]})
    for peer, entry in result.get("pearson", {}).items():
        if entry["r"] is None:
            continue
        for i, a in enumerate(entry["mine"]):
            for j, b in enumerate(entry["theirs"]):
                rows.append({"what": "pearson", "column": a, "other": f"{peer}#{b}",
                             "value": entry["r"][i][j]})
    if isinstance(result.get("label_rate"), list):
        for r in result["label_rate"]:
            rows.append({"what": "label-rate", "column": r["column"], "bin": r["bin"],
                         "label": r["label"], "rows": r["rows"], "events": r["events"],
                         "value": r["rate"]})
    return rows


def joint_csv(result: dict[str, Any]) -> str:
    """:func:`joint_rows` as CSV text (empty cells where a line has no such field)."""
    buf = io.StringIO()
    frame = pd.DataFrame(joint_rows(result), columns=list(JOINT_CSV_KEYS))
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()
