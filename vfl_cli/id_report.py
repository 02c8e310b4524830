"""What happened to a party's ids: why an alignment matched few, which rows a prediction scored.

Why an alignment matched few ids: hints drawn from the format of this party's own ids.

A party never sees the other parties' ids, so it cannot say which ids *should* have matched;
it can say how its own ids are written (leading zeros, decimals, letter case, spaces), which is
what usually differs when two exports of the same customers do not meet (``7`` vs ``000007``).
The hints name formats and at most one example of the party's own ids, shown only to itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from vfl_cli.workspace import Workspace

#: An intersection below this share of the party's own ids is reported as suspiciously small.
SMALL_SHARE = 0.1
_SAMPLE = 2000


def _first(ids: Sequence[str], pattern: re.Pattern[str]) -> str | None:
    return next((i for i in ids if pattern.search(i)), None)


def format_hints(ids: Sequence[str]) -> list[str]:
    """How these ids are written, as hints for a user whose alignment matched few ids."""
    sample = [str(i).strip() for i in ids[:_SAMPLE]]
    hints = []
    if (ex := _first(sample, re.compile(r"^[+-]?\d+\.0*$"))) is not None:
        hints.append(f"ids look like decimals (e.g. {ex!r}): a spreadsheet may have turned whole-number ids "
                     "into numbers; write them as text on both sides")
    elif (ex := _first(sample, re.compile(r"^0\d+$"))) is not None:
        hints.append(f"ids have leading zeros (e.g. {ex!r}): if the other party writes "
                     f"{ex.lstrip('0') or '0'!r}, rewrite one side's ids so both use one form")
    elif sample and all(i.isdigit() for i in sample):
        hints.append(f"ids are plain numbers (e.g. {sample[0]!r}): if the other party pads them with zeros "
                     f"({sample[0].zfill(6)!r}), rewrite one side's ids so both use one form")
    if (ex := _first(sample, re.compile(r"[A-Za-z]"))) is not None:
        hints.append(f"ids are compared with their letter case (e.g. {ex!r} is not {ex.swapcase()!r}); "
                     "check that both sides write letters in the same case")
    if (ex := _first(sample, re.compile(r"\s"))) is not None:
        hints.append(f"ids contain spaces (e.g. {ex!r}), compared as written; leading and trailing "
                     "spaces are ignored, inner ones are not")
    return hints


def alignment_warning(intersection: int, own_ids: Sequence[str], count: int | None = None) -> str | None:
    """A warning when the intersection is empty or much smaller than this party's id count, else None.

    ``count``: the party's number of ids when ``own_ids`` holds only the first of them (hints
    look at the first 2,000).
    """
    n = len(own_ids) if count is None else count
    if n == 0 or (intersection > 0 and intersection >= SMALL_SHARE * n):
        return None
    what = "no id is" if intersection == 0 else f"only {intersection} of this party's {n} ids are"
    hints = format_hints(own_ids)
    advice = ("; ".join(hints) + ". " if hints else "") + \
        "Compare the id format (not the ids) with the other party before aligning again"
    return f"{what} common to every party ({n} ids here). {advice[0].upper()}{advice[1:]}"


def job_warning(ws: Workspace, job: str) -> str | None:
    """:func:`alignment_warning` for a finished alignment (psi) job of this workspace."""
    import json

    from vfl_cli.jobs import job_dir, load_info
    from vfl_cli.protocol.psi_stream import csv_chunks

    info = load_info(ws, job)
    state = json.loads((job_dir(ws, job) / "state.json").read_text())  # not the arrays: they may be large
    if info.get("protocol") != "psi" or not state["done"]:
        return None
    # the id column only, a chunk at a time: a streamed alignment's bound holds here too
    chunks = csv_chunks(Path(info.get("data") or ws.config["data"]), ws.config["id_column"], 50_000,
                        ws.config.get("csv"))
    sample: list[str] = []
    count = 0
    for _, ids in chunks():
        sample += ids[:_SAMPLE - len(sample)]
        count += len(ids)
    return alignment_warning(int(state["results"].get("intersection_size", 0)), sample, count)


def scored_and_unscored(ws: Workspace, alignment: str,
                        scores: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The scored ids with their scores, the ids of this party's rows left unscored, and its row count.

    Scores of a multi-class model (rows x classes) give one column per class, ``score_0`` ...

    Rows are scored only when every party holds their id (the alignment's intersection); the
    others are listed by their id as written in the file the alignment read.
    """
    import pandas as pd

    from vfl_cli.jobs import load_info, load_state
    from vfl_cli.protocol.psi import normalise_ids

    info = load_info(ws, alignment)
    aligned = load_state(ws, alignment)[0].arrays["aligned_ids"]
    df = ws.read_data(Path(info["data"])) if info.get("data") else ws.read_data()
    own = normalise_ids(df[ws.config["id_column"]].tolist(), column=ws.config["id_column"])
    in_both = set(aligned.tolist())
    missing = [i for i in own if i not in in_both]
    columns = ({"score": scores} if scores.ndim == 1  # a multi-class model: one column per class
               else {f"score_{k}": scores[:, k] for k in range(scores.shape[1])})
    return pd.DataFrame({"id": aligned, **columns}), pd.DataFrame({"id": missing}), len(own)
