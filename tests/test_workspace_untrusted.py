"""Issue 12, part B: names are data, quarantine never blocks, secrets are owner-only.

Each test crafts the file or state an attacker would and checks what a real workspace does.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import carry, error_line, run

from vfl_cli import jobs
from vfl_cli.artifacts import _zip
from vfl_cli.artifacts.io import canonical_json
from vfl_cli.crypto.signing import Signer
from vfl_cli.errors import VflError
from vfl_cli.workspace import PartyCard, Workspace


def forge(data: bytes, signer: Signer, **changes: object) -> bytes:
    """Change manifest fields of a real artifact and sign it again with ``signer``.

    This bypasses the writer's own checks, as an attacker's tool would.
    """
    entries = _zip.unpack(data, max_entries=100, fail=ValueError)
    manifest = json.loads(bytes(entries[0].content))
    manifest.update(changes, sender_key=signer.verifier.fingerprint)
    body = canonical_json(manifest)
    rest = [(e.name, bytes(e.content)) for e in entries[2:]]
    return _zip.pack([("manifest.json", body), ("manifest.sig", (signer.sign(body) + "\n").encode()), *rest])


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def plant_card(path: Path, signer: Signer, like: Path) -> None:
    """A party card named ``evil`` with the attacker's signing key, where a path could reach it."""
    real = Workspace(like)
    card = PartyCard(name="evil", role="active", paillier=real.public_key, verifier=signer.verifier,
                     created="")
    path.write_bytes(card.to_bytes(signer))


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_a_sender_that_is_a_path_never_picks_the_key(two_parties, tmp_path: Path, where: str) -> None:
    bank, bureau = two_parties
    attacker = Signer.generate()
    if where == "relative":
        plant_card(bureau / "inbox" / "evil.json", attacker, bank)
        sender = "../inbox/evil"
    else:
        plant_card(tmp_path / "evil.json", attacker, bank)
        sender = str(tmp_path / "evil")
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs1")
    proposal = next((bank / "outbox").glob("*job-proposal*"))
    forged = bureau / "inbox" / "hs1.001.job-proposal.evil-to-bureau.zip"
    forged.write_bytes(forge(proposal.read_bytes(), attacker, sender=sender))
    # inspect: never "valid"
    shown = run("-w", str(bureau), "inspect", str(forged), ok=False)
    assert shown.exit_code == 1 or "signature: valid" not in shown.output
    # accept: refused with one Error line, the file quarantined, no job
    message = error_line(run("-w", str(bureau), "job", "accept", ok=False))
    assert forged.name in message and not (bureau / "jobs" / "hs1").exists()
    assert (bureau / "inbox" / "rejected" / forged.name).exists()
    # audit verify: a planted archive file from that "sender" fails the audit
    (bureau / "archive" / "received" / forged.name).write_bytes(
        (bureau / "inbox" / "rejected" / forged.name).read_bytes())
    assert "audit failed" in error_line(run("-w", str(bureau), "audit", "verify", ok=False))


def test_peers_are_found_by_exact_name_only(two_parties) -> None:
    bank, bureau = two_parties
    plant_card(bureau / "inbox" / "evil.json", Signer.generate(), bank)
    ws = Workspace(bureau)
    assert set(ws.peers()) == {"bank"}
    for name in ("../inbox/evil", str(bureau / "inbox" / "evil"), "bank/../bank", "bank\n"):
        with pytest.raises(VflError, match="not a trusted peer"):
            ws.peer(name)
    # a card filed under another party's name is refused, not trusted under either name
    (bureau / "peers" / "evil.json").write_bytes((bureau / "peers" / "bank.json").read_bytes())
    with pytest.raises(VflError, match="holds the card of bank"):
        Workspace(bureau).peers()


@pytest.mark.parametrize("job", ["/tmp/vfl-escape-job", "zz/../hs1", "..", "hs1/../../x"])
def test_a_job_id_is_never_a_path(two_parties, tmp_path: Path, job: str) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs1")
    carry(bank, bureau)
    run("-w", str(bureau), "job", "accept", "hs1")
    carry(bureau, bank)
    run("-w", str(bank), "step")  # hs1 is finished on both sides
    outside = {p for p in tmp_path.parent.iterdir()}
    before = tree(bureau)
    # typed: refused with one Error line
    assert "job id" in error_line(run("-w", str(bank), "job", "start", "--protocol", "handshake",
                                      "--job", job, ok=False))
    assert "job id" in error_line(run("-w", str(bank), "job", "show", job, ok=False))
    # received: a signed proposal under that id is quarantined; nothing is written elsewhere
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs2")
    proposal = next((bank / "outbox").glob("hs2.*job-proposal*"))
    forged = bureau / "inbox" / "crafted.zip"
    forged.write_bytes(forge(proposal.read_bytes(), Workspace(bank).signer, job=job))
    error_line(run("-w", str(bureau), "job", "accept", ok=False))
    after = tree(bureau)
    assert {k: v for k, v in after.items() if not k.startswith("inbox/rejected/")} == before
    assert (bureau / "inbox" / "rejected" / "crafted.zip").exists()
    assert {p for p in tmp_path.parent.iterdir()} == outside
    assert not Path("/tmp/vfl-escape-job").exists()
    with pytest.raises(VflError, match="job id"):
        jobs.job_dir(Workspace(bureau), job)


def test_one_bad_file_never_blocks_the_others(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    for job in ("hs1", "hs2"):
        run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", job)
    carry(bank, bureau)
    inbox = bureau / "inbox"
    run("-w", str(bureau), "job", "accept", "hs1")
    hs2_hello = next(inbox.glob("hs2.*hello*"))
    # a damaged file, a pipe and a link to an endless device, all named like artifacts
    (inbox / "garbage.zip").write_bytes(b"PK\x03\x04 not really a zip")
    os.mkfifo(inbox / "pipe.zip")
    os.symlink("/dev/zero", inbox / "zero.zip")
    result = run("-w", str(bureau), "job", "accept", "hs2", "--json")
    reports = json.loads(result.stdout)
    assert reports[0]["job"] == "hs2" and reports[0]["done"] and reports[0]["received"] == [hs2_hello.name]
    rejected = {r["file"]: r["reason"] for r in jobs.rejected_files(Workspace(bureau))}
    assert set(rejected) == {"garbage.zip", "pipe.zip", "zero.zip"}
    assert "regular file" in rejected["pipe.zip"] or "plain file" in rejected["pipe.zip"]
    for name, reason in rejected.items():
        assert f"Rejected {name}" in result.stderr
        assert (inbox / "rejected" / f"{name}.reason.txt").read_text().strip() == reason
    # the same name refused again is kept beside the first, not over it
    (inbox / "garbage.zip").write_bytes(b"again")
    out = json.loads(run("-w", str(bureau), "step", "--json").stdout)
    assert out == [] and {r["file"] for r in jobs.rejected_files(Workspace(bureau))} >= {"garbage.zip.1"}


def test_misdirected_and_unknown_sender_files_are_quarantined(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs1")
    carry(bank, bureau)
    run("-w", str(bureau), "job", "accept", "hs1")
    stranger = Signer.generate()
    reply = next((bureau / "outbox").glob("*reply*"))
    # bureau's own reply dropped back into its inbox; a file from a signer nobody trusts
    (bureau / "inbox" / "own.zip").write_bytes(reply.read_bytes())
    (bureau / "inbox" / "stranger.zip").write_bytes(forge(reply.read_bytes(), stranger, sender="mallory",
                                                          recipient="bureau"))
    result = run("-w", str(bureau), "step")
    reasons = {r["file"]: r["reason"] for r in jobs.rejected_files(Workspace(bureau))}
    assert set(reasons) == {"own.zip", "stranger.zip"}
    assert "not a trusted peer" in reasons["stranger.zip"]
    assert "Rejected own.zip" in result.stderr


def test_secrets_are_readable_by_their_owner_only(two_parties) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs1")
    for f in (bank / "outbox").glob("*-to-bureau.zip"):
        os.chmod(f, 0o644)  # the courier leaves files world-readable
    carry(bank, bureau)
    run("-w", str(bureau), "job", "accept", "hs1")
    for ws in (bank, bureau):
        checked = 0
        for top in ("keys", "jobs", "archive"):
            for p in [ws / top, *(ws / top).rglob("*")]:
                mode = stat.S_IMODE(os.stat(p).st_mode)
                assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
                checked += 1
        assert checked > 10
    # an older workspace whose folders were left open is closed by the next command
    os.chmod(bureau / "jobs", 0o755)
    run("-w", str(bureau), "step")
    assert stat.S_IMODE(os.stat(bureau / "jobs").st_mode) == 0o700


def test_parties_and_options_are_checked_where_they_enter(two_parties) -> None:
    bank, _ = two_parties
    assert "not allowed" in error_line(run("-w", str(bank), "job", "start", "--protocol", "handshake",
                                           "--with", "../bureau", ok=False))
    assert "not a trusted peer" in error_line(run("-w", str(bank), "job", "start", "--protocol", "handshake",
                                                  "--with", "ghost", ok=False))
    assert "job id" in error_line(run("-w", str(bank), "job", "accept", "../x", ok=False))


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "evil\n", "Evil"])
def test_a_card_whose_name_is_a_path_is_not_imported(two_parties, tmp_path: Path, name: str) -> None:
    bank, bureau = two_parties
    signer = Signer.generate()
    card = PartyCard(name=name, role="active", paillier=Workspace(bank).public_key,
                     verifier=signer.verifier, created="")
    (tmp_path / "evil.card").write_bytes(card.to_bytes(signer))
    before = tree(bureau)
    assert "not allowed" in error_line(run("-w", str(bureau), "keys", "import", str(tmp_path / "evil.card"),
                                           ok=False))
    assert tree(bureau) == before


def test_a_proposal_whose_signer_is_not_a_party_is_refused(two_parties, tmp_path: Path, sample) -> None:
    from conftest import introduce, make_party

    bank, bureau = two_parties
    make_party(tmp_path, "insurer", "active", sample("breast_active.csv"), label_column="label")
    introduce(tmp_path, "bank", "bureau", "insurer")
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs1", "--with", "bureau")
    proposal = next((bank / "outbox").glob("*job-proposal*"))
    manifest = json.loads(bytes(_zip.unpack(proposal.read_bytes(), max_entries=100, fail=ValueError)[0].content))
    insurer = Workspace(tmp_path / "insurer").card()
    parties = [p for p in manifest["meta"]["parties"] if p["name"] != "bank"] + [
        {"name": "insurer", "role": "active", "signing_fingerprint": insurer.signing_fingerprint,
         "paillier_fingerprint": insurer.paillier_fingerprint}]
    meta = dict(manifest["meta"], parties=parties)
    (bureau / "inbox" / proposal.name).write_bytes(forge(proposal.read_bytes(), Workspace(bank).signer, meta=meta))
    assert "not one of the job's parties" in error_line(run("-w", str(bureau), "job", "accept", ok=False))
    assert not (bureau / "jobs" / "hs1").exists()


def test_a_file_of_another_kind_at_the_expected_step_is_quarantined(two_parties) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs1")
    carry(bank, bureau)
    run("-w", str(bureau), "job", "accept", "hs1")
    reply = next((bureau / "outbox").glob("*reply*"))
    (bank / "inbox" / reply.name).write_bytes(forge(reply.read_bytes(), Workspace(bureau).signer,
                                                    kind="handshake/hello"))
    out = json.loads(run("-w", str(bank), "step", "--json").stdout)
    assert "waits for handshake/reply from bureau" in out[0]["rejected"][0]["reason"]
    assert not out[0]["done"] and out[0]["waiting_for"] == ["handshake/reply from bureau"]
    carry(bureau, bank)  # the genuine reply still finishes the job
    assert json.loads(run("-w", str(bank), "step", "--json").stdout)[0]["done"]
