"""Binning a party's own columns on its own training rows: the plaintext part of WOE/IV binning,
the scorecard and SecureBoost.

Rules (docs/stats.md, "Binning"):

- Every column has a bin of its own for missing values, always at index :data:`MISSING_BIN`
  (0), present even when the training rows have none, so that a missing value met later always
  has a bin. ``max_bins`` counts it: a column has at most ``max_bins`` bins in all.
- Numeric columns are cut at increasing cut points ``c_1 < ... < c_m`` into ``m + 1`` intervals
  closed on the right, ``(-inf, c_1], (c_1, c_2], ..., (c_m, inf)``, bins ``1 .. m + 1`` (FATE's
  and scikit-learn's histogram gradient boosting's convention: a split "x <= c" sends a bin
  and all bins below it left). Cut points are quantiles of the training rows (``quantile``;
  midpoints between distinct values when there are few of them, as scikit-learn's
  ``HistGradientBoosting`` does), evenly spaced between the training minimum and maximum
  (``equal-width``) or given by the user (``cuts``).
- Text columns (and numeric columns asked to be categorical) get a bin per category holding at
  least ``min_share`` of the training rows, most frequent first, at most ``max_bins - 2`` of
  them; every other category, and any category never seen in training, falls in the last bin,
  ``other``.

A :class:`Binning` is frozen and serialises to JSON (it lives in a party's job state, never in
an artifact: its cut points are the party's private data). :func:`opaque_ids` numbers every
(column, bin) of a party by a random permutation drawn from the operating system's CSPRNG, so
the ids a peer sees say nothing about columns, thresholds or order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vfl_cli.errors import DataError, VflError

if TYPE_CHECKING:  # pandas only where a frame is binned: a job step reading its bins from its
    import pandas as pd  # state never imports it (each vfl process pays ~0.3 s for it)

#: Index of the bin of missing values, in every column.
MISSING_BIN = 0
NUMERIC = "numeric"
CATEGORY = "category"
KINDS = (NUMERIC, CATEGORY)
METHODS = ("quantile", "equal-width", "cuts")
MISSING_LABEL = "missing"
OTHER_LABEL = "other"
#: Bounds on ``max_bins`` (the missing bin included).
MIN_BINS = 3
MAX_BINS = 1024
#: A category holding less than this share of the training rows goes to ``other`` by default.
MIN_SHARE = 0.01


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def as_text(values: pd.Series) -> pd.Series:
    """Cells as category names: text stripped, whole numbers without ``.0``; missing stays NA."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype(float)
        whole = numbers.notna() & np.isfinite(numbers) & (numbers == np.round(numbers))
        text = numbers.map(lambda v: repr(float(v))).astype(object)
        text[whole] = numbers[whole].map(lambda v: str(int(v)))
        return text.where(numbers.notna(), None)
    text = values.astype("string").str.strip()
    keep = (text.notna() & (text != "")).fillna(False).to_numpy(dtype=bool)
    return pd.Series(np.where(keep, text.astype(object), None), index=values.index, dtype=object)


def as_numbers(values: pd.Series, name: str) -> np.ndarray:
    """Cells as floats (missing as NaN); text in a numeric column is refused, never made missing."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        example = str(values[bad].iloc[0])
        raise DataError(f"column {name!r} holds text ({example!r}) but is binned as numbers; "
                        "fix the cell, or bin the column by category")
    return np.asarray(numbers, dtype=float)


@dataclass(frozen=True)
class ColumnBins:
    """The bins of one column: cut points (numeric) or categories (category), bin 0 missing."""

    name: str
    kind: str
    cuts: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VflError(f"column {self.name!r}: bin kind must be one of {', '.join(KINDS)}, "
                           f"not {self.kind!r}")
        finite = all(math.isfinite(c) for c in self.cuts)
        if not finite or list(self.cuts) != sorted(set(self.cuts)):
            raise VflError(f"column {self.name!r}: cut points must be finite and strictly "
                           "increasing")
        if len(set(self.categories)) != len(self.categories):
            raise VflError(f"column {self.name!r}: a category is listed twice")
        if self.kind == CATEGORY and self.cuts or self.kind == NUMERIC and self.categories:
            raise VflError(f"column {self.name!r}: a {self.kind} column has only "
                           f"{'cut points' if self.kind == NUMERIC else 'categories'}")

    @property
    def n_bins(self) -> int:
        """Number of bins, the missing bin (and the ``other`` bin of a category column) included."""
        return 1 + (len(self.cuts) + 1 if self.kind == NUMERIC else len(self.categories) + 1)

    @property
    def other_bin(self) -> int | None:
        """Index of the ``other`` bin of a category column (None for a numeric column)."""
        return self.n_bins - 1 if self.kind == CATEGORY else None

    @property
    def labels(self) -> tuple[str, ...]:
        """Readable bin names, in bin order: ``missing``, then intervals or categories."""
        if self.kind == CATEGORY:
            return (MISSING_LABEL, *self.categories, OTHER_LABEL)
        bounds = ["-inf", *(_fmt(c) for c in self.cuts), "inf"]
        shown = [f"({lo}, {hi}]" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        shown[-1] = shown[-1][:-1] + ")"
        return (MISSING_LABEL, *shown)

    def transform(self, values: pd.Series) -> np.ndarray:
        """The bin of every cell (int64): missing cells in bin 0, unseen categories in other."""
        if self.kind == NUMERIC:
            x = as_numbers(values, self.name)
            bins = np.searchsorted(np.asarray(self.cuts, dtype=float), x, side="left") + 1
            bins[np.isnan(x)] = MISSING_BIN
            return np.asarray(bins, dtype=np.int64)
        text = as_text(values)
        codes = text.map({c: i + 1 for i, c in enumerate(self.categories)})
        codes = codes.where(codes.notna(), self.n_bins - 1).where(text.notna(), MISSING_BIN)
        return np.asarray(codes.to_numpy(dtype=np.int64), dtype=np.int64)

    def without_cuts(self, dropped: Iterable[int]) -> ColumnBins:
        """This numeric column without the cut points at positions ``dropped`` (bins merged)."""
        if self.kind != NUMERIC:
            raise VflError(f"column {self.name!r} is binned by category; only numeric bins merge")
        gone = set(dropped)
        kept = tuple(c for i, c in enumerate(self.cuts) if i not in gone)
        return ColumnBins(self.name, NUMERIC, kept)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "cuts": list(self.cuts),
                "categories": list(self.categories)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ColumnBins:
        try:
            return cls(str(data["name"]), str(data["kind"]), tuple(float(c) for c in data["cuts"]),
                       tuple(str(c) for c in data["categories"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise VflError(f"binning state is damaged ({type(exc).__name__}: {exc}); "
                           "run the binning again") from None


@dataclass(frozen=True)
class Binning:
    """A party's bins of its own columns, fitted on its own training rows."""

    columns: tuple[ColumnBins, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise VflError("binning state is damaged: a column is binned twice")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnBins:
        if name not in self._index:
            raise VflError(f"column {name!r} is not binned; binned columns: "
                           f"{', '.join(self.names[:12])}")
        return self.columns[self._index[name]]

    def replace(self, column: ColumnBins) -> Binning:
        """This binning with one column's bins replaced (after merging, say)."""
        i = self._index[column.name]
        return Binning((*self.columns[:i], column, *self.columns[i + 1:]))

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Bin indices, one row per row of ``df`` and one column per binned column (int64)."""
        absent = [n for n in self.names if n not in df.columns]
        if absent:
            raise DataError(f"the data has no column {absent[0]!r}, which this binning bins")
        out = np.empty((len(df), len(self.columns)), dtype=np.int64)
        for j, col in enumerate(self.columns):
            out[:, j] = col.transform(df[col.name])
        return out

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "columns": [c.to_json() for c in self.columns]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Binning:
        if not isinstance(data, Mapping) or data.get("version") != 1 or not isinstance(
                data.get("columns"), list):
            raise VflError("binning state is damaged or from another version; "
                           "run the binning again")
        return cls(tuple(ColumnBins.from_json(c) for c in data["columns"]))


# ----- fitting ---------------------------------------------------------------------------------
def _quantile_cuts(x: np.ndarray, n_value_bins: int) -> np.ndarray:
    distinct = np.unique(x)
    if len(distinct) <= n_value_bins:
        midpoints = (distinct[:-1] + distinct[1:]) / 2  # one bin per distinct value
        return np.asarray(midpoints, dtype=float)
    # scikit-learn's HistGradientBoosting (1.6+) takes these percentiles with this method
    q = np.percentile(x, np.linspace(0, 100, n_value_bins + 1)[1:-1],
                      method="averaged_inverted_cdf")
    return np.asarray(np.unique(q), dtype=float)


def _numeric_cuts(x: np.ndarray, method: str, max_bins: int) -> np.ndarray:
    x = x[~np.isnan(x)]
    if not len(x):
        return np.empty(0)
    if method == "quantile":
        cuts = _quantile_cuts(x, max_bins - 1)
    else:
        cuts = np.linspace(x.min(), x.max(), max_bins)[1:-1]
    # a cut at (or above) the largest training value would only make an empty top bin
    return np.asarray(cuts[np.isfinite(cuts) & (cuts < x.max())], dtype=float)


def _categories(values: pd.Series, max_bins: int, min_share: float) -> tuple[str, ...]:
    text = as_text(values)
    counts = text.value_counts(dropna=True)
    if not len(counts):
        return ()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    kept = [str(c) for c, n in ranked if n >= min_share * len(values)]
    return tuple(kept[: max_bins - 2])


def _check_fit(method: str, max_bins: int, min_share: float) -> None:
    if method not in METHODS:
        raise VflError(f"binning method must be one of {', '.join(METHODS)}, not {method!r}")
    if not MIN_BINS <= max_bins <= MAX_BINS:
        raise VflError(f"max_bins must be between {MIN_BINS} and {MAX_BINS} (the missing bin "
                       f"included), not {max_bins}")
    if not 0 <= min_share < 1:
        raise VflError(f"min_share must be at least 0 and below 1, not {min_share}")


def fit_column(values: pd.Series, *, name: str | None = None, method: str = "quantile",
               max_bins: int = 10, cuts: Sequence[float] | None = None,
               categorical: bool | None = None, min_share: float = MIN_SHARE) -> ColumnBins:
    """Fit the bins of one column on its training values.

    Args:
        values: the column's training cells (missing as NA).
        name: the column name (default ``values.name``).
        method: ``quantile``, ``equal-width`` or ``cuts`` (numeric columns).
        max_bins: bins in all, the missing bin included.
        cuts: the cut points for ``method="cuts"``.
        categorical: bin by category; default: exactly when the column holds text.
        min_share: a category needs this share of the training rows for a bin of its own.

    Raises:
        VflError: a parameter is out of range, or cut points are missing or not finite.
        DataError: a text cell in a column binned as numbers.
    """
    _check_fit(method, max_bins, min_share)
    label = str(values.name if name is None else name)
    if categorical is None:
        import pandas as pd

        types = pd.api.types
        categorical = not types.is_numeric_dtype(values) or types.is_bool_dtype(values)
    if categorical:
        return ColumnBins(label, CATEGORY, categories=_categories(values, max_bins, min_share))
    x = as_numbers(values, label)
    if method == "cuts":
        if cuts is None:
            raise VflError(f"column {label!r}: method 'cuts' needs cut points")
        given = sorted({float(c) for c in cuts})
        if not all(math.isfinite(c) for c in given) or len(given) + 2 > MAX_BINS:
            raise VflError(f"column {label!r}: cut points must be finite numbers, at most "
                           f"{MAX_BINS - 2} of them")
        return ColumnBins(label, NUMERIC, tuple(given))
    return ColumnBins(label, NUMERIC, tuple(float(c) for c in _numeric_cuts(x, method, max_bins)))


def fit_binning(df: pd.DataFrame, columns: Sequence[str], *, method: str = "quantile",
                max_bins: int = 10, cuts: Mapping[str, Sequence[float]] | None = None,
                categorical: Iterable[str] = (), min_share: float = MIN_SHARE) -> Binning:
    """Fit the bins of ``columns`` on a party's training rows ``df``.

    Text columns, and those named in ``categorical``, are binned by category; a column named in
    ``cuts`` uses those cut points whatever ``method`` says; the rest use ``method``.

    Raises:
        DataError: a column is not in ``df``.
        VflError: as :func:`fit_column`.
    """
    cuts = dict(cuts or {})
    forced = set(categorical)
    absent = [c for c in [*columns, *cuts, *forced] if c not in df.columns]
    if absent:
        shown = ", ".join(map(str, df.columns[:12]))
        raise DataError(f"no column {absent[0]!r} to bin; the columns are: {shown}")
    return Binning(tuple(
        fit_column(df[c], name=c, method="cuts" if c in cuts else method, max_bins=max_bins,
                   cuts=cuts.get(c), categorical=True if c in forced else None, min_share=min_share)
        for c in columns))


# ----- opaque bin ids --------------------------------------------------------------------------
@dataclass(frozen=True)
class OpaqueIds:
    """A secret numbering of every (column, bin) of a party: ``keys[id] = (column, bin)``."""

    keys: tuple[tuple[str, int], ...]

    def lookup(self, opaque: int) -> tuple[str, int]:
        """The (column, bin) behind an id a peer sent back.

        Raises:
            VflError: the id is not one of this party's.
        """
        if not isinstance(opaque, (int, np.integer)) or not 0 <= int(opaque) < len(self.keys):
            raise VflError(f"bin id {str(opaque)[:20]!r} is not one this party gave out")
        return self.keys[int(opaque)]

    def ids(self, column: str) -> np.ndarray:
        """The id of each bin of ``column``, in bin order."""
        found = {b: i for i, (c, b) in enumerate(self.keys) if c == column}
        if not found:
            raise VflError(f"column {column!r} has no bin ids")
        return np.array([found[b] for b in range(len(found))], dtype=np.int64)

    def to_json(self) -> list[list[Any]]:
        return [[c, b] for c, b in self.keys]

    @classmethod
    def from_json(cls, data: Sequence[Sequence[Any]]) -> OpaqueIds:
        try:
            return cls(tuple((str(c), int(b)) for c, b in data))
        except (TypeError, ValueError) as exc:
            raise VflError(f"bin id state is damaged ({exc}); run the binning again") from None


def opaque_ids(binning: Binning, rng: random.Random | None = None) -> OpaqueIds:
    """Number every (column, bin) of ``binning`` in a random order.

    The order comes from the operating system's CSPRNG (``random.SystemRandom``) unless a test
    passes ``rng``: a peer that sees ids learns neither which column a bin belongs to nor
    where it lies among the column's bins.
    """
    keys = [(c.name, b) for c in binning.columns for b in range(c.n_bins)]
    (rng or random.SystemRandom()).shuffle(keys)
    return OpaqueIds(tuple(keys))
