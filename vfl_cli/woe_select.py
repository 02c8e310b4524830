"""A party's own result of a ``woe-binning`` job, read back: feature selection by IV and the WOE
transform of its columns in later jobs, and the tables ``vfl binning show`` prints.

Each party applies the rule to its own columns only, with its own IV figures (the active
party returned them to it by opaque bin ids): nothing crosses to a peer here. A training job
names the binning job and the rule in its public parameters (``binning``, ``select_iv``,
``select_top``, ``woe``); which columns each party keeps stays in its own job.json.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vfl_cli.errors import VflError
from vfl_cli.models.binning import ColumnBins

if TYPE_CHECKING:
    import pandas as pd

    from vfl_cli.workspace import Workspace

__all__ = [
    "TABLE_KEYS",
    "binning_result",
    "select_by_iv",
    "select_columns",
    "table_csv",
    "woe_frame",
    "woe_specs",
]

TABLE_KEYS = ("column", "bin", "label", "rows", "events", "woe", "iv")


def binning_result(ws: Workspace, job: str) -> dict[str, Any]:
    """This party's results of the finished ``woe-binning`` job ``job``.

    Raises:
        VflError: no such job, another protocol, or not finished yet.
    """
    from vfl_cli import jobs

    info = jobs.load_info(ws, job)
    state, _ = jobs.load_state(ws, job)
    if info.get("protocol") != "woe-binning":
        raise VflError(f"job {job} is a {info.get('protocol')} job, not a woe-binning job")
    if not state.done:
        raise VflError(f"woe-binning job {job} is not finished on {ws.name} (phase "
                       f"{state.phase}); run 'vfl step {job}' when its files have arrived")
    return dict(state.results)


def select_by_iv(iv: Mapping[str, float], columns: Sequence[str], *, threshold: float = 0.0,
                 top: int = 0) -> list[str]:
    """``columns`` (in their order) with IV >= ``threshold``, and among them the ``top`` best.

    A column the binning job did not bin is kept as it is (it has no IV to judge by).
    """
    binned = [c for c in columns if c in iv and iv[c] >= threshold]
    if top:
        binned = sorted(binned, key=lambda c: (-iv[c], columns.index(c)))[:top]
    keep = set(binned)
    return [c for c in columns if c in keep or c not in iv]


def woe_specs(result: Mapping[str, Any], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Encoder specs (kind ``woe``) of ``columns`` from a party's binning result."""
    enc = result["encoder"]
    bins = {c["name"]: c for c in enc["binning"]["columns"]}
    return {c: {"kind": "woe", "bins": bins[c], "woe": list(enc["woe"][c])}
            for c in columns if c in bins}


def select_columns(ws: Workspace, params: Mapping[str, Any], features: list[str]
                   ) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """A training job's columns of this party after its binning rule, and their WOE specs.

    Raises:
        VflError: the binning job is not a finished woe-binning job on the same alignment, or
            the rule leaves a passive party with no column.
    """
    job = str(params["binning"])
    result = binning_result(ws, job)
    from vfl_cli import jobs

    same = jobs.load_info(ws, job)["params"].get("alignment")
    if same != params.get("alignment"):
        raise VflError(f"woe-binning job {job} binned the rows of alignment {same}, this job "
                       f"uses {params.get('alignment')}; bin the same alignment")
    kept = select_by_iv(result["iv"], features, threshold=float(params.get("select_iv", 0.0)),
                        top=int(params.get("select_top", 0)))
    if not kept and ws.config.get("role") == "passive":
        raise VflError(f"the IV rule of job {job} leaves {ws.name} no column; lower select_iv "
                       "or raise select_top")
    specs = woe_specs(result, kept) if params.get("woe") else {}
    return kept, specs


def woe_frame(df: pd.DataFrame, specs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``df`` with each column of ``specs`` replaced by its bin's WOE (float)."""
    out = df.copy()
    for name, spec in specs.items():
        col = ColumnBins.from_json(spec["bins"])
        woe = np.asarray(spec["woe"], dtype=float)
        if len(woe) != col.n_bins:
            raise VflError(f"the WOE encoding of {name!r} is damaged; run the binning again")
        out[name] = woe[col.transform(df[name])]
    return out


def table_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Bin rows as CSV text (one line per bin)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(TABLE_KEYS), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in TABLE_KEYS})
    return buf.getvalue()
