"""What a party's workspace holds right now, git-style: jobs and their progress, files waiting
to be carried, files arrived but not yet used, files refused.

Read-only and cheap: it verifies nothing and takes no lock, so it can run beside ``vfl watch``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from vfl_cli import drops
from vfl_cli import jobs as engine
from vfl_cli.workspace import Workspace


def _handoffs(ws: Workspace) -> dict[tuple[str, str], int]:
    """(job, "sent" | "received") -> number of artifacts, from the ledger."""
    counts: Counter[tuple[str, str]] = Counter()
    for e in ws.ledger.entries():
        if e.get("event") in ("sent", "received") and e.get("job"):
            counts[(str(e["job"]), str(e["event"]))] += 1
    return dict(counts)


def job_traffic(ws: Workspace, job: str) -> dict[str, int]:
    """Artifacts (hand-offs) and bytes this party sent and received for ``job``, from its ledger."""
    out = {"sent": 0, "received": 0, "bytes_sent": 0, "bytes_received": 0}
    for e in ws.ledger.entries():
        event = e.get("event")
        if e.get("job") == job and event in ("sent", "received"):
            out[str(event)] += 1
            size = e.get("size")
            out[f"bytes_{event}"] += size if isinstance(size, int) else 0
    return out


def job_progress(ws: Workspace, job: str, handoffs: dict[tuple[str, str], int] | None = None) -> dict[str, Any]:
    """Phase, epochs done (or round), last loss and hand-offs of one job, from its state and ledger."""
    info = engine.load_info(ws, job)
    # state.json only: the job's arrays (ids, shares) may be large and are not needed here
    state = json.loads((engine.job_dir(ws, job) / "state.json").read_text())
    counts = _handoffs(ws) if handoffs is None else handoffs
    d = state["data"]
    history = d.get("history") or []
    last = history[-1] if history and isinstance(history[-1], dict) else {}
    loss = last.get("loss", last.get("val_loss"))
    out: dict[str, Any] = {
        "job": job,
        "protocol": info["protocol"],
        "proposer": info["proposer"],
        "phase": state["phase"],
        "done": state["done"],
        "cancelled": state["phase"] == "cancelled",
        # 'epoch' in a training state counts the epochs finished; 'round' is the round under way
        "epochs_done": d["epoch"] if isinstance(d.get("epoch"), int) else None,
        "epochs": info["params"].get("epochs"),
        "round": d["round"] if isinstance(d.get("round"), int) else None,
        "rounds": info["params"].get("rounds"),
        "loss": round(float(loss), 6) if isinstance(loss, (int, float)) else None,
        "sent": counts.get((job, "sent"), 0),
        "received": counts.get((job, "received"), 0),
    }
    if state["phase"] == "cancelled":
        out["cancelled_by"] = state["results"].get("cancelled", {}).get("by")
    return out


def workspace_status(ws: Workspace) -> dict[str, Any]:
    """Everything ``vfl status`` shows, as JSON-ready data."""
    counts = _handoffs(ws)
    jobs = [job_progress(ws, j["job"], counts) for j in engine.list_jobs(ws)]
    folders = drops.drops(ws)
    outbox = [{"file": f.name, "recipient": peer, "drop": folders.get(peer or "")}
              for f, peer in drops.outbox_files(ws)]
    inbox = []
    for f in sorted(ws.inbox.glob("*.zip")):
        if f.name.startswith("."):
            continue
        inbox.append({"file": f.name, "job": f.name.split(".", 1)[0],
                      "proposal": ".job-proposal." in f.name})
    pickup = drops.pickup_folder(ws)
    return {
        "party": ws.name,
        "role": ws.role,
        "jobs": jobs,
        "outbox": outbox,
        "inbox": inbox,
        "rejected": engine.rejected_files(ws),
        "drops": folders,
        "pickup": str(pickup) if pickup else None,
    }
