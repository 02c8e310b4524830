"""split-nn's early stop (docs/protocols/split-nn.md, "Early stop on validation rows"), as P.

What the doc says P learns from it: one bit per epoch, whether A's validation loss improved
(``keep``), hence the epoch whose model was kept and when training stopped; and no gradient of a
validation row. Played as P with only its own archive and key: it reads the kept epoch from the
flags (the claim is exact), and every ``dL/dh`` it decrypts covers the rows trained on and nothing
else (the slots past them decrypt to zero).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_protocol_split_nn import small_parties, train
from test_split_nn_attacks import JOB, archived, slots_of
from test_split_nn_early_stop import STOPPING

from vfl_cli import jobs
from vfl_cli.models.features import split_rows, validation_split
from vfl_cli.protocol import split_nn
from vfl_cli.workspace import Workspace


def test_the_passive_party_learns_the_kept_epoch_and_no_validation_gradient(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(split_nn, "private_seed", lambda role: (1111, 2222)[role == "passive"])
    sample = Path(__file__).resolve().parents[2] / "sample_data"
    bank, bureau = small_parties(tmp_path, sample / "breast_active.csv", sample / "breast_passive.csv", "label", 120)
    train(bank, bureau, STOPPING, job=JOB)
    backs = archived(bureau, "backward")
    # P's reading: the last epoch whose backward said keep
    read = max(int(b.meta["epoch"]) for b in backs if b.meta["keep"])
    a = jobs.load_state(Workspace(bank), JOB)[0].results["model"]
    assert read == a["validation"]["kept_epoch"] and len(backs) == a["epochs_run"]
    # what P decrypts: dL/dh for the rows trained on (full batch), zero in every padding slot
    params = jobs.load_info(Workspace(bureau), JOB)["params"]
    n = len(jobs.load_state(Workspace(bureau), "al")[0].arrays["aligned_ids"])
    train_rows = len(split_rows(n, params["test_fraction"], params["seed"]).train)
    val, fit = validation_split(train_rows, params["validation_fraction"])
    trained = fit.stop - fit.start
    assert val.stop > 0
    priv = Workspace(bureau).private_key
    k = int(STOPPING["model"]["passive"][0]["units"])
    for art in backs:
        ints = np.array(slots_of(art, "err", priv), dtype=object)  # (k x groups) ciphertexts x slots
        per_unit = ints.reshape(k, -1)  # unit j: rows 0, 1, ... across the groups' slots
        assert per_unit.shape[1] - trained < int(art.members["err"].info["slots"])  # padding only
        assert all(v == 0 for v in per_unit[:, trained:].flat)
        assert np.count_nonzero(per_unit[:, :trained]) > 0


def test_with_keep_model_last_every_flag_says_keep(tmp_path: Path, monkeypatch) -> None:
    """The default ``keep_model = "last"``: A keeps the model of every check, so every flag P reads
    says keep and tells it nothing about the validation loss; P learns when training stopped
    (the number of backward messages), as with any stop."""
    monkeypatch.setattr(split_nn, "private_seed", lambda role: (1111, 2222)[role == "passive"])
    sample = Path(__file__).resolve().parents[2] / "sample_data"
    bank, bureau = small_parties(tmp_path, sample / "breast_active.csv", sample / "breast_passive.csv", "label", 120)
    train(bank, bureau, dict(STOPPING, keep_model="last"), job=JOB)
    backs = archived(bureau, "backward")
    a = jobs.load_state(Workspace(bank), JOB)[0].results["model"]
    assert [b.meta["keep"] for b in backs] == [True] * len(backs)  # full batch: every epoch checks
    assert a["epochs_run"] == len(backs) < STOPPING["epochs"]

