"""Write the multi-node (hfl) sample data used by the hfl recipes and tests.

The rows are scikit-learn's bundled copy of the UCI Breast Cancer Wisconsin (Diagnostic) data
(569 people, 30 features; nothing is downloaded; source and licence in ``README.md``), split
*horizontally*: every file has the same columns, ``id``, ``label`` (1 = malignant) and the 30
features, for different people.

* ``hfl/server.csv`` (169 rows): the parameter server's rows; an hfl job splits them into
  validation rows (Actor-Critic reward, standardisation) and test rows (metrics).
* ``hfl/node0.csv`` (140 rows): the largest node, with 40% of its labels flipped (poisoned).
* ``hfl/node1.csv`` ... ``hfl/node4.csv`` (50 rows each): honest nodes.
* ``hfl/predictor.csv`` (60 rows, no label): rows a prediction worker scores.

Usage::

    python sample_data/make_hfl_data.py            # rewrite sample_data/hfl/
    python sample_data/make_hfl_data.py --out DIR  # write the files into DIR instead

Running it again reproduces byte-identical files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

SEED = 20261122
SERVER_ROWS = 169
PREDICTOR_ROWS = 60
NODE_ROWS = (140, 50, 50, 50, 50)
FLIP_SHARE = 0.4  # of node 0's labels
SIGNIFICANT_DIGITS = 4


def _snake_case(name: str) -> str:
    return "_".join(name.lower().split())


def make_frames() -> dict[str, pd.DataFrame]:
    """Build every file's table.

    Returns:
        File name -> data frame, rows in the order they are written.
    """
    data = load_breast_cancer()
    n = data.data.shape[0]
    columns = [_snake_case(str(name)) for name in data.feature_names]
    rounded = np.vectorize(lambda v: float(f"{v:.{SIGNIFICANT_DIGITS}g}"))(data.data)
    table = pd.concat(
        [
            pd.Series([f"p{i:05d}" for i in range(n)], name="id"),
            pd.Series(1 - data.target.astype(int), name="label"),  # 1 = malignant
            pd.DataFrame(rounded, columns=columns),
        ],
        axis=1,
    )
    # RandomState: its stream is frozen across NumPy versions, so the files stay byte-identical.
    rng = np.random.RandomState(SEED)
    people = rng.permutation(n)
    sizes = [SERVER_ROWS, *NODE_ROWS, PREDICTOR_ROWS]
    if sum(sizes) != n:
        raise ValueError(f"the parts hold {sum(sizes)} rows, the data {n}")
    parts = np.split(people, np.cumsum(sizes)[:-1])
    frames = {"server.csv": table.iloc[parts[0]].reset_index(drop=True)}
    for index, rows in enumerate(parts[1:-1]):
        frame = table.iloc[rows].reset_index(drop=True)
        if index == 0:
            flipped = rng.permutation(len(frame))[: round(FLIP_SHARE * len(frame))]
            frame.loc[flipped, "label"] = 1 - frame.loc[flipped, "label"]
        frames[f"node{index}.csv"] = frame
    frames["predictor.csv"] = table.iloc[parts[-1]].drop(columns=["label"]).reset_index(drop=True)
    return frames


def write_hfl_data(out: Path) -> list[Path]:
    """Write every file into ``out`` (created if missing), replacing earlier copies.

    Args:
        out: Folder to write into.

    Returns:
        The paths written.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in make_frames().items():
        path = out / name
        frame.to_csv(path, index=False, lineterminator="\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "hfl",
        help="folder to write the CSV files into (default: sample_data/hfl next to this script)",
    )
    args = parser.parse_args(argv)
    for path in write_hfl_data(args.out):
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
