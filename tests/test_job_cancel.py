"""``vfl job accept`` says every file to carry; ``vfl job cancel`` and ``vfl job reject`` (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import carry, error_line, introduce, make_party, run


def test_accept_lists_the_file_it_wrote(two_parties) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    carry(bank, bureau)
    result = run("-w", str(bureau), "job", "accept", "hs", "--json")
    assert json.loads(result.stdout)[0]["sent"] == [
        {"file": "hs.001.reply.bureau-to-bank.zip", "recipient": "bank"}]
    assert "wrote outbox/hs.001.reply.bureau-to-bank.zip  -> carry it to bank's inbox" in result.stderr


def test_reject_sends_a_notice_and_the_proposer_stops(two_parties) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    carry(bank, bureau)
    out = json.loads(run("-w", str(bureau), "job", "reject", "hs", "--reason", "not today", "--json").stdout)
    assert out[0]["sent"] == [{"file": "hs.001.job-cancel.bureau-to-bank.zip", "recipient": "bank"}]
    assert not list((bureau / "inbox").glob("hs.001.*"))  # the proposal is used up
    assert carry(bureau, bank) == ["hs.001.job-cancel.bureau-to-bank.zip"]
    result = run("-w", str(bank), "step")
    assert "[hs] cancelled by bureau: not today" in result.stderr
    shown = json.loads(run("-w", str(bank), "job", "show", "hs", "--json").stdout)
    assert (shown["phase"], shown["results"]) == ("cancelled", {"cancelled": {"by": "bureau", "reason": "not today"}})
    assert "Nothing to do" in run("-w", str(bank), "step").stderr  # no longer listed
    for ws in (bank, bureau):  # the notices are in each ledger and archive like any file
        run("-w", str(ws), "audit", "verify")
    # the hello the bank sent before the rejection can never be used: refused, not left waiting
    run("-w", str(bureau), "step")
    assert [f.name for f in (bureau / "inbox" / "rejected").glob("*.zip")] == ["hs.002.hello.bank-to-bureau.zip"]


def test_cancel_reaches_a_peer_mid_job(two_parties) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "align", "start", "--job", "al")
    carry(bank, bureau)
    run("-w", str(bureau), "align", "respond", "al")  # bureau now waits for the bank's finish
    out = json.loads(run("-w", str(bank), "job", "cancel", "al", "--reason", "wrong file", "--json").stdout)
    assert [s["file"] for s in out[0]["sent"]] == ["al.003.job-cancel.bank-to-bureau.zip"]
    assert carry(bank, bureau) == ["al.003.job-cancel.bank-to-bureau.zip"]
    assert "[al] cancelled by bank: wrong file" in run("-w", str(bureau), "step").stderr
    jobs = json.loads(run("-w", str(bureau), "job", "list", "--json").stdout)
    assert [(j["job"], j["phase"], j["done"]) for j in jobs] == [("al", "cancelled", True)]
    status = json.loads(run("-w", str(bureau), "status", "--json").stdout)
    assert status["jobs"][0]["cancelled"] and status["jobs"][0]["cancelled_by"] == "bank"
    # the bank's late finish from before the cancel (none here) or anything after is refused
    assert "Nothing to do" in run("-w", str(bureau), "step").stderr


def test_cancel_and_reject_mistakes(two_parties) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    err = error_line(run("-w", str(bureau), "job", "reject", "hs", ok=False))
    assert err == f"Error: no proposal for job hs waits in {bureau / 'inbox'}; 'vfl status' lists what arrived"
    carry(bank, bureau)
    run("-w", str(bureau), "job", "accept", "hs")
    err = error_line(run("-w", str(bureau), "job", "cancel", "hs", ok=False))
    assert err == "Error: job hs is already finished here; there is nothing to cancel"
    run("-w", str(bank), "job", "cancel", "hs")
    err = error_line(run("-w", str(bank), "job", "cancel", "hs", ok=False))
    assert err == "Error: job hs is already cancelled here; there is nothing to cancel"
    refused = error_line(run("-w", str(bank), "job", "cancel", "nope", ok=False))
    assert refused.startswith("Error: bank has no job 'nope'")


def test_a_rejection_reaches_every_party_through_the_proposer(two_parties, sample, tmp_path: Path) -> None:
    bank, bureau = two_parties
    third = make_party(tmp_path, "third", "passive", sample("breast_passive.csv"))
    introduce(tmp_path, "bank", "bureau", "third")
    run("-w", str(bank), "align", "start", "--job", "al")
    carry(bank, bureau)
    carry(bank, third)
    run("-w", str(bureau), "align", "respond", "al")  # bureau takes part and waits
    run("-w", str(third), "job", "reject", "al", "--reason", "not with us")
    carry(third, bank)
    out = json.loads(run("-w", str(bank), "step", "--json").stdout)
    assert out[0]["phase"] == "cancelled"
    assert [s["recipient"] for s in out[0]["sent"]] == ["bureau"]  # passed on to the other party
    carry(bank, bureau)
    assert "[al] cancelled by bank: third cancelled: not with us" in run("-w", str(bureau), "step").stderr
