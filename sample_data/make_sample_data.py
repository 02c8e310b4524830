"""Write the two-party breast-cancer sample data used by recipes and tests.

The data is scikit-learn's bundled copy of the UCI Breast Cancer Wisconsin (Diagnostic) data
set (569 people, 30 features), so nothing is downloaded. It is split vertically:

* ``breast_active.csv``: ``id``, ``label`` (1 = malignant, 0 = benign) and the 10 "mean"
  features; the active party.
* ``breast_passive.csv``: ``id`` and the 20 "error" and "worst" features; the passive party.

Each party holds about 85% of the people, so they share about 70%, and each file lists its
rows in its own random order: alignment has real work to do.

Usage::

    python sample_data/make_sample_data.py            # rewrite the files next to this script
    python sample_data/make_sample_data.py --out DIR  # write them into DIR instead

Running it again reproduces byte-identical files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

SEED = 20240611
ACTIVE_FILE = "breast_active.csv"
PASSIVE_FILE = "breast_passive.csv"
N_ACTIVE_FEATURES = 10
SHARE_BOTH = 0.70
SHARE_ACTIVE_ONLY = 0.15  # the passive-only share is the remainder, about 0.15
SIGNIFICANT_DIGITS = 4  # the precision the UCI data is published with


def _snake_case(name: str) -> str:
    return "_".join(name.lower().split())


def _round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    # Formatting through "%g" rounds to significant digits, whatever the magnitude of each value.
    rounded: np.ndarray = np.vectorize(lambda v: float(f"{v:.{digits}g}"))(values)
    return rounded


def make_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the active and passive tables.

    Returns:
        ``(active, passive)`` data frames, rows in the order they are written.
    """
    data = load_breast_cancer()
    n = data.data.shape[0]
    columns = [_snake_case(str(name)) for name in data.feature_names]
    features = pd.DataFrame(_round_significant(data.data, SIGNIFICANT_DIGITS), columns=columns)
    ids = pd.Series([f"p{i:05d}" for i in range(n)], name="id")
    # scikit-learn codes malignant as 0; the positive class of a diagnostic model is the disease.
    label = pd.Series(1 - data.target.astype(int), name="label")

    # RandomState, not default_rng: its stream is frozen across NumPy versions, so the files
    # stay byte-identical when NumPy is upgraded.
    rng = np.random.RandomState(SEED)
    people = rng.permutation(n)
    n_both = round(SHARE_BOTH * n)
    n_active_only = round(SHARE_ACTIVE_ONLY * n)
    both = people[:n_both]
    active_only = people[n_both : n_both + n_active_only]
    passive_only = people[n_both + n_active_only :]

    active_rows = rng.permutation(np.concatenate([both, active_only]))
    passive_rows = rng.permutation(np.concatenate([both, passive_only]))

    active = pd.concat([ids, label, features.iloc[:, :N_ACTIVE_FEATURES]], axis=1).iloc[active_rows]
    passive = pd.concat([ids, features.iloc[:, N_ACTIVE_FEATURES:]], axis=1).iloc[passive_rows]
    return active.reset_index(drop=True), passive.reset_index(drop=True)


def write_sample_data(out: Path) -> tuple[Path, Path]:
    """Write both CSV files into ``out`` (created if missing), replacing earlier copies.

    Args:
        out: Folder to write into.

    Returns:
        The paths of the active and the passive file.
    """
    out.mkdir(parents=True, exist_ok=True)
    active, passive = make_frames()
    paths = (out / ACTIVE_FILE, out / PASSIVE_FILE)
    for frame, path in zip((active, passive), paths, strict=True):
        # Fixed line ending so the bytes do not depend on the platform.
        frame.to_csv(path, index=False, lineterminator="\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder to write the CSV files into (default: this script's folder)",
    )
    args = parser.parse_args(argv)
    for path in write_sample_data(args.out):
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
