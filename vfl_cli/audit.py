"""Re-checking a workspace's ledger and the archived artifacts it names."""

from __future__ import annotations

from vfl_cli.artifacts.container import read_artifact
from vfl_cli.errors import VflError
from vfl_cli.ledger import VerifyReport, verify_chain
from vfl_cli.workspace import Workspace


def verify_workspace(ws: Workspace) -> VerifyReport:
    """Check the chain and signatures of the ledger, then every archived file it names."""
    report = VerifyReport()
    entries = ws.ledger.entries()
    verify_chain(entries, ws.signer.verifier, report)
    for e in entries:
        if e.get("event") not in ("sent", "received"):
            continue
        folder = "sent" if e["event"] == "sent" else "received"
        f = ws.path("archive", folder, e["file"])
        if not f.exists():
            report.files_missing.append(e["file"])
            continue
        report.files_checked += 1
        try:
            loaded = read_artifact(f)
            if loaded.sha256 != e["artifact_sha256"]:
                report.problems.append(f"{f.name}: differs from the file the ledger recorded")
                continue
            loaded.verify(ws.verifier_for(loaded.artifact.sender), what=f.name)
        except VflError as exc:
            report.problems.append(str(exc))
    return report
