"""A party's own features, prepared locally for training: aligned, split, imputed, standardised.

Every step here runs on one party's own columns with statistics that party computes itself;
nothing is shared. All parties derive the same train/test split from the job's ``seed`` and the
aligned ids (a keyed hash of each id, so not the alignment's shuffled order), so no split needs
to be sent.

Missing values (empty cells, NA): replaced by the column's mean over the training rows, before
standardising (so they become 0). Columns that are constant on the training rows are centred
but not scaled. Non-numeric columns are refused. With ``whiten``, a party also decorrelates its
own columns (PCA whitening on its own training rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vfl_cli.errors import DataError

if TYPE_CHECKING:  # imported where a frame is read: a job step from its state never needs it
    import pandas as pd


def aligned_rows(df: pd.DataFrame, arrays: dict[str, np.ndarray], id_column: str, job: str) -> pd.DataFrame:
    """This party's rows in the order alignment job ``job`` agreed (its state ``arrays``).

    Refuses a data file whose ids at those rows are no longer the aligned ids (the file was
    edited, re-sorted or replaced after the alignment): rows would otherwise be silently
    matched with another party's rows of other people.

    Raises:
        DataError: the file changed since the alignment; align again.
    """
    rows = arrays["aligned_rows"]
    again = f"the data file changed since alignment job {job}; run the alignment again"
    if len(rows) and int(rows.max()) >= len(df):
        raise DataError(f"{again} (it has {len(df)} rows, the alignment used row {rows.max() + 1})")
    picked = df.iloc[rows]
    expected = arrays.get("aligned_ids")
    if expected is not None:
        now = picked[id_column].astype(str).str.strip().to_numpy(dtype=str)
        differ = np.flatnonzero(now != expected)
        if differ.size:
            row = int(rows[differ[0]]) + 1
            raise DataError(f"{again} (data row {row} now holds id {now[differ[0]]!r}, "
                            f"aligned as {str(expected[differ[0]])!r})")
    return picked


@dataclass(frozen=True)
class Split:
    """Row positions (into the aligned order) of the training and test sets."""

    train: np.ndarray
    test: np.ndarray


def split_rows(n: int, test_fraction: float, seed: int, ids: np.ndarray | None = None) -> Split:
    """The job's train/test split of ``n`` aligned rows; identical for every party.

    With ``ids`` (the aligned ids, in alignment order), the split is drawn from the ids
    themselves: each id's rank under a hash keyed by the public job ``seed``
    (:func:`id_order`). The same ids and seed give the same test rows, whatever order an
    alignment put them in, on every run and machine; ``train`` and ``test`` then list their
    positions in that hash order, so mini-batches and sums over rows are reproducible too.
    The split is label-free (only ids and the public seed go into it), so it is not stratified:
    a split chosen by the active party with its labels would tell the passive parties, who see
    the test ids, something about those labels. Without ``ids``: a permutation of positions.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction must be in [0, 1), not {test_fraction}")
    if ids is not None and len(ids) != n:
        raise DataError(f"{len(ids)} aligned ids for {n} aligned rows")
    perm = id_order(ids, seed) if ids is not None else np.random.default_rng([seed, 0x5EED]).permutation(n)
    n_test = int(round(n * test_fraction))
    if n - n_test < 2:
        raise DataError(f"only {n} aligned rows: too few to train on")
    if ids is not None:
        return Split(train=perm[n_test:], test=perm[:n_test])
    return Split(train=np.sort(perm[n_test:]), test=np.sort(perm[:n_test]))


def validation_split(n_train: int, fraction: float) -> tuple[slice, slice]:
    """``(validation, fit)``: positions among the ``n_train`` training rows (in the job's
    train order, public: from the ids and the job's seed) held out to stop on, and trained on.

    The first ``round(fraction n_train)`` rows validate, the rest train; ``fraction`` 0 (or too
    few rows to spare one and keep two) holds out nothing. Label-free, as the test split is.
    """
    n_val = int(round(n_train * fraction)) if fraction > 0 else 0
    if n_val < 1 or n_train - n_val < 2:
        n_val = 0
    return slice(0, n_val), slice(n_val, n_train)


def id_order(ids: np.ndarray, seed: int) -> np.ndarray:
    """Positions of ``ids`` sorted by BLAKE2b of each id keyed by the public ``seed`` (ties by id).

    The seed is public, so this is no secret: it only makes the order independent of where
    each id sits in the aligned order, and random-looking (not by id value, not by label).
    """
    key = int(seed).to_bytes(8, "big")
    digests = np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8, key=key,
                                                        person=b"vfl-split").digest(), "big")
                        for i in ids], dtype=np.uint64)
    return np.lexsort((np.asarray(ids, dtype=str), digests)).astype(np.int64)


def numeric_matrix(df: pd.DataFrame, columns: list[str], *, what: str) -> np.ndarray:
    """The given columns as float64, NaN for missing cells; refuses text columns and absent ones."""
    out = np.empty((len(df), len(columns)), dtype=np.float64)
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise DataError(f"{what}: the data file has no column {absent[0]!r} any more; this job (or model) "
                        "was started with it. Start a new job (its columns are read from the file), or "
                        "put the column back")
    import pandas as pd

    for j, col in enumerate(columns):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna() & (df[col].astype(str).str.strip() != "")
        if bad.any():
            example = df[col][bad].iloc[0]
            raise DataError(f"{what}: column {col!r} is text, not numbers (e.g. {example!r}); leave it out "
                            f"with 'vfl columns --exclude {col}' or encode it with 'vfl columns --encode "
                            f"{col}=onehot' (or ordinal, frequency), and run this command again")
        out[:, j] = values.to_numpy(dtype=np.float64)
    return out


@dataclass(frozen=True)
class Standardiser:
    """Per-column mean/scale from the training rows; kept in the party's model part."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardiser:
        mean = np.nanmean(X, axis=0) if len(X) else np.zeros(X.shape[1])
        mean = np.where(np.isnan(mean), 0.0, mean)
        filled = np.where(np.isnan(X), mean, X)
        scale = filled.std(axis=0)
        return cls(mean=mean, scale=np.where(scale > 0, scale, 1.0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        z: np.ndarray = (np.where(np.isnan(X), self.mean, X) - self.mean) / self.scale
        return z

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale}

    def to_standardised(self, w: np.ndarray) -> np.ndarray:
        """Weights on the transformed columns as weights on the standardised columns."""
        return w


@dataclass(frozen=True)
class Whitener:
    """Per-party PCA whitening: standardised columns rotated and scaled to uncorrelated ones.

    Gradient descent slows down with correlated columns (the loss surface is a narrow valley);
    whitening a party's own columns removes the correlation *within* that party, computed on
    its own training rows only. Directions with (almost) no variance are scaled as if their
    variance were ``1e-9`` of the largest, so they stay near 0 instead of exploding.
    """

    mean: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Whitener:
        std = Standardiser.fit(X)
        Z = std.transform(X)
        cov = Z.T @ Z / max(len(Z), 1)
        values, vectors = np.linalg.eigh(cov)
        floor = max(float(values.max(initial=0.0)), 1.0) * 1e-9
        return cls(mean=std.mean, scale=std.scale, rotation=vectors / np.sqrt(np.maximum(values, floor)))

    def transform(self, X: np.ndarray) -> np.ndarray:
        z: np.ndarray = ((np.where(np.isnan(X), self.mean, X) - self.mean) / self.scale) @ self.rotation
        return z

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale, "whiten": self.rotation}

    def to_standardised(self, w: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.rotation @ w
        return out


def transform_from_arrays(arrays: dict[str, np.ndarray]) -> Standardiser | Whitener:
    """The feature transform a party saved with its model part."""
    if "whiten" in arrays:
        return Whitener(arrays["mean"], arrays["scale"], arrays["whiten"])
    return Standardiser(arrays["mean"], arrays["scale"])


def prepare(X_raw: np.ndarray, split: Split, *, whiten: bool = False) -> tuple[np.ndarray, Any]:
    """Fit the standardiser (or whitener) on the training rows and transform all rows."""
    t: Standardiser | Whitener = (Whitener if whiten else Standardiser).fit(X_raw[split.train])
    return t.transform(X_raw), t


# ----- encoding text columns -------------------------------------------------------------------
#: How a text (categorical) column can be turned into numbers, per party and per job.
ENCODINGS = ("onehot", "ordinal", "frequency")
#: Empty cells of an encoded column are a category of their own.
MISSING = "(missing)"
#: More categories than this make one-hot columns that few rows fill: use frequency or ordinal.
MAX_ONEHOT = 50


def _as_text(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return text.where(text.notna() & (text != ""), MISSING).astype(object)


@dataclass(frozen=True)
class Encoders:
    """A party's encoders of its text columns, fitted on its own training rows of one job.

    ``specs`` maps a column to its kind and the categories seen in the training rows (in sorted
    order), plus each category's share of the training rows for ``frequency``. One-hot and
    ordinal encoding are scikit-learn's ``OneHotEncoder`` / ``OrdinalEncoder`` in a
    ``ColumnTransformer`` rebuilt from these categories; frequency encoding (which scikit-learn
    lacks) maps a category to its share. A category the training rows never had becomes all
    zeros (one-hot), a missing value imputed like any other (ordinal) or 0 (frequency).
    """

    specs: dict[str, dict[str, Any]]

    @classmethod
    def fit(cls, train: pd.DataFrame, kinds: dict[str, str]) -> Encoders:
        specs: dict[str, dict[str, Any]] = {}
        for col, kind in kinds.items():
            if kind not in ENCODINGS:
                raise DataError(f"column {col!r}: unknown encoding {kind!r}; use one of {', '.join(ENCODINGS)}")
            counts = _as_text(train[col]).value_counts()
            categories = sorted(str(c) for c in counts.index)
            if kind == "onehot" and len(categories) > MAX_ONEHOT:
                raise DataError(f"column {col!r} has {len(categories)} categories in the training rows, too many "
                                f"for one-hot (at most {MAX_ONEHOT}); encode it with {col}=frequency or {col}=ordinal")
            spec: dict[str, Any] = {"kind": kind, "categories": categories}
            if kind == "frequency":
                spec["frequencies"] = [float(counts[c]) / max(len(train), 1) for c in categories]
            specs[col] = spec
        return cls(specs)

    def names(self, column: str) -> list[str]:
        """The numeric columns that replace ``column``."""
        spec = self.specs[column]
        return [f"{column}={c}" for c in spec["categories"]] if spec["kind"] == "onehot" else [column]

    def expand(self, features: list[str]) -> list[str]:
        """A feature list with each encoded column replaced by the columns it becomes."""
        return [name for col in features for name in (self.names(col) if col in self.specs else [col])]

    def _transformer(self) -> Any:
        from sklearn.compose import ColumnTransformer
        from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

        parts = []
        for col, spec in self.specs.items():
            cats = [spec["categories"]]
            if spec["kind"] == "onehot":
                parts.append((col, OneHotEncoder(categories=cats, handle_unknown="ignore", sparse_output=False,
                                                 dtype=np.float64), [col]))
            elif spec["kind"] == "ordinal":
                parts.append((col, OrdinalEncoder(categories=cats, handle_unknown="use_encoded_value",
                                                  unknown_value=np.nan, dtype=np.float64), [col]))
        if not parts:
            return None
        # categories are given, so fitting on the categories themselves only builds the encoders
        import pandas as pd

        longest = max(len(s["categories"]) for s in self.specs.values())
        frame = pd.DataFrame({c: [s["categories"][i % len(s["categories"])] for i in range(longest)]
                              for c, s in self.specs.items()})
        return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False).fit(frame)

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with every encoded column replaced by its numeric columns (other columns kept)."""
        woe = {c: s for c, s in self.specs.items() if s["kind"] == "woe"}
        if woe:  # a WOE column (vfl_cli.woe_select) becomes its bin's WOE
            from vfl_cli.woe_select import woe_frame

            rest = Encoders({c: s for c, s in self.specs.items() if c not in woe})
            return rest.transform(woe_frame(df, woe)) if rest.specs else woe_frame(df, woe)
        absent = [c for c in self.specs if c not in df.columns]
        if absent:
            raise DataError(f"the data file has no column {absent[0]!r} any more; this job (or model) encodes "
                            "it. Start a new job (its columns are read from the file), or put the column back")
        import pandas as pd

        text = pd.DataFrame({c: _as_text(df[c]) for c in self.specs}, index=df.index)
        out = df.drop(columns=list(self.specs))
        transformer = self._transformer()
        if transformer is not None:
            block = transformer.transform(text)
            names = [n for c, s in self.specs.items() if s["kind"] != "frequency" for n in self.names(c)]
            out = pd.concat([out, pd.DataFrame(block, columns=names, index=df.index)], axis=1)
        for col, spec in self.specs.items():
            if spec["kind"] == "frequency":
                share = dict(zip(spec["categories"], spec["frequencies"], strict=True))
                out[col] = text[col].map(lambda v, s=share: s.get(v, 0.0)).astype(np.float64)
        return out

    def to_json(self) -> dict[str, Any]:
        return {c: dict(s) for c, s in self.specs.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Encoders:
        return cls({str(c): dict(s) for c, s in data.items()})
