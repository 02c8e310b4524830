"""SecureBoost accuracy in plaintext: the reference (models/trees.py) against sklearn's
HistGradientBoostingClassifier on each recipe's settings and a split_rows split of the joined rows.

    python tests/benchmarks/bench_secureboost_reference.py recipes/sbt_breast.toml \
        recipes/sbt_default_credit.toml recipes/sbt_vehicle.toml
"""
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tomllib
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from vfl_cli.models import trees
from vfl_cli.models.binning import fit_binning
from vfl_cli.models.features import split_rows


def compare(recipe: str) -> None:
    """Fit the reference and sklearn on one recipe's split; print both test scores."""
    rec = tomllib.loads(Path(recipe).read_text())
    tr, ev = rec["train"], rec["evaluate"]
    fr = [pd.read_csv(Path("recipes") / p["data"]) for p in rec["party"]]
    df = fr[0].merge(fr[1], on="id", suffixes=("", "_p"))
    y = df.pop("y").to_numpy()
    X = df.drop(columns=["id"])
    sp = split_rows(len(y), ev["test_fraction"], ev["seed"], ids=df["id"].astype(str).to_numpy())
    blocks = [fr[0].shape[1] - 2, fr[1].shape[1] - 1]
    b = fit_binning(X.iloc[sp.train], list(X.columns), max_bins=tr["max_bins"])
    Xb = b.transform(X)
    nb = np.array([c.n_bins for c in b.columns])
    p = trees.BoostParams(trees=tr["trees"], depth=tr["depth"], learning_rate=tr["learning_rate"], l2=tr["l2"],
                          min_samples_leaf=tr["min_samples_leaf"], objective=tr["objective"], seed=ev["seed"])
    k = int(y.max()) + 1 if p.objective == "multiclass" else 2
    t = time.perf_counter()
    bo = trees.fit(Xb[sp.train], nb, y[sp.train], p, n_classes=k, blocks=blocks, active_trees=tr["active_trees"])
    t = time.perf_counter() - t
    raw = bo.raw(Xb[sp.test])
    sk = HistGradientBoostingClassifier(
        max_iter=p.trees, max_depth=p.depth, max_bins=tr["max_bins"] - 1, learning_rate=p.learning_rate,
        l2_regularization=p.l2, min_samples_leaf=p.min_samples_leaf, max_leaf_nodes=None, early_stopping=False,
    ).fit(X.iloc[sp.train], y[sp.train])
    Xt, yt = X.iloc[sp.test], y[sp.test]
    if p.objective == "multiclass":
        ours, theirs, m = np.mean(raw.argmax(1) == yt), np.mean(sk.predict(Xt) == yt), "accuracy"
    else:
        ours, theirs, m = roc_auc_score(yt, raw[:, 0]), roc_auc_score(yt, sk.decision_function(Xt)), "auc"
    print(f"{recipe}: reference {m} {ours:.4f} (fit {t:.1f} s), sklearn {theirs:.4f}, diff {ours - theirs:+.4f}")


if __name__ == "__main__":
    for r in sys.argv[1:]:
        compare(r)
