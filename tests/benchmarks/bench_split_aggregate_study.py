"""A design study, not a product path: split-nn if P learned from an aggregate gradient (issue #14).

Today the passive party P decrypts ``dL/dh`` for every row, so the active party A must noise each
row (docs/protocols/split-nn.md, "Label protection"), and on sets where P's columns carry the
signal that noise costs accuracy. The design studied here: A encrypts ``delta`` under its own key,
P computes its bottom's gradient from it under encryption (for a dense bottom, ``X^T [[G]]``),
masks it, A decrypts the masked sum and returns it, and P never holds a per-row value. What P
learns is its bottom's gradient per batch; to limit what one row's label moves it, each row's
contribution is clipped to ``C`` and Gaussian noise of ``z C`` is added to the sum (DP-SGD over
the labels). This script trains that on the plaintext reference (``split_spec.central_fit`` with
P's backward replaced, no per-row noise) and reports the test AUC against MLPClassifier of the same
shape, as ``bench_defaults_split.py`` does for the product, and one attack on what P would see:
the training rows of the first batch scored by ``x_i . dW[:, j]`` (P's first-layer gradient,
noised), the best unit, ``max(AUC, 1 - AUC)``.

    python tests/benchmarks/bench_split_aggregate_study.py --sets default_credit,vehicle --noise 4 --clip-percentile 90

Only a dense first layer (with or without a ReLU after it) is handled: the default bottom.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_defaults_split as bds  # noqa: E402  (the sets, the split, the standardisation)

from vfl_cli.models import split_spec as ss  # noqa: E402


class AggregateBackward:
    """P's backward as the aggregate design would give it: rows clipped to ``C`` (the
    ``percentile`` of the first batch's row norms), the sum noised by ``N(0, (z C)^2)``."""

    def __init__(self, z: float, percentile: float, rng: np.random.Generator) -> None:
        self.z, self.percentile, self.rng = z, percentile, rng
        self.clip: float | None = None
        self.first: tuple[np.ndarray, np.ndarray] | None = None
        self.plain = ss.backward

    def __call__(self, net: Any, grad: np.ndarray) -> np.ndarray:
        if net is None or not getattr(net, "passive_bottom", False):
            return self.plain(net, grad)
        dense = net.layers[0]
        x = dense._x
        pre = x @ dense.W + dense.b
        at_dense = grad * (pre > 0) if len(net.layers) > 1 else grad
        norms = np.linalg.norm(at_dense, axis=1) * np.sqrt((x**2).sum(axis=1) + 1)
        if self.clip is None:
            self.clip = float(np.percentile(norms[norms > 0], self.percentile))
        scale = np.minimum(1.0, self.clip / np.maximum(norms, 1e-12))
        out = self.plain(net, grad * scale[:, None])
        dense.dW += self.rng.normal(0.0, self.z * self.clip, dense.dW.shape)
        dense.db += self.rng.normal(0.0, self.z * self.clip, dense.db.shape)
        if self.first is None:
            self.first = (x.copy(), dense.dW.copy())
        return np.asarray(out)


def run(name: str, params: dict[str, Any], draws: int, z: float, percentile: float) -> str:
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier

    from vfl_cli.models.features import split_rows, validation_split

    ids, XA, XP, y = bds.joined(name)
    split = split_rows(len(y), params["test_fraction"], params["seed"], ids=ids)
    XA, XP = bds.standardise(XA, split.train), bds.standardise(XP, split.train)
    spec = ss.parse_spec(params.get("model"))
    rng = np.random.default_rng(2026)  # the seed draws of bench_defaults_split.py
    aucs, attack = [], []
    for _ in range(draws):
        seeds = (int(rng.integers(1 << 62)), int(rng.integers(1 << 62)))
        hook = AggregateBackward(z, percentile, np.random.default_rng(seeds[0]))
        build, protect, backward = ss.SplitModel.build, ss.protect, ss.backward

        def built(*a: Any, build: Any = build, **kw: Any) -> ss.SplitModel:
            model: ss.SplitModel = build(*a, **kw)
            model.bottom_p.passive_bottom = True  # type: ignore[union-attr]
            return model

        ss.SplitModel.build = built  # type: ignore[assignment,method-assign]
        ss.protect = lambda delta, *a, **kw: np.array(delta, dtype=np.float64)  # no per-row noise
        ss.backward = hook  # type: ignore[assignment]
        try:
            model, _ = ss.central_fit(spec, XA[split.train], XP[split.train], y[split.train], params, seeds=seeds)
        finally:
            ss.SplitModel.build, ss.protect, ss.backward = build, protect, backward  # type: ignore[method-assign]
        aucs.append(float(roc_auc_score(y[split.test], model.predict(XA[split.test], XP[split.test]).ravel())))
        assert hook.first is not None
        x, dW = hook.first
        # full batch (the default): the first batch is every row trained on, after the validation rows
        _, fit = validation_split(len(split.train), float(params.get("validation_fraction", 0.0)))
        rows = y[split.train][fit][: len(x)]
        attack.append(max(max(a, 1 - a) for a in (roc_auc_score(rows, x @ dW[:, j]) for j in range(dW.shape[1]))))
    X = np.hstack([XA, XP])
    mlp = MLPClassifier(hidden_layer_sizes=(2 * spec.units, spec.units), random_state=0)
    mlp.fit(X[split.train], y[split.train])
    ref = float(roc_auc_score(y[split.test], mlp.predict_proba(X[split.test])[:, 1]))
    mean = float(np.mean(aucs))
    return (f"{name:14} noise {z:g} clip p{percentile:g}: AUC {mean:.4f} ({', '.join(f'{a:.4f}' for a in aucs)}) "
            f"MLP {ref:.4f} gap {ref - mean:+.4f} worst {ref - min(aucs):+.4f} "
            f"first-gradient attack {max(attack):.3f}")


def main() -> None:
    import tempfile
    import warnings

    from vfl_cli.protocol import split_nn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(bds.SETS))
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--noise", type=float, default=4.0, help="z: the noise's standard deviation over the clip")
    ap.add_argument("--clip-percentile", type=float, default=90.0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", module="sklearn")
    params = dict(split_nn.DEFAULTS)
    with tempfile.TemporaryDirectory() as tmp:
        bds.bench_defaults.write_sets(Path(tmp))
        for name in args.sets.split(","):
            print(run(name, params, args.draws, args.noise, args.clip_percentile), flush=True)


if __name__ == "__main__":
    main()
