"""A party's scorecard: the points of each of its own bins, from a hetero-lr job trained on WOE
columns (``binning=<woe-binning job>``, ``woe=true``).

Scaling (the industry's usual convention, and FATE's scorecard defaults): a score of
``base_score`` (600) stands for odds of ``base_odds`` (50) to 1 of a non-event against an
event, and every ``pdo`` (20) points double those odds::

    factor = pdo / ln 2,    offset = base_score - factor * ln(base_odds)
    score  = offset - factor * z          (z: the joint model's log-odds of the event, label 1)

The model is ``z = b + sum_j w_j (woe_j - mean_j) / scale_j`` over every party's columns
(each party's weights act on its own standardised WOE columns). So the points of bin ``k`` of
column ``j`` are ``-factor * w_j (woe_jk - mean_j) / scale_j``, which the column's owner
computes alone, and the active party adds the base points ``offset - factor * b``. A row's
points summed over every party's bins equal its score exactly (up to floating point). Nothing
crosses to a peer: each party reads its own part of the model and its own bins.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vfl_cli.errors import VflError
from vfl_cli.models.binning import ColumnBins

if TYPE_CHECKING:
    import pandas as pd

    from vfl_cli.workspace import Workspace

__all__ = ["BASE", "CSV_KEYS", "Scaling", "points_of_rows", "scorecard", "scorecard_csv",
           "scorecard_html", "scorecard_of_job"]

BASE = "(base points)"
CSV_KEYS = ("column", "bin", "label", "woe", "points")


@dataclass(frozen=True)
class Scaling:
    """How log-odds become points (defaults: 600 points at odds 50:1, 20 points to double)."""

    base_score: float = 600.0
    pdo: float = 20.0
    base_odds: float = 50.0

    def __post_init__(self) -> None:
        if not (self.pdo > 0 and self.base_odds > 0 and math.isfinite(self.base_score)):
            raise VflError(f"scorecard scaling needs pdo > 0 and odds > 0, not pdo {self.pdo}, "
                           f"odds {self.base_odds}")

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_score - self.factor * math.log(self.base_odds)

    def score(self, log_odds: np.ndarray) -> np.ndarray:
        """Points of the joint log-odds of the event."""
        return np.asarray(self.offset - self.factor * np.asarray(log_odds, dtype=float))


def scorecard(model: Mapping[str, Any], encoders: Mapping[str, Any], mean: np.ndarray,
              scale: np.ndarray, scaling: Scaling) -> dict[str, Any]:
    """This party's points per bin from its model card, WOE encoders and standardiser.

    Raises:
        VflError: a column of the model is not WOE-encoded.
    """
    weights = model["weights"]
    features = [f for f in model["features"] if f != "(intercept)"]
    rows, columns = [], {}
    for j, name in enumerate(features):
        spec = encoders.get(name)
        if not spec or spec.get("kind") != "woe":
            raise VflError(f"column {name!r} of job {model.get('job')} is not WOE-encoded; train "
                           "with binning=<woe-binning job> and woe=true for a scorecard")
        col = ColumnBins.from_json(spec["bins"])
        woe = np.asarray(spec["woe"], dtype=float)
        pts = -scaling.factor * float(weights[name]) * (woe - mean[j]) / scale[j]
        columns[name] = {"bins": spec["bins"], "points": pts.tolist()}
        for b, label in enumerate(col.labels):
            rows.append({"column": name, "bin": b, "label": label, "woe": float(woe[b]),
                         "points": float(pts[b])})
    base = None
    if "(intercept)" in weights:
        base = scaling.offset - scaling.factor * float(weights["(intercept)"])
        rows.insert(0, {"column": BASE, "bin": "", "label": "", "woe": "", "points": base})
    return {"job": model.get("job"), "party": model.get("party"), "base_points": base,
            "scaling": {"base_score": scaling.base_score, "pdo": scaling.pdo,
                        "base_odds": scaling.base_odds, "factor": scaling.factor,
                        "offset": scaling.offset},
            "columns": columns, "table": rows}


def scorecard_of_job(ws: Workspace, job: str, scaling: Scaling | None = None) -> dict[str, Any]:
    """This party's scorecard of the finished hetero-lr job ``job``.

    Raises:
        VflError: not a finished hetero-lr job, whitened, or not trained on WOE columns.
    """
    from vfl_cli import jobs

    info = jobs.load_info(ws, job)
    state, _ = jobs.load_state(ws, job)
    if info.get("protocol") != "hetero-lr" or not state.done:
        raise VflError(f"job {job} is not a finished hetero-lr job on {ws.name}; a scorecard "
                       "needs logistic regression on WOE columns")
    if "whiten" in state.arrays:
        raise VflError(f"job {job} trained on whitened columns; a scorecard needs whiten=false")
    return scorecard(state.results["model"], info.get("encoders") or {}, state.arrays["mean"],
                     state.arrays["scale"], scaling or Scaling())


def points_of_rows(card: Mapping[str, Any], df: pd.DataFrame) -> np.ndarray:
    """Each row's points from this party's bins (plus the base points for the active party)."""
    total = np.full(len(df), float(card["base_points"] or 0.0))
    for name, c in card["columns"].items():
        col = ColumnBins.from_json(c["bins"])
        total += np.asarray(c["points"], dtype=float)[col.transform(df[name])]
    return total


def scorecard_csv(card: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_KEYS), lineterminator="\n")
    writer.writeheader()
    for row in card["table"]:
        writer.writerow({k: row[k] for k in CSV_KEYS})
    return buf.getvalue()


def scorecard_html(card: Mapping[str, Any]) -> str:
    """A standalone HTML page of the points table (escaped; no scripts, no outside links)."""
    s = card["scaling"]
    head = "".join(f"<th>{k}</th>" for k in CSV_KEYS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_shown(r[k]))}</td>" for k in CSV_KEYS) + "</tr>"
        for r in card["table"])
    title = html.escape(f"Scorecard of {card['party']}, job {card['job']}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>{s['base_score']:g} points at odds {s['base_odds']:g}:1, "
            f"{s['pdo']:g} points to double the odds.</p><table border='1'><tr>{head}</tr>"
            f"{body}</table></body></html>\n")


def _shown(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
