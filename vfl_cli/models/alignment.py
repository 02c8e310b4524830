"""A party's own data in the order an alignment job agreed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vfl_cli import jobs
from vfl_cli.errors import VflError
from vfl_cli.models.features import aligned_rows
from vfl_cli.workspace import Workspace

if TYPE_CHECKING:
    import pandas as pd


def aligned_frame(ws: Workspace, job: str) -> "pd.DataFrame":
    """This party's rows (own columns only) in the aligned order of a finished psi job."""
    info = jobs.load_info(ws, job)
    state, _ = jobs.load_state(ws, job)
    if info["protocol"] != "psi":
        raise VflError(f"job {job} is a {info['protocol']} job, not an alignment (psi) job")
    if not state.done:
        raise VflError(f"alignment job {job} is not finished yet (phase {state.phase}); run 'vfl step'")
    data = ws.read_data(Path(info["data"])) if info.get("data") else ws.read_data()
    return aligned_rows(data, state.arrays, ws.config["id_column"], job).reset_index(drop=True)
