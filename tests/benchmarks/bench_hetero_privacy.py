"""hetero-lr on FATE's breast (569 ids): finding 6 and the cost of label noise (issue #14).

One alignment (so one train/test split) is shared by every setting; each setting is one full
training job between two workspaces, in-process, with 512-bit test keys (the figures do not depend
on the key size). For each ``label_epsilon`` it prints one JSON line: the joint model's test AUC,
the passive party's first-gradient direction AUC and its own weights' AUC (on training and test
rows), the noise per row and the epsilon spent. The first line is the active party alone
(scikit-learn, same split, same L2), for scale.

    python tests/benchmarks/bench_hetero_privacy.py --epochs 40 0 8 4 2 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "privacy")]

import conftest  # noqa: E402 (found through the sys.path above)
from test_hetero_linear_attacks import Views, _context, _drive, _received, exact_gradient  # noqa: E402

from vfl_cli import jobs  # noqa: E402
from vfl_cli.privacy import roc_auc  # noqa: E402
from vfl_cli.protocol import hetero_linear as hl  # noqa: E402
from vfl_cli.workspace import Workspace  # noqa: E402

FATE = HERE.parents[1] / "sample_data" / "fate"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("epsilons", type=float, nargs="+")
    args = ap.parse_args()
    params = {"alignment": "al", "epochs": args.epochs, "batch_size": 0, "optimizer": "adam",
              "learning_rate": 0.05, "l2": 0.01, "loss_every": 5, "test_fraction": 0.2, "seed": 42}
    root = Path(tempfile.mkdtemp(prefix="bench_hetero_privacy_"))
    a = conftest.make_party(root, "hospital", "active", FATE / "breast_hetero_guest.csv", label_column="y")
    p = conftest.make_party(root, "lab", "passive", FATE / "breast_hetero_host.csv")
    conftest.introduce(root, "hospital", "lab")
    jobs.start_job(Workspace(a), "psi", {}, job="al")
    _drive([a, p], "al", None)
    for i, eps in enumerate(args.epsilons):
        job, views, t0 = f"tr{i}", Views(), time.time()
        jobs.start_job(Workspace(a), "hetero-lr", dict(params, label_epsilon=eps), job=job)
        _drive([a, p], job, views)
        data = hl.LinearData(_context(p, job), intercept=False)
        own = hl.LinearData(_context(a, job), intercept=False)
        tr, te = data.split.train, data.split.test
        assert own.y is not None
        y = own.y
        if i == 0:
            from sklearn.linear_model import LogisticRegression

            alone = LogisticRegression(C=1 / (0.01 * len(tr)), max_iter=2000).fit(own.X[tr], y[tr])
            auc = roc_auc(y[te], alone.decision_function(own.X[te]))
            print(json.dumps({"active_party_alone_test_auc": round(auc, 4)}))
        g0 = exact_gradient(_received(p, job, hl.REPLY)[0], views.masks["lab"][0], len(tr))
        w = jobs.load_state(Workspace(p), job)[0].arrays["weights"]
        res = jobs.load_state(Workspace(a), job)[0].results
        print(json.dumps({
            "label_epsilon": eps, "test_auc": round(res["metrics"]["test"]["auc"], 4),
            "first_gradient_direction_auc": round(roc_auc(y[tr], -(data.X[tr] @ g0)), 4),
            "own_weights_auc_train": round(roc_auc(y[tr], data.X[tr] @ w), 4),
            "own_weights_auc_test": round(roc_auc(y[te], data.X[te] @ w), 4),
            "sigma": round(res["privacy"]["label_noise_sigma"], 3),
            "spent": round(res["privacy"]["label_epsilon"], 3), "seconds": round(time.time() - t0, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
