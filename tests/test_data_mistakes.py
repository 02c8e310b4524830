"""Issue 16's data problems, each through the real command: a working job, or exit 1 and one
``Error:`` line that names the fix, never a traceback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TEST_KEY_BITS, carry, drive, error_line, introduce, run

N = 100


def tables(n: int = N, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A bank (label, 2 features) and a bureau (3 features) with the same n customers."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X @ np.array([1.5, -1.0, 1.0, 0.5, -1.5]) + rng.normal(scale=0.5, size=n) > 0).astype(int)
    ids = [str(i) for i in range(1, n + 1)]
    bank = pd.DataFrame({"id": ids, "y": y, "a1": X[:, 0].round(4), "a2": X[:, 1].round(4)})
    bureau = pd.DataFrame({"id": ids, "p1": X[:, 2].round(4), "p2": X[:, 3].round(4), "p3": X[:, 4].round(4)})
    return bank, bureau


def save(df: pd.DataFrame, path: Path, **kw: object) -> Path:
    df.to_csv(path, index=False, **kw)
    return path


def init(root: Path, name: str, role: str, data: Path, *opts: str, ok: bool = True):
    args = ["init", str(root / name), "--name", name, "--role", role, "--data", str(data), "--id-column", "id"]
    result = run(*args, *(["--label-column", "y"] if role == "active" else []), *opts, ok=ok)
    if ok:
        ws = root / name
        run("-w", str(ws), "keygen", "--key-bits", str(TEST_KEY_BITS), "--insecure-test-keys")
        run("-w", str(ws), "keys", "export", "--out", str(root / f"{name}.card"))
    return result


def pair(tmp_path: Path, bank_file: Path, bureau_file: Path, bank_opts: tuple[str, ...] = (),
         bureau_opts: tuple[str, ...] = ()) -> tuple[Path, Path]:
    init(tmp_path, "bank", "active", bank_file, *bank_opts)
    init(tmp_path, "bureau", "passive", bureau_file, *bureau_opts)
    introduce(tmp_path, "bank", "bureau")
    return tmp_path / "bank", tmp_path / "bureau"


def align(bank: Path, bureau: Path, job: str = "al") -> None:
    run("-w", str(bank), "align", "start", "--job", job)
    drive([bank, bureau], job)


TRAIN = ("--protocol", "hetero-lr", "--alignment", "al", "--epochs", "2", "--batch-size", "0", "--job", "tr")


def train(bank: Path, bureau: Path) -> dict:
    run("-w", str(bank), "train", "start", *TRAIN)
    drive([bank, bureau], "tr")
    return json.loads(run("-w", str(bank), "evaluate", "tr", "--json").stdout)


def weights(ws: Path, job: str = "tr") -> set[str]:
    return set(json.loads(run("-w", str(ws), "model", "show", job, "--json").stdout)["weights"])


# ----------------------------------------------------------------------------- text columns
def test_text_column_at_the_active_party_is_named_at_init_and_excluded(tmp_path: Path) -> None:
    bank, bureau = tables()
    bank["region"] = np.where(np.arange(N) % 2, "north", "south")
    bank_file, bureau_file = save(bank, tmp_path / "bank.csv"), save(bureau, tmp_path / "bureau.csv")
    message = error_line(init(tmp_path, "bank", "active", bank_file, ok=False))
    assert "'region' (e.g. 'south') is text" in message and "--exclude region" in message
    assert not (tmp_path / "bank").exists()
    b, p = pair(tmp_path, bank_file, bureau_file, bank_opts=("--exclude", "region"))
    align(b, p)
    assert "auc" in train(b, p)["test"]
    assert weights(b) == {"a1", "a2", "(intercept)"}


def test_text_column_encoded_per_party_fitted_on_its_training_rows_and_used_to_score(tmp_path: Path) -> None:
    from vfl_cli import jobs
    from vfl_cli.models.features import split_rows
    from vfl_cli.workspace import Workspace

    bank, bureau = tables()
    bank["region"] = np.array(["north", "south", "west"])[np.arange(N) % 3]
    bank_file, bureau_file = save(bank, tmp_path / "bank.csv"), save(bureau, tmp_path / "bureau.csv")
    b, p = pair(tmp_path, bank_file, bureau_file, bank_opts=("--encode", "region=onehot"))
    save(bureau.assign(segment=np.where(np.arange(N) % 3, "retail", "sme")), bureau_file)  # a new export
    align(b, p)
    # 'east' only on the rows the job will hold out: an encoder fitted on the training rows never sees it
    rows = jobs.load_state(Workspace(b), "al")[0].arrays["aligned_rows"]
    bank.loc[rows[split_rows(len(rows), 0.2, 42,
                       ids=jobs.load_state(Workspace(b), "al")[0].arrays["aligned_ids"]).test], "region"] = "east"
    save(bank, bank_file)
    run("-w", str(b), "train", "start", *TRAIN)
    carry(b, p)
    assert "--encode segment=onehot" in error_line(run("-w", str(p), "job", "accept", "tr", ok=False))
    run("-w", str(p), "columns", "--encode", "segment=frequency")
    drive([b, p], "tr")
    assert weights(b) == {"a1", "a2", "region=north", "region=south", "region=west", "(intercept)"}
    assert weights(p) == {"p1", "p2", "p3", "segment"}
    shares = json.loads((p / "jobs" / "tr" / "job.json").read_text())["encoders"]["segment"]
    assert shares["categories"] == ["retail", "sme"] and sum(shares["frequencies"]) == pytest.approx(1.0)
    # scoring new rows reuses the training job's encoders, an unseen category included
    save(bank.head(30).assign(region="antarctica"), tmp_path / "nb.csv")
    run("-w", str(b), "align", "start", "--job", "new", "--data", str(tmp_path / "nb.csv"))
    carry(b, p)
    run("-w", str(p), "align", "respond", "new")
    drive([b, p], "new")
    run("-w", str(b), "predict", "start", "--model", "tr", "--alignment", "new", "--job", "pr")
    drive([b, p], "pr")
    run("-w", str(b), "predict", "export", "pr", "--out", str(tmp_path / "s.csv"))
    assert len(pd.read_csv(tmp_path / "s.csv")) == 30


def test_text_column_at_the_passive_party_after_a_failed_accept(tmp_path: Path) -> None:
    """The passive party's file gains a text column after init: its accept fails with the fix,
    'vfl columns --exclude' applies it, and the same proposal is accepted."""
    bank, bureau = tables()
    b, p = pair(tmp_path, save(bank, tmp_path / "bank.csv"), save(bureau, tmp_path / "bureau.csv"))
    bureau["segment"] = np.where(np.arange(N) % 3, "retail", "sme")
    save(bureau, tmp_path / "bureau.csv")
    align(b, p)
    run("-w", str(b), "train", "start", *TRAIN)
    carry(b, p)
    message = error_line(run("-w", str(p), "job", "accept", "tr", ok=False))
    assert "'segment' is text" in message and "vfl columns --exclude segment" in message
    run("-w", str(p), "columns", "--exclude", "segment")
    listed = json.loads(run("-w", str(p), "columns", "--json").stdout)
    assert {r["column"]: r["use"] for r in listed}["segment"] == "excluded"
    drive([b, p], "tr")
    assert weights(p) == {"p1", "p2", "p3"}


def test_a_column_dropped_from_the_file_after_a_failed_job(tmp_path: Path) -> None:
    """Issue 16's KeyError: 'region': the user follows the advice and deletes the column from
    the file; the next job reads the file's columns again (no re-init, no re-alignment)."""
    bank, bureau = tables()
    bank_file = save(bank, tmp_path / "bank.csv")
    b, p = pair(tmp_path, bank_file, save(bureau, tmp_path / "bureau.csv"))
    align(b, p)
    save(bank.assign(region=np.where(np.arange(N) % 2, "north", "south")), bank_file)
    message = error_line(run("-w", str(b), "train", "start", *TRAIN, ok=False))
    assert "'region' is text" in message and "vfl columns --exclude region" in message
    save(bank, bank_file)  # the column deleted from the file
    assert "auc" in train(b, p)["test"]
    assert weights(b) == {"a1", "a2", "(intercept)"}


def test_train_start_chooses_columns_per_job_and_counts_imputed_cells(tmp_path: Path) -> None:
    bank, bureau = tables()
    bank_file = save(bank, tmp_path / "bank.csv")
    b, p = pair(tmp_path, bank_file, save(bureau, tmp_path / "bureau.csv"))
    align(b, p)
    bank.loc[[3, 5, 8], "a2"] = np.nan
    save(bank.assign(region="north"), bank_file)
    assert "no column 'regio' to exclude (did you mean 'region'?)" in error_line(
        run("-w", str(b), "train", "start", *TRAIN, "--exclude", "regio", ok=False))
    started = run("-w", str(b), "train", "start", *TRAIN, "--exclude", "region")
    assert "Note: 3 empty cell(s) of this party's rows in job tr (a2: 3) will be filled" in started.stderr
    job = json.loads((b / "jobs" / "tr" / "job.json").read_text())
    assert job["features"] == ["a1", "a2"] and job["imputed_cells"] == {"a2": 3}
    carry(b, p)  # the bureau's rows have no empty cell: nothing to say
    assert "empty cell" not in run("-w", str(p), "job", "accept", "tr").stderr
    run("-w", str(b), "train", "start", *TRAIN[:-1], "tr2", "--features", "a1")
    assert json.loads((b / "jobs" / "tr2" / "job.json").read_text())["features"] == ["a1"]
    # the workspace's own choice is unchanged: the next job without options sees 'region' again
    assert "'region' is text" in error_line(run("-w", str(b), "train", "start", *TRAIN[:-1], "tr3", ok=False))


# ----------------------------------------------------------------------------- Excel's files
def test_excel_files_bom_crlf_quoted_and_semicolons_with_decimal_commas(tmp_path: Path) -> None:
    bank, bureau = tables()
    # Excel "CSV UTF-8": BOM, CRLF, every name and text quoted
    bank_file = save(bank, tmp_path / "bank.csv", encoding="utf-8-sig", lineterminator="\r\n",
                     quoting=csv.QUOTE_NONNUMERIC)
    # Excel in a decimal-comma locale: ';' and decimal commas
    bureau_file = save(bureau, tmp_path / "bureau.csv", sep=";", decimal=",")
    assert bank_file.read_bytes().startswith(b'\xef\xbb\xbf"id","y"') and b"0,1234" not in bank_file.read_bytes()
    assert b";" in bureau_file.read_bytes() and b"," in bureau_file.read_bytes()
    b, p = pair(tmp_path, bank_file, bureau_file)
    for ws in (b, p):
        types = {r["column"]: r["type"] for r in json.loads(run("-w", str(ws), "columns", "--json").stdout)}
        assert types.pop("id") == "text" and set(types.values()) == {"number"}  # ids are always text
    align(b, p)
    assert "auc" in train(b, p)["test"]
    run("-w", str(p), "model", "export", "tr", "--out", str(tmp_path / "m.json"))
    means = json.loads((tmp_path / "m.json").read_text())["standardiser"]["mean"]
    # the passive party's training means are those of the numbers its file holds (decimal commas
    # read as decimals: '0,1234' is 0.1234), over the 80 training rows of 100
    assert means == pytest.approx(bureau[["p1", "p2", "p3"]].mean().tolist(), abs=0.3)


def test_unsure_separator_is_an_error_naming_the_option_then_the_option_works(tmp_path: Path) -> None:
    f = tmp_path / "odd.csv"
    f.write_text("id;x,y\n1;2,5\n2;4,5\n3;6,5\n")  # 'x,y' is one column, of decimal commas
    message = error_line(init(tmp_path, "odd", "passive", f, ok=False))
    assert "cannot tell how the columns" in message and "--sep ',' or --sep ';'" in message
    init(tmp_path, "odd", "passive", f, "--sep", ";")
    assert json.loads((tmp_path / "odd" / "vfl.json").read_text())["csv"] == {"sep": ";"}
    rows = json.loads(run("-w", str(tmp_path / "odd"), "columns", "--json").stdout)
    assert [(r["column"], r["type"]) for r in rows] == [("id", "text"), ("x,y", "number")]


# ----------------------------------------------------------------------------- labels
def test_yes_no_labels_take_positive_label(tmp_path: Path) -> None:
    bank, bureau = tables()
    bank["y"] = np.where(bank["y"] == 1, "yes", "no")
    bank_file, bureau_file = save(bank, tmp_path / "bank.csv"), save(bureau, tmp_path / "bureau.csv")
    message = error_line(init(tmp_path, "bank", "active", bank_file, ok=False))
    assert "holds text ('no', 'yes')" in message and "--positive-label 'yes'" in message
    b, p = pair(tmp_path, bank_file, bureau_file, bank_opts=("--positive-label", "yes"))
    align(b, p)
    assert train(b, p)["test"]["auc"] > 0.6


@pytest.mark.parametrize("change, opts, message", [
    (lambda d: d.assign(id=["1"] + d["id"].tolist()[:-1]), (), "id(s) appear more than once: '1'"),
    (lambda d: d.assign(y=[None] * 3 + d["y"].tolist()[3:]), (), "'y' is empty in 3 row(s) (lines 2, 3, 4)"),
    (lambda d: d, ("--positive-label", "7"), "--positive-label '7' is not a value of the label column 'y'"),
    (lambda d: d.assign(y=np.arange(N) % 3), ("--positive-label", "1"), "holds 3 different values ('0', '1', '2')"),
    (lambda d: d.assign(y=np.where(np.arange(N) % 3, "a", "b")).assign(
        y=lambda e: np.where(np.arange(N) % 5 == 0, "c", e["y"])), (), "3 different text values"),
    (lambda d: d, ("--exclude", "a3"), "no column 'a3' to exclude (did you mean 'a2'?)"),
    (lambda d: d, ("--features", "a1,Y"), "'Y'"),
    (lambda d: d, ("--positive-label", "1", "--features", "a1,y"), "'y' is the label column"),
])
def test_init_checks_name_the_column_and_the_fix(tmp_path: Path, change, opts: tuple[str, ...],
                                                 message: str) -> None:
    bank, _ = tables()
    f = save(change(bank), tmp_path / "bank.csv")
    assert message in error_line(init(tmp_path, "bank", "active", f, *opts, ok=False))
    assert not (tmp_path / "bank").exists()


def test_missing_cells_are_counted_at_init(tmp_path: Path) -> None:
    bank, _ = tables()
    bank.loc[[3, 5, 8], "a2"] = np.nan
    result = init(tmp_path, "bank", "active", save(bank, tmp_path / "bank.csv"))
    assert "3 empty cell(s) in 1 feature column(s) (a2: 3) will be filled with the column's mean" in result.stderr
    assert {r["column"]: r["empty_cells"] for r in json.loads(
        run("-w", str(tmp_path / "bank"), "columns", "--json").stdout)}["a2"] == 3


# ----------------------------------------------------------------------------- ids and scoring
def _step_all(parties: list[Path], job: str) -> str:
    """Step every party through the command until the job is done; return everything said on stderr."""
    said = []
    for _ in range(20):
        for a in parties:
            for b in parties:
                if a != b:
                    carry(a, b)
        done = 0
        for ws in parties:
            if (ws / "jobs" / job / "job.json").exists():
                r = run("-w", str(ws), "step", "--job", job, "--json")
            elif any((ws / "inbox").glob(f"{job}.001.*")):
                r = run("-w", str(ws), "job", "accept", job, "--json")
            else:
                continue
            said.append(r.stderr)
            done += all(x["done"] for x in json.loads(r.stdout))
        if done == len(parties):
            return "".join(said)
    raise AssertionError(f"job {job} did not finish")


def test_ids_written_differently_warn_with_format_hints(tmp_path: Path) -> None:
    bank, bureau = tables(n=30)
    bureau["id"] = bureau["id"].str.zfill(6)  # 7 at the bank, 000007 at the bureau
    b, p = pair(tmp_path, save(bank, tmp_path / "bank.csv"), save(bureau, tmp_path / "bureau.csv"))
    start = run("-w", str(b), "align", "start", "--job", "al")
    said = start.stderr + _step_all([b, p], "al")
    assert said.count("Warning: [al] no id is common to every party (30 ids here)") == 2
    assert "Ids are plain numbers (e.g. '1'): if the other party pads them with zeros ('000001')" in said
    assert "Ids have leading zeros (e.g. '000001'): if the other party writes '1'" in said
    # fixed on one side, the same alignment finds everyone and says nothing
    save(bureau.assign(id=bureau["id"].str.lstrip("0")), tmp_path / "bureau.csv")
    run("-w", str(b), "align", "start", "--job", "al2")
    assert "Warning" not in _step_all([b, p], "al2")


def test_predict_export_counts_and_lists_the_unscored_rows(tmp_path: Path) -> None:
    bank, bureau = tables()
    b, p = pair(tmp_path, save(bank, tmp_path / "bank.csv"), save(bureau, tmp_path / "bureau.csv"))
    align(b, p)
    train(b, p)
    # new rows: the bank's outcomes are not known yet for ids 30-34 (empty label cells)
    labels = [None if 30 <= i <= 34 else v for i, v in enumerate(bank["y"].head(40).tolist(), 1)]
    new_bank = save(bank.head(40).assign(y=labels), tmp_path / "nb.csv")
    new_bureau = save(bureau.iloc[15:60], tmp_path / "np.csv")
    run("-w", str(b), "align", "start", "--job", "new", "--data", str(new_bank))
    carry(b, p)
    run("-w", str(p), "align", "respond", "new", "--data", str(new_bureau))
    drive([b, p], "new")
    run("-w", str(b), "predict", "start", "--model", "tr", "--alignment", "new", "--job", "pr")
    drive([b, p], "pr")
    shown = json.loads(run("-w", str(b), "job", "show", "pr", "--json").stdout)["results"]
    assert shown["rows"] == 25 and shown["labelled_rows"] == 20 and "metrics" not in shown
    plain = run("-w", str(b), "predict", "export", "pr", "--out", str(tmp_path / "s.csv"))
    assert "Wrote 25 scores" in plain.stderr and "25 of this party's 40 rows were scored" in plain.stderr
    assert "15 rows were not scored" in plain.stderr and "--unscored FILE" in plain.stderr
    listed = run("-w", str(b), "predict", "export", "pr", "--out", str(tmp_path / "s.csv"), "--force",
                 "--unscored", str(tmp_path / "u.csv"))
    assert "Wrote the 15 unscored ids" in listed.stderr
    unscored = pd.read_csv(tmp_path / "u.csv", dtype=str)["id"].tolist()
    assert unscored == [str(i) for i in range(1, 16)]
    scored = pd.read_csv(tmp_path / "s.csv", dtype={"id": str})
    assert sorted(scored["id"], key=int) == [str(i) for i in range(16, 41)] and scored["score"].between(0, 1).all()


# ----------------------------------------------------------------------------- recipes
def test_recipe_parties_take_the_data_options(tmp_path: Path) -> None:
    from vfl_cli.recipes import load_recipe

    bank, bureau = tables(n=40)
    save(bank.assign(y=np.where(bank["y"] == 1, "yes", "no"), region="north"), tmp_path / "bank.csv")
    save(bureau, tmp_path / "bureau.csv", sep=";", decimal=",")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[recipe]\nname = "r"\nprotocol = "align"\nkey_bits = 512\n'
                      '[[party]]\nname = "bank"\nrole = "active"\ndata = "bank.csv"\nid_column = "id"\n'
                      'label_column = "y"\npositive_label = "yes"\nencode = {region = "onehot"}\n'
                      '[[party]]\nname = "bureau"\nrole = "passive"\ndata = "bureau.csv"\nid_column = "id"\n'
                      'sep = ";"\nexclude = ["p3"]\n')
    assert load_recipe(recipe).parties[0].init_options == ("--positive-label", "yes", "--encode", "region=onehot")
    report = json.loads(run("recipe", "run", str(recipe), "--workdir", str(tmp_path / "w"), "--json").stdout)
    assert report["alignment"]["intersection_size"] == 40
    config = json.loads((tmp_path / "w" / "bureau" / "vfl.json").read_text())
    assert config["csv"] == {"sep": ";"} and config["exclude"] == ["p3"]
    bad = recipe.read_text().replace('exclude = ["p3"]', 'exclude = "p3"')
    recipe.write_text(bad)
    assert "exclude must be a list of column names" in error_line(
        run("recipe", "run", str(recipe), "--workdir", str(tmp_path / "w2"), ok=False))
