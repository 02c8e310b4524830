"""HTML reports: what each party's report shows, and that a real browser renders them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import error_line, run
from test_protocol_hetero_linear import PARAMS, align, train

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from conftest import ROOT, introduce, make_party

    root = tmp_path_factory.mktemp("report")
    sample = ROOT / "sample_data"
    bank = make_party(root, "bank", "active", sample / "breast_active.csv", label_column="label")
    bureau = make_party(root, "bureau", "passive", sample / "breast_passive.csv")
    introduce(root, "bank", "bureau")
    align(bank, [bureau])
    train(bank, [bureau], "hetero-lr", dict(PARAMS, epochs=2))
    out = {}
    for ws in (bank, bureau):
        target = root / f"{ws.name}.html"
        run("-w", str(ws), "report", "tr", "--out", str(target))
        out[ws.name] = target.read_text()
    out["dir"] = str(root)
    return out


def test_active_report_has_metrics_curves_and_timeline(reports: dict[str, str]) -> None:
    page = reports["bank"]
    for fig in ("training-curve", "roc-curve", "ks-curve", "confusion-matrix"):
        assert f'id="{fig}"' in page
    assert page.count("<svg") >= 4
    assert "AUC" in page and "Timeline of artifacts" in page and "residual" in page.lower()
    assert "hetero/partial" in page and "hetero/reply" in page


def test_passive_report_shows_only_what_the_passive_party_knows(reports: dict[str, str]) -> None:
    page = reports["bureau"]
    assert 'id="roc-curve"' not in page and 'id="training-curve"' not in page
    assert "AUC" not in page and "test log-loss" not in page
    assert "bureau's part of the model" in page and "radius_error" in page
    assert "mean_radius" not in page  # the active party's feature names are not the passive's to show


def test_report_refuses_to_overwrite(two_parties, tmp_path: Path) -> None:
    bank, _ = two_parties
    target = tmp_path / "r.html"
    target.write_text("keep")
    assert "no jobs yet" in error_line(run("-w", str(bank), "report", "--out", str(tmp_path / "new.html"), ok=False))
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    assert "already exists" in error_line(run("-w", str(bank), "report", "hs", "--out", str(target), ok=False))
    assert target.read_text() == "keep"


def test_report_renders_in_headless_chromium(reports: dict[str, str]) -> None:
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium)")
    page = Path(reports["dir"]) / "bank.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={Path(reports['dir']) / 'chrome-profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for fig in ("training-curve", "roc-curve", "ks-curve", "confusion-matrix"):
        assert f'id="{fig}"' in dom.stdout, f"{fig} missing from the rendered page"
    assert dom.stdout.count("<svg") >= 4
    assert "Uncaught" not in dom.stderr and "This page isn" not in dom.stdout
    shot = Path(reports["dir"]) / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page with plots, not a blank or error page


def test_multi_node_plots_from_round_history_and_node_weights() -> None:
    from vfl_cli.protocol.base import JobState
    from vfl_cli.report import _plots

    state = JobState(results={"round_history": [{"round": r, "val_loss": 0.7 - 0.05 * r} for r in range(4)],
                              "node_weights": [[0.5, 0.5], [0.7, 0.3], [0.9, 0.1]]})
    figures = "".join(_plots(state, "hfl"))
    assert 'id="round-curve"' in figures and 'id="node-weights"' in figures
    assert figures.count("<svg") == 2


def test_report_names_its_data_columns_intersection_and_audit(reports: dict[str, str]) -> None:
    import hashlib

    from conftest import ROOT

    for name, csv, own, other in (("bank", "breast_active.csv", "mean_radius", "radius_error"),
                                  ("bureau", "breast_passive.csv", "radius_error", "mean_radius")):
        page = reports[name]
        digest = hashlib.sha256((ROOT / "sample_data" / csv).read_bytes()).hexdigest()
        assert digest in page and csv in page  # its own data file's hash
        assert "rows in the intersection" in page
        assert f"<td>{own}</td><td>numeric, standardised</td>" in page
        assert other not in page.split("<h2>Data</h2>")[1].split("<h2>")[0]
        assert 'id="audit-status">vfl audit verify: <b>passed</b>' in page


def test_report_loss_names_say_what_they_are(reports: dict[str, str]) -> None:
    from vfl_cli.protocol.registry import loss_label

    page = reports["bank"]
    assert f"<td>{loss_label('hetero-lr', PARAMS)}</td>" in page
    assert loss_label("hetero-lr", {"approximation": "taylor"}).startswith("train loss (Taylor approximation")
    assert loss_label("hetero-lr", {}) == "train loss (mean squared error of the probability, on the last batch)"
    assert "test log-loss (cross-entropy of the predicted probability)" in page
    assert "<td>loss</td>" not in page and "<td>log_loss</td>" not in page


def test_training_curve_spans_every_epoch_from_one() -> None:
    from vfl_cli.protocol.base import JobState
    from vfl_cli.report import _plots

    history = [{"epoch": e, "loss": 0.25 - 0.01 * e} for e in (4, 9, 11)]
    state = JobState(results={"history": history,
                              "model": {"epochs_run": 12, "params": {"loss_every": 5}}})
    figure = "".join(_plots(state, "hetero-lr"))
    assert "Training loss, epochs 1 to 12: measured after epoch 1, every 5 epochs" in figure
    assert ">1<" in figure or "<!-- 1 -->" in figure  # the first epoch is on the axis


def test_hfl_node_legend_by_party_name() -> None:
    from vfl_cli.protocol.base import JobState
    from vfl_cli.report import _plots

    state = JobState(results={"node_weights": [[0.5, 0.5], [0.7, 0.3]], "nodes": ["node0", "clinic-b"]})
    figure = "".join(_plots(state, "hfl"))
    assert "node0" in figure and "clinic-b" in figure and "node 1" not in figure


def test_audit_status_shows_a_broken_ledger(reports: dict[str, str], tmp_path: Path) -> None:
    import shutil

    from vfl_cli.report import build_report
    from vfl_cli.workspace import Workspace

    copy = tmp_path / "bank"
    shutil.copytree(Path(reports["dir"]) / "bank", copy)
    ledger = copy / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # one entry cut out
    page = build_report(Workspace(copy), "tr")
    assert 'id="audit-status">vfl audit verify: <b>FAILED' in page and "hash chain broken" in page


def test_recipe_report_json_holds_each_partys_data_audit_and_loss_names(reports: dict[str, str]) -> None:
    import hashlib

    from conftest import ROOT

    from vfl_cli.recipes import PartySpec, Recipe, Runner, party_summaries

    sample = ROOT / "sample_data"
    parties = [PartySpec("bank", "active", sample / "breast_active.csv", "id", "label"),
               PartySpec("bureau", "passive", sample / "breast_passive.csv", "id")]
    recipe = Recipe(Path("r.toml"), "r", "hetero-lr", parties, {"recipe": {}, "train": {"approximation": "centred"}})
    out = party_summaries(Runner(recipe, Path(reports["dir"])), "tr")
    assert out["intersection_size"] == out["data"]["bank"]["intersection_size"] > 0
    for name, csv in (("bank", "breast_active.csv"), ("bureau", "breast_passive.csv")):
        assert out["data"][name]["data_sha256"] == hashlib.sha256((sample / csv).read_bytes()).hexdigest()
        assert out["audit"][name]["ok"] and out["audit"][name]["files_checked"] > 0
    radius = {"column": "radius_error", "encoding": "numeric, standardised", "imputed_cells": 0}
    assert radius in out["data"]["bureau"]["columns"]
    assert out["loss_names"]["train.loss"] == (
        "train loss (mean squared error of the probability, on the last batch)")


def test_encodings_group_one_hot_columns_and_count_filled_cells() -> None:
    from vfl_cli.report import _encodings

    info = {"features": ["age", "region=east", "region=west", "plan"],
            "encoders": {"specs": {"region": {"kind": "onehot", "categories": ["east", "west"]},
                                   "plan": {"kind": "frequency", "categories": ["a", "b", "c"]}}},
            "imputed_cells": {"age": 3, "plan": 1}}
    assert _encodings(info) == [
        {"column": "age", "encoding": "numeric, standardised", "imputed_cells": 3},
        {"column": "region", "encoding": "onehot (2 categories)", "imputed_cells": 0},
        {"column": "plan", "encoding": "frequency (3 categories)", "imputed_cells": 1}]


def test_both_reports_show_the_label_noise_the_job_spent(reports: dict[str, str]) -> None:
    """hetero-lr's label privacy (public: every party computes it) in each party's report: the
    epsilon spent, the asked label_bits and the information bound, as in the job's results; and
    "label noise off" for the job above, which turned it off."""
    from vfl_cli import jobs
    from vfl_cli.workspace import Workspace

    root = Path(reports["dir"])
    assert "label noise off" in reports["bank"]
    train(root / "bank", [root / "bureau"], "hetero-lr", dict(PARAMS, epochs=2, label_bits=0.5), job="ln")
    for name in ("bank", "bureau"):
        privacy = jobs.load_state(Workspace(root / name), "ln")[0].results["privacy"]
        assert privacy["label_noise_sigma"] > 0
        run("-w", str(root / name), "report", "ln", "--out", str(root / f"{name}-ln.html"))
        page = (root / f"{name}-ln.html").read_text()
        assert "Label privacy" in page and f"label_epsilon {privacy['label_epsilon']:.3g} spent" in page
        assert f"label_bits = {privacy['label_bits']:g}" in page
        assert f"information bound {privacy['label_information_bits']:.3g} label bits" in page
