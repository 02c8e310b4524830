"""woe-binning's per-bin leaks on the full default_credit (30,000 aligned rows), measured by the
attacks of tests/privacy/test_woe_leaks.py on a real job between two workspaces (in-process,
512-bit test keys: what each party learns does not depend on the key size).

Binning as recipes/scorecard_default_credit.toml: quantile, 10 bins, monotone, test_fraction
0.2, seed 42, min_bin_rows 10. Prints one JSON line:

* the passive party's label AUC from its own WOE (sum over its columns; best single column), on
  its 24,000 training rows and on the 6,000 other aligned rows;
* for scale, the AUC of scikit-learn's LogisticRegression on the passive party's raw columns
  (trained on the training rows with the labels, scored on the others): what a model of its
  columns could reach with the labels in hand;
* the share of the passive party's 10 columns the active party links to their names from the
  bin counts it received (public sample: the passive's other aligned rows).

    python tests/benchmarks/bench_woe_leaks.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "privacy")]

import conftest  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from test_woe_leaks import (  # noqa: E402
    active_linking,
    labels_of,
    linking_accuracy,
    own_rows,
    passive_attack,
    passive_label_auc,
)

from vfl_cli import jobs  # noqa: E402
from vfl_cli.workspace import Workspace  # noqa: E402

PARAMS = {"alignment": "al", "method": "quantile", "bins": 10, "monotone": True,
          "test_fraction": 0.2, "seed": 42, "min_bin_rows": 10}


def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bank = conftest.make_party(root, "bank", "active",
                                   conftest.FATE / "default_credit_hetero_guest.csv",
                                   label_column="y")
        bureau = conftest.make_party(root, "bureau", "passive",
                                     conftest.FATE / "default_credit_hetero_host.csv")
        conftest.introduce(root, "bank", "bureau")
        jobs.start_job(Workspace(bank), "psi", {}, job="al")
        conftest.drive([bank, bureau], "al")
        jobs.start_job(Workspace(bank), "woe-binning", PARAMS, job="wb")
        conftest.drive([bank, bureau], "wb")
        labels = labels_of(bank)
        train = passive_label_auc(passive_attack(bureau, "wb", PARAMS), labels)
        test = passive_label_auc(passive_attack(bureau, "wb", PARAMS, test=True), labels)
        rows, others = own_rows(bureau, PARAMS)
        cols = Workspace(bureau).features
        fit = LogisticRegression(max_iter=1000).fit(
            rows[cols].fillna(0), [labels[str(i)] for i in rows["id"]])
        lr_auc = roc_auc_score([labels[str(i)] for i in others["id"]],
                               fit.predict_proba(others[cols].fillna(0))[:, 1])
        guess = active_linking(bank, "wb", others[cols], PARAMS)
        share = linking_accuracy(guess, bureau, "wb")
        withheld = sum(len(c["withheld"]) for c in
                       jobs.load_state(Workspace(bank), "wb")[0].results["passive"]["bureau"])
    print(json.dumps({
        "rows_train": len(rows), "rows_other": len(others),
        "passive_auc_train": train, "passive_auc_other_rows": test,
        "sklearn_lr_on_passive_columns_auc_other_rows": round(float(lr_auc), 4),
        "active_links_columns": share, "passive_columns": len(cols),
        "withheld_bins": withheld, "seconds": round(time.perf_counter() - t0, 1),
        "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
