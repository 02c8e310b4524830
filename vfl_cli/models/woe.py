"""Weight of evidence (WOE) and information value (IV) from per-bin counts of events and
non-events; monotone merging of adjacent bins; the WOE transform of a party's columns.

Plaintext arithmetic only: in the joint job the active party runs :func:`woe_iv` on the
per-bin sums a passive party returns, and each party runs :class:`WoeEncoder` on its own rows.

Conventions (FATE's ``HeteroFeatureBinning``; docs/stats.md, "WOE and IV"), with ``e_i``,
``n_i`` the events (label 1) and non-events (label 0) of bin ``i`` and ``E``, ``N`` their
totals over all bins of the column (the missing bin included)::

    woe_i = ln((e_i / E) / (n_i / N))
    iv_i  = (e_i / E - n_i / N) * woe_i,      IV = sum_i iv_i

- A bin with no events or no non-events has ``adjustment`` (default 0.5) added to both of its
  counts (not to the totals) before the rates are taken, so its WOE stays finite.
- A bin with no rows at all (the missing bin of a column without missing values, an empty
  ``other`` bin) has WOE 0 and IV 0: it carries no evidence, and a row that lands there later
  gets the neutral WOE. FATE never has such bins; on every bin FATE has, the figures are FATE's.
- A total of 0 (no events at all, or no non-events) counts as 1, as in FATE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vfl_cli.errors import DataError, VflError
from vfl_cli.models.binning import MISSING_BIN, NUMERIC, Binning, ColumnBins

ADJUSTMENT = 0.5
DIRECTIONS = ("auto", "increasing", "decreasing")
#: WOE differences below this are ties, not violations of monotonicity (rounding).
_TIE = 1e-12


@dataclass(frozen=True, eq=False)
class WoeIv:
    """WOE and IV of the bins of one column, with the counts and (adjusted) rates behind them."""

    events: np.ndarray
    nonevents: np.ndarray
    event_rate: np.ndarray
    nonevent_rate: np.ndarray
    woe: np.ndarray
    iv_bins: np.ndarray

    @property
    def iv(self) -> float:
        """The column's information value, the sum over its bins."""
        return float(self.iv_bins.sum())

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k).tolist() for k in
                ("events", "nonevents", "event_rate", "nonevent_rate", "woe", "iv_bins")} | {
                    "iv": self.iv}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WoeIv:
        try:
            return cls(*(np.asarray(data[k], dtype=float) for k in
                         ("events", "nonevents", "event_rate", "nonevent_rate", "woe", "iv_bins")))
        except (KeyError, TypeError, ValueError) as exc:
            raise VflError(f"WOE state is damaged ({type(exc).__name__}); "
                           "run the binning again") from None


def _counts(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise VflError(f"{what} must be one finite, non-negative count per bin")
    return arr


def woe_iv(events: Any, nonevents: Any, *, adjustment: float = ADJUSTMENT) -> WoeIv:
    """WOE and IV per bin from the counts of events and non-events per bin.

    Args:
        events: events (label 1) per bin.
        nonevents: non-events (label 0) per bin, same length.
        adjustment: added to both counts of a bin that lacks events or non-events (> 0).

    Raises:
        VflError: counts of different lengths, negative or not finite; adjustment not positive.
    """
    e, n = _counts(events, "event counts"), _counts(nonevents, "non-event counts")
    if len(e) != len(n):
        raise VflError(f"{len(e)} event counts but {len(n)} non-event counts; one of each per bin")
    if not adjustment > 0:
        raise VflError(f"the WOE adjustment must be above 0, not {adjustment}")
    e_total, n_total = max(e.sum(), 1.0), max(n.sum(), 1.0)
    empty = (e == 0) & (n == 0)
    short = ((e == 0) | (n == 0)) & ~empty
    e_rate = np.where(short, e + adjustment, e) / e_total
    n_rate = np.where(short, n + adjustment, n) / n_total
    with np.errstate(divide="ignore", invalid="ignore"):
        woe = np.where(empty, 0.0, np.log(e_rate / np.where(empty, 1.0, n_rate)))
    iv = np.where(empty, 0.0, (e_rate - n_rate) * woe)
    return WoeIv(e, n, e_rate, n_rate, woe, iv)


def bin_counts(bins: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Events and non-events per bin, from each row's bin and 0/1 label (the plaintext sums).

    Raises:
        DataError: a label is not 0 or 1, or lengths differ.
    """
    y = np.asarray(labels)
    if len(y) != len(bins):
        raise DataError(f"{len(bins)} rows of bins but {len(y)} labels")
    if not np.isin(y, (0, 1)).all():
        raise DataError("WOE needs labels 0 and 1 (event = 1)")
    events = np.bincount(bins, weights=(y == 1).astype(float), minlength=n_bins)
    nonevents = np.bincount(bins, weights=(y == 0).astype(float), minlength=n_bins)
    return events, nonevents


def _monotone_groups(e: np.ndarray, n: np.ndarray, totals: tuple[float, float], sign: int,
                     adjustment: float) -> list[list[int]]:
    """Merge adjacent value bins, first violation first, until WOE is monotone in ``sign``."""
    groups = [[i] for i in range(len(e))]
    ev, ne = list(e), list(n)
    while len(groups) > 1:
        # the totals stay the whole column's: merging moves rows between bins, never out
        woe = woe_iv([*ev, totals[0] - sum(ev)], [*ne, totals[1] - sum(ne)],
                     adjustment=adjustment).woe[:-1]
        bad = np.flatnonzero(sign * np.diff(woe) < -_TIE)
        if not len(bad):
            break
        i = int(bad[0])
        groups[i] += groups.pop(i + 1)
        ev[i] += ev.pop(i + 1)
        ne[i] += ne.pop(i + 1)
    return groups


def _merged(column: ColumnBins, groups: list[list[int]]) -> ColumnBins:
    # value bins j and j + 1 (0-based among value bins) are split by cut j
    return column.without_cuts(g[k] for g in groups for k in range(len(g) - 1))


def _regroup(counts: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    return np.array([counts[MISSING_BIN], *(counts[1:][g].sum() for g in groups)], dtype=float)


def monotone_merge(column: ColumnBins, events: Any, nonevents: Any, *, direction: str = "auto",
                   adjustment: float = ADJUSTMENT) -> tuple[ColumnBins, WoeIv]:
    """Merge adjacent bins of a numeric column until WOE is monotone in bin order.

    The missing bin stays as it is (it has no place in the order). ``auto`` tries both
    directions and keeps the one with the larger IV (increasing on a tie).

    Returns:
        The merged column (cut points between merged bins removed) and its WOE/IV.

    Raises:
        VflError: the column is binned by category, the counts do not match its bins, or an
            unknown direction.
    """
    if column.kind != NUMERIC:
        raise VflError(f"column {column.name!r} is binned by category; monotone merging needs an "
                       "order, so it applies to numeric columns only")
    if direction not in DIRECTIONS:
        raise VflError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    e, n = _counts(events, "event counts"), _counts(nonevents, "non-event counts")
    if len(e) != column.n_bins or len(n) != column.n_bins:
        raise VflError(f"column {column.name!r} has {column.n_bins} bins but {len(e)} event and "
                       f"{len(n)} non-event counts")
    signs = {"increasing": [1], "decreasing": [-1], "auto": [1, -1]}[direction]
    candidates = []
    for sign in signs:
        groups = _monotone_groups(e[1:], n[1:], (e.sum(), n.sum()), sign, adjustment)
        result = woe_iv(_regroup(e, groups), _regroup(n, groups), adjustment=adjustment)
        candidates.append((_merged(column, groups), result))
    return max(candidates, key=lambda c: c[1].iv)  # the first (increasing) on a tie


def column_woe(column: ColumnBins, values: pd.Series, labels: np.ndarray, *,
               adjustment: float = ADJUSTMENT) -> WoeIv:
    """WOE/IV of one column computed in the clear (one party holding values and labels)."""
    e, n = bin_counts(column.transform(values), labels, column.n_bins)
    return woe_iv(e, n, adjustment=adjustment)


@dataclass(frozen=True, eq=False)
class WoeEncoder:
    """A party's WOE transform: its binning and the WOE of each bin of each binned column."""

    binning: Binning
    woe: Mapping[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        for col in self.binning.columns:
            if len(self.woe.get(col.name, ())) != col.n_bins:
                raise VflError(f"column {col.name!r} has {col.n_bins} bins but "
                               f"{len(self.woe.get(col.name, ()))} WOE values")

    def transform_column(self, name: str, values: pd.Series) -> np.ndarray:
        """The WOE of each cell of column ``name``."""
        bins = self.binning.column(name).transform(values)
        return np.asarray(np.asarray(self.woe[name], dtype=float)[bins], dtype=float)

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df``'s binned columns replaced by their WOE (float), other columns dropped."""
        bins = self.binning.transform(df)
        return pd.DataFrame({c.name: np.asarray(self.woe[c.name], dtype=float)[bins[:, j]]
                             for j, c in enumerate(self.binning.columns)}, index=df.index)

    def to_json(self) -> dict[str, Any]:
        return {"binning": self.binning.to_json(), "woe": {k: list(v) for k, v in self.woe.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WoeEncoder:
        try:
            woe = {str(k): tuple(float(x) for x in v) for k, v in data["woe"].items()}
            return cls(Binning.from_json(data["binning"]), woe)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VflError(f"WOE state is damaged ({type(exc).__name__}); "
                           "run the binning again") from None


def fit_woe(binning: Binning, df: pd.DataFrame, labels: np.ndarray, *, monotone: bool = False,
            adjustment: float = ADJUSTMENT) -> tuple[WoeEncoder, dict[str, WoeIv]]:
    """WOE/IV of every binned column in the clear: the plaintext reference of the joint job.

    With ``monotone``, numeric columns are merged by :func:`monotone_merge` (category columns
    are left as they are).
    """
    results: dict[str, WoeIv] = {}
    for col in binning.columns:
        result = column_woe(col, df[col.name], labels, adjustment=adjustment)
        if monotone and col.kind == NUMERIC:
            merged, result = monotone_merge(col, result.events, result.nonevents,
                                            adjustment=adjustment)
            binning = binning.replace(merged)
        results[col.name] = result
    encoder = WoeEncoder(binning, {k: tuple(float(w) for w in r.woe) for k, r in results.items()})
    return encoder, results
