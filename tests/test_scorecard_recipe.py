"""The scorecard guide (docs/scorecard.md) end to end through the real command: the shipped
recipe (binning, IV selection, WOE-LR) on a slice of default_credit with test keys, then the
guide's commands on the parties' workspaces (binning show, scorecard export, predict with
points), and what report.json and each party's report.html show of the scorecard.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FATE, ROOT, carry, run

from vfl_cli.scorecard import Scaling

RECIPE = ROOT / "recipes" / "scorecard_default_credit.toml"
NAME = "scorecard_default_credit"
ROWS = 400
pytestmark = pytest.mark.slow  # separate vfl processes: about 45 s on a quiet machine


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scorecard-recipe")
    for part in ("guest", "host"):
        src = FATE / f"default_credit_hetero_{part}.csv"
        pd.read_csv(src, nrows=ROWS).to_csv(root / src.name, index=False)
    text = RECIPE.read_text().replace('"../sample_data/fate/', f'"{root}/')
    text = text.replace("key_bits = 2048", "key_bits = 512").replace("epochs = 4", "epochs = 1")
    assert str(root) in text and "key_bits = 512" in text
    (root / RECIPE.name).write_text(text)
    subprocess.run([sys.executable, "-m", "vfl_cli", "recipe", "run", str(root / RECIPE.name),
                    "--workdir", str(root / "run")], check=True, capture_output=True, text=True)
    return root


def test_recipe_report_json_has_each_partys_points_and_the_score_histogram(work: Path) -> None:
    report = json.loads((work / "run" / "report.json").read_text())
    assert list(report["jobs"]) == ["align", "binning", "train"]
    cards = report["scorecard"]
    assert set(cards) == {"bank", "bureau"}
    assert cards["bank"]["table"][0]["column"] == "(base points)"
    assert all(r["column"] != "(base points)" for r in cards["bureau"]["table"])
    hist = cards["bank"]["test_points"]
    assert "test_points" not in cards["bureau"]  # the passive party holds no scores or labels
    assert set(hist["counts"]) == {"0", "1"}
    assert sum(map(sum, hist["counts"].values())) == hist["rows"] == len(report["split"]["test_ids"])
    # the histogram's mean equals the test rows' summed points: base + both parties' bins
    assert hist["mean"] == pytest.approx(float(np.mean(Scaling().score(
        _test_scores(work / "run" / "bank")))), abs=1e-9)
    page = (work / "run" / "report.html").read_text()
    assert "bank's scorecard" in page and 'id="score-distribution"' in page


def _test_scores(ws: Path) -> np.ndarray:
    from vfl_cli import jobs
    from vfl_cli.workspace import Workspace

    return jobs.load_state(Workspace(ws), f"{NAME}-train")[0].arrays["test_scores"]


def test_the_guides_commands_on_the_recipes_workspaces(work: Path) -> None:
    bank, bureau = work / "run" / "bank", work / "run" / "bureau"
    shown = json.loads(run("-w", str(bureau), "binning", "show", f"{NAME}-binning", "--json").stdout)
    assert shown["party"] == "bureau" and shown["iv"]
    out = work / "bureau-points.csv"
    run("-w", str(bureau), "scorecard", "export", f"{NAME}-train", "--out", str(out))
    points = pd.read_csv(out)
    assert list(points.columns) == ["column", "bin", "label", "woe", "points"]
    page = work / "bureau.html"
    run("-w", str(bureau), "report", f"{NAME}-train", "--out", str(page))
    text = page.read_text()
    assert "bureau's scorecard" in text and 'id="score-distribution"' not in text
    assert "(base points)" not in text
    # joint scoring in points (vfl predict), as the guide's last step
    run("-w", str(bank), "predict", "start", "--model", f"{NAME}-train", "--alignment",
        f"{NAME}-align", "--job", "pr")
    assert carry(bank, bureau)
    run("-w", str(bureau), "job", "accept")
    assert carry(bureau, bank)
    run("-w", str(bank), "step")
    scores = work / "scores.csv"
    run("-w", str(bank), "predict", "export", "pr", "--out", str(scores))
    table = pd.read_csv(scores)
    assert list(table.columns) == ["id", "score", "points"] and len(table) == ROWS
    p = table["score"].to_numpy()
    np.testing.assert_allclose(table["points"], Scaling().score(np.log(p / (1 - p))), atol=1e-6)
