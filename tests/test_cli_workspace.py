"""vfl init, keygen and keys, through the real command."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import phe
import pytest
from conftest import TEST_KEY_BITS, error_line, make_party, run


def test_init_creates_the_layout(tmp_path: Path, sample) -> None:
    ws = tmp_path / "bank"
    out = json.loads(run("init", str(ws), "--role", "active", "--data", str(sample("breast_active.csv")),
                         "--id-column", "id", "--label-column", "label", "--json").stdout)
    for sub in ("keys", "peers", "inbox", "outbox", "jobs", "archive/sent", "archive/received"):
        assert (ws / sub).is_dir()
    config = json.loads((ws / "vfl.json").read_text())
    assert config["name"] == "bank" and config["role"] == "active"
    # init records the file and its id/label columns; the features are read from the file by each job
    assert "features" not in config and config["label_column"] == "label"
    assert len(out["features"]) == 10 and "label" not in out["features"] and "id" not in out["features"]


@pytest.mark.parametrize("args, message", [
    (["--data", "nope.csv", "--id-column", "id"], "does not exist"),
    (["--data", "{active}", "--id-column", "customer"], "no id column 'customer'"),
    (["--data", "{passive}", "--id-column", "id", "--label-column", "label"], "a passive party holds no labels"),
])
def test_init_mistakes(tmp_path: Path, sample, args: list[str], message: str) -> None:
    args = [a.format(active=sample("breast_active.csv"), passive=sample("breast_passive.csv")) for a in args]
    result = run("init", str(tmp_path / "p"), "--role", "passive", *args, ok=False)
    assert message in error_line(result)
    assert not (tmp_path / "p").exists()


def test_init_refuses_a_non_empty_folder(tmp_path: Path, sample) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "mine.txt").write_text("keep me")
    result = run("init", str(tmp_path / "p"), "--role", "passive", "--data",
                 str(sample("breast_passive.csv")), "--id-column", "id", ok=False)
    assert "not empty" in error_line(result)
    assert (tmp_path / "p" / "mine.txt").read_text() == "keep me"


def test_init_refuses_non_utf8_and_empty_files(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("id,x\n\xe9t\xe9,1\n".encode("latin-1"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for f, msg in ((bad, "not UTF-8"), (empty, "is empty")):
        result = run("init", str(tmp_path / f.stem), "--role", "passive", "--data", str(f),
                     "--id-column", "id", ok=False)
        assert msg in error_line(result)


def test_commands_outside_a_workspace_say_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "vfl init" in error_line(run("keys", "show", ok=False))


def test_workspace_is_found_by_walking_up(tmp_path: Path, sample, monkeypatch) -> None:
    ws = make_party(tmp_path, "bank", "active", sample("breast_active.csv"), label_column="label")
    monkeypatch.chdir(ws / "inbox")
    out = json.loads(run("keys", "show", "--json").stdout)
    assert out[0]["name"] == "bank" and out[0]["self"]


def test_keygen_writes_phe_jwk_keys_with_private_modes(tmp_path: Path, sample) -> None:
    ws = make_party(tmp_path, "bank", "active", sample("breast_active.csv"), label_column="label")
    for name in ("paillier.jwk", "signing.key"):
        assert stat.S_IMODE((ws / "keys" / name).stat().st_mode) == 0o600
    priv = json.loads((ws / "keys" / "paillier.jwk").read_text())
    # the format python-paillier's pheutil reads: kty DAJ, p, q, pub.n
    assert priv["kty"] == "DAJ" and {"p", "q", "pub"} <= set(priv)
    n = phe.util.base64_to_int(priv["pub"]["n"])
    pub = phe.PaillierPublicKey(n)
    key = phe.PaillierPrivateKey(pub, phe.util.base64_to_int(priv["p"]), phe.util.base64_to_int(priv["q"]))
    assert key.decrypt(pub.encrypt(42)) == 42
    assert n.bit_length() >= TEST_KEY_BITS - 1


def test_keygen_refuses_small_keys_and_warns(tmp_path: Path, sample) -> None:
    run("init", str(tmp_path / "b"), "--role", "passive", "--data", str(sample("breast_passive.csv")),
        "--id-column", "id")
    assert "refused" in error_line(run("-w", str(tmp_path / "b"), "keygen", "--key-bits", "512", ok=False))
    result = run("-w", str(tmp_path / "b"), "keygen", "--key-bits", "1024")
    assert "insecure, for tests only" in result.stderr


def test_keygen_never_replaces_keys(tmp_path: Path, sample) -> None:
    ws = make_party(tmp_path, "bank", "active", sample("breast_active.csv"), label_column="label")
    before = (ws / "keys" / "paillier.jwk").read_bytes()
    result = run("-w", str(ws), "keygen", "--key-bits", "512", "--insecure-test-keys", ok=False)
    assert "never replaced" in error_line(result)
    assert (ws / "keys" / "paillier.jwk").read_bytes() == before


def test_card_has_no_private_fields(two_parties, tmp_path: Path) -> None:
    card = json.loads((tmp_path / "bank.card").read_text())
    text = json.dumps(card)
    assert '"p"' not in text and '"q"' not in text and "lambda" not in text
    priv = json.loads((two_parties[0] / "keys" / "paillier.jwk").read_text())
    assert priv["p"] not in text and priv["q"] not in text
    seed = (two_parties[0] / "keys" / "signing.key").read_text().strip()
    assert seed not in text


def test_keys_show_lists_peers(two_parties) -> None:
    bank, _ = two_parties
    rows = json.loads(run("-w", str(bank), "keys", "show", "--json").stdout)
    assert [r["name"] for r in rows] == ["bank", "bureau"]


def test_import_mistakes(two_parties, tmp_path: Path, sample) -> None:
    bank, _ = two_parties
    assert "own card" in error_line(run("-w", str(bank), "keys", "import", str(tmp_path / "bank.card"), ok=False))
    # a second, different 'bureau' must not silently replace the trusted one
    other = make_party(tmp_path / "elsewhere", "bureau", "passive", sample("breast_passive.csv"))
    result = run("-w", str(bank), "keys", "import", str(tmp_path / "elsewhere" / "bureau.card"), ok=False)
    assert "already trusted" in error_line(result)
    # an edited card fails its self-signature
    card = json.loads((tmp_path / "bureau.card").read_text())
    card["role"] = "active"
    forged = tmp_path / "forged.card"
    forged.write_text(json.dumps(card))
    assert "signature" in error_line(run("-w", str(bank), "keys", "import", str(forged), ok=False))
    assert other.exists()


def test_export_does_not_overwrite(two_parties, tmp_path: Path) -> None:
    bank, _ = two_parties
    before = (tmp_path / "bank.card").read_bytes()
    result = run("-w", str(bank), "keys", "export", "--out", str(tmp_path / "bank.card"), ok=False)
    assert "already exists" in error_line(result)
    assert (tmp_path / "bank.card").read_bytes() == before
