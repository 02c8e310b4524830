"""Key rotation and peer removal: a rotated party keeps working, old files still verify,
forged notices and removed peers are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import TEST_KEY_BITS, drive, error_line, run

from vfl_cli.artifacts.io import canonical_json, pretty_json
from vfl_cli.crypto.signing import Signer


def handshake(bank: Path, bureau: Path, job: str) -> None:
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", job)
    drive([bank, bureau], job)
    assert json.loads(run("-w", str(bank), "job", "show", job, "--json").stdout)["done"]


def rotate(ws: Path, out: Path) -> dict:
    result = run("-w", str(ws), "keys", "rotate", "--key-bits", str(TEST_KEY_BITS), "--insecure-test-keys",
                 "--out", str(out), "--json")
    return json.loads(result.stdout)


def audit_ok(ws: Path) -> dict:
    report = json.loads(run("-w", str(ws), "audit", "verify", "--json", ok=False).stdout)
    assert report["ok"], report["problems"]
    return report


def test_rotate_then_a_handshake_job_and_the_audit_passes(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "before")
    notice = tmp_path / "bank.rotation"
    rotated = rotate(bank, notice)
    assert rotated["old"]["signing_fingerprint"] != rotated["new"]["signing_fingerprint"]
    assert rotated["old"]["paillier_fingerprint"] != rotated["new"]["paillier_fingerprint"]
    retired = bank / "keys" / "retired" / rotated["old"]["signing_fingerprint"][:16]
    for name in ("signing.key", "paillier.jwk", "paillier.pub.jwk"):
        assert (retired / name).stat().st_mode & 0o777 == 0o600
    # before bureau imports the notice, bank's new key is not the one bureau trusts
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "early")
    for f in (bank / "outbox").glob("early.*"):
        os.replace(f, bureau / "inbox" / f.name)
    assert "but bank's trusted key is" in error_line(run("-w", str(bureau), "job", "accept", "early", ok=False))
    run("-w", str(bank), "job", "cancel", "early")
    for f in (bank / "outbox").glob("early.*"):
        f.unlink()
    run("-w", str(bureau), "keys", "import", str(notice))
    shown = json.loads(run("-w", str(bureau), "keys", "show", "--json").stdout)
    assert {r["name"]: r["signing_fingerprint"] for r in shown}["bank"] == rotated["new"]["signing_fingerprint"]
    assert "Already trusted" in run("-w", str(bureau), "keys", "import", str(notice)).stderr
    handshake(bank, bureau, "after")
    for ws in (bank, bureau):
        report = audit_ok(ws)
        assert report["files_checked"] >= 4  # the files of the job before the rotation re-verified
    ledger = [json.loads(line) for line in (bank / "ledger.jsonl").read_text().splitlines()]
    assert [e["event"] for e in ledger].count("key-rotated") == 1
    # the peer reconciles bank's ledger, entries signed by both of bank's keys, with its own
    run("-w", str(bank), "audit", "export", "--out", str(tmp_path / "bank.ledger.json"))
    rec = json.loads(run("-w", str(bureau), "audit", "reconcile", str(tmp_path / "bank.ledger.json"), "--json",
                         ok=False).stdout)
    assert rec["ok"], rec["problems"]
    assert rec["files_matched"] >= 4


def test_forged_rotation_notice_is_refused(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    notice = tmp_path / "bank.rotation"
    rotate(bank, notice)
    forged = json.loads(notice.read_text())
    body = {k: v for k, v in forged.items() if k != "signature"}
    forged["signature"] = Signer.generate().sign(canonical_json(body))  # someone else's key
    fake = tmp_path / "forged.rotation"
    fake.write_bytes(pretty_json(forged))
    before = (bureau / "peers" / "bank.json").read_bytes()
    line = error_line(run("-w", str(bureau), "keys", "import", str(fake), ok=False))
    assert line.startswith(f"Error: {fake}: the signature does not match signing key")
    assert (bureau / "peers" / "bank.json").read_bytes() == before
    # a notice whose old key is not the trusted one is refused before its signature is checked
    forged["old_signing_fingerprint"] = "ab" * 32
    fake.write_bytes(pretty_json(forged))
    assert "ask bank for the notice of each rotation" in error_line(
        run("-w", str(bureau), "keys", "import", str(fake), ok=False))


def test_rotation_refused_while_a_job_runs(two_parties, tmp_path: Path) -> None:
    bank, _ = two_parties
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "open")
    line = error_line(run("-w", str(bank), "keys", "rotate", "--out", str(tmp_path / "n"), ok=False))
    assert "would cut off 1 unfinished job(s) (open)" in line and "vfl job cancel" in line
    assert not (tmp_path / "n").exists() and not (bank / "keys" / "retired").exists()


def test_a_different_card_under_a_known_name_points_to_rotation(two_parties, tmp_path: Path) -> None:
    from conftest import make_party

    _, bureau = two_parties
    other = tmp_path / "elsewhere"
    other.mkdir()
    make_party(other, "bank", "active", Path(__file__).parents[1] / "sample_data" / "breast_active.csv",
               label_column="label")
    line = error_line(run("-w", str(bureau), "keys", "import", str(other / "bank.card"), ok=False))
    assert "rotation notice" in line and "vfl keys remove bank" in line


def test_removed_peer_is_refused_and_its_old_files_still_verify(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "hs")
    notice = tmp_path / "removal.notice"
    run("-w", str(bureau), "keys", "remove", "bank", "--notice", str(notice))
    assert not (bureau / "peers" / "bank.json").exists()
    assert len(list((bureau / "peers" / "removed").glob("bank.*.json"))) == 1
    audit_ok(bureau)  # bank's files from before its removal verify by its removed card
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "later")
    for f in (bank / "outbox").glob("later.*"):
        os.replace(f, bureau / "inbox" / f.name)
    line = error_line(run("-w", str(bureau), "job", "accept", "later", ok=False))
    assert "comes from bank, who is not a trusted peer" in line and "inbox/rejected/" in line
    assert not (bureau / "jobs" / "later").exists()
    # and no job of bureau's can name bank any more
    assert "bank was removed from bureau's peers" in error_line(
        run("-w", str(bureau), "keys", "remove", "bank", ok=False))
    # bank learns it was removed, from a notice signed by bureau's trusted key
    result = run("-w", str(bank), "keys", "import", str(notice))
    assert "removed bank from its peers" in result.stderr and "later" in result.stderr
    assert not (bank / "peers" / "bureau.json").exists()
    assert "no trusted peers yet" in error_line(
        run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "again", ok=False))
    assert "bureau was removed from bank's peers" in error_line(
        run("-w", str(bank), "keys", "remove", "bureau", ok=False))
    audit_ok(bank)


def test_removal_notice_for_someone_else_or_forged_is_refused(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    notice = tmp_path / "removal.notice"
    run("-w", str(bureau), "keys", "remove", "bank", "--notice", str(notice))
    forged = json.loads(notice.read_text())
    forged["signature"] = Signer.generate().sign(canonical_json({k: v for k, v in forged.items()
                                                                  if k != "signature"}))
    fake = tmp_path / "forged.notice"
    fake.write_bytes(pretty_json(forged))
    assert "the signature does not match" in error_line(run("-w", str(bank), "keys", "import", str(fake), ok=False))
    assert (bank / "peers" / "bureau.json").exists()


def test_keys_made_only_when_needed(tmp_path: Path, sample) -> None:
    from conftest import make_party

    bank = make_party(tmp_path, "bank", "active", sample("breast_active.csv"), label_column="label")
    bureau = tmp_path / "bureau"
    run("init", str(bureau), "--name", "bureau", "--role", "passive", "--data", str(sample("breast_passive.csv")),
        "--id-column", "id")
    made = json.loads(run("-w", str(bureau), "keygen", "--no-paillier", "--json").stdout)
    assert made["paillier_fingerprint"] == "" and not (bureau / "keys" / "paillier.jwk").exists()
    run("-w", str(bureau), "keys", "export", "--out", str(tmp_path / "bureau.card"))
    run("-w", str(bureau), "keys", "import", str(tmp_path / "bank.card"))
    run("-w", str(bank), "keys", "import", str(tmp_path / "bureau.card"))
    handshake(bank, bureau, "hs")  # a job that needs no Paillier key runs without one
    run("-w", str(bank), "job", "start", "--protocol", "psi", "--job", "al")
    drive([bank, bureau], "al")
    line = error_line(run("-w", str(bank), "job", "start", "--protocol", "hetero-lr", "--job", "tr",
                          "--param", 'alignment="al"', ok=False))
    assert "bureau has no Paillier key" in line and "'vfl keygen'" in line
    assert not (bank / "jobs" / "tr").exists() and not list((bank / "outbox").glob("tr.*"))
    # made when needed: the same signing key, a Paillier key added; the peer accepts the new card
    added = json.loads(run("-w", str(bureau), "keygen", "--key-bits", str(TEST_KEY_BITS), "--insecure-test-keys",
                           "--json").stdout)
    assert added["signing_fingerprint"] == made["signing_fingerprint"] and added["paillier_fingerprint"]
    run("-w", str(bureau), "keys", "export", "--out", str(tmp_path / "bureau2.card"))
    assert "Now trusting" in run("-w", str(bank), "keys", "import", str(tmp_path / "bureau2.card")).stderr
    run("-w", str(bank), "job", "start", "--protocol", "hetero-lr", "--job", "tr", "--param", 'alignment="al"',
        "--param", "epochs=1")
    drive([bank, bureau], "tr")
    audit_ok(bank)
    audit_ok(bureau)


def test_recipes_make_paillier_keys_only_for_jobs_that_use_them() -> None:
    from conftest import ROOT

    from vfl_cli.recipes import load_recipe

    hfl = load_recipe(ROOT / "recipes" / "hfl_fedavg.toml")
    assert hfl.paillier_parties() == {p.name for p in hfl.parties if p.role == "worker"}
    assert hfl.keygen_args("hq") == ["keygen", "--no-paillier"]
    hfl.tables.setdefault("train", {})["secure_aggregation"] = False
    assert hfl.paillier_parties() == set()
    assert load_recipe(ROOT / "recipes" / "handshake.toml").paillier_parties() == set()
    demo = load_recipe(ROOT / "recipes" / "demo.toml")
    assert demo.keygen_args("lab") == ["keygen", "--key-bits", "1024"]
