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
    from conftest import introduce, make_party, ROOT

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
    assert "auc" in page and "Timeline of artifacts" in page and "residual" in page.lower()
    assert "hetero/partial" in page and "hetero/reply" in page


def test_passive_report_shows_only_what_the_passive_party_knows(reports: dict[str, str]) -> None:
    page = reports["bureau"]
    assert 'id="roc-curve"' not in page and 'id="training-curve"' not in page
    assert ">auc<" not in page
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
