"""The scorecard parts of a job's report (``vfl report``) and of a recipe's report.json.

For a finished hetero-lr job on WOE columns each party sees its own scorecard (its own columns'
points; the active party's also the base points) and the active party the distribution of the
test rows' points by label; for a predict job with points, the scored rows' points.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vfl_cli import jobs
from vfl_cli.protocol.base import JobState
from vfl_cli.report import _e, _figure, _fmt, _svg, _table
from vfl_cli.workspace import Workspace

__all__ = ["points_histogram", "scorecard_section", "scorecard_summary"]


def scorecard_summary(ws: Workspace, job: str) -> dict[str, Any] | None:
    """This party's scorecard of ``job`` (default scaling: 600 points at 50:1, 20 to double)
    and, for the active party, the distribution of the test rows' points by label; None when
    the job is no finished hetero-lr job on WOE columns. A party's points table holds only its
    own columns (the active party's also the base points)."""
    from vfl_cli.errors import VflError
    from vfl_cli.scorecard import Scaling, scorecard_of_job

    try:
        card = scorecard_of_job(ws, job)
    except (VflError, KeyError):
        return None
    out: dict[str, Any] = {"party": card["party"], "scaling": card["scaling"],
                           "base_points": card["base_points"], "table": card["table"]}
    state, _ = jobs.load_state(ws, job)
    if "test_scores" in state.arrays and "test_labels" in state.arrays:
        points = Scaling().score(state.arrays["test_scores"])
        out["test_points"] = points_histogram(points, state.arrays["test_labels"])
    return out


def points_histogram(points: np.ndarray, labels: np.ndarray | None, bins: int = 20) -> dict[str, Any]:
    """Counts of ``points`` in ``bins`` equal bins, per label when labels are given."""
    edges = np.histogram_bin_edges(points, bins=bins) if len(points) else np.zeros(bins + 1)
    hist: dict[str, Any] = {"rows": len(points), "edges": [float(e) for e in edges],
                            "mean": float(np.mean(points)) if len(points) else None}
    if labels is None:
        hist["counts"] = {"all": np.histogram(points, edges)[0].tolist()}
    else:
        hist["counts"] = {str(int(v)): np.histogram(points[labels == v], edges)[0].tolist()
                          for v in np.unique(labels)}
    return hist


def _points_figure(hist: dict[str, Any], what: str) -> str:
    import matplotlib.pyplot as plt

    edges = np.asarray(hist["edges"])
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for label, counts in hist["counts"].items():
        name = {"1": "label 1 (event)", "0": "label 0"}.get(label, label)
        ax.stairs(counts, edges, label=name, fill=False, lw=1.8)
    ax.set_xlabel("points")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _figure("score-distribution", f"Points of the {what} ({hist['rows']} rows)", _svg(fig))


def scorecard_section(ws: Workspace, job: str, state: JobState) -> list[str]:
    """The points of this party's bins, and the score distribution (active party)."""
    card = scorecard_summary(ws, job)
    out = []
    if card is not None:
        s = card["scaling"]
        out += [f"<h2>{_e(ws.name)}'s scorecard</h2>",
                (f"<p class=note>{s['base_score']:g} points at odds {s['base_odds']:g}:1, {s['pdo']:g} "
                 "points to double the odds. Only this party's own columns (and, for the active "
                 "party, the base points); a row's score is the sum over every party.</p>"),
                _table(["column", "bin", "label", "woe", "points"],
                       [[r["column"], r["bin"], r["label"], _fmt(r["woe"]), f"{r['points']:.2f}"]
                        for r in card["table"]], numeric={3, 4})]
        if "test_points" in card:
            out.append(_points_figure(card["test_points"], "test rows by label"))
    elif "points" in state.arrays:  # a predict job: the scored rows' points
        out += ["<h2>Score distribution</h2>",
                _points_figure(points_histogram(state.arrays["points"], None), "scored rows")]
    return out
