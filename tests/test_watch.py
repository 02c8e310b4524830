"""Drop folders, the watch loop and its policy (issue 16, workflow part)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import error_line, run
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl_cli import drops
from vfl_cli import jobs as engine
from vfl_cli.errors import VflError
from vfl_cli.watch import Policy, Watcher, load_policy
from vfl_cli.workspace import Workspace

POLICY = 'peers = ["bank"]\nprotocols = ["handshake"]\n'


@pytest.fixture
def wired(two_parties, tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """bank and bureau with one drop folder per direction, set with the commands."""
    bank, bureau = two_parties
    to_bureau, to_bank = tmp_path / "to-bureau", tmp_path / "to-bank"
    to_bureau.mkdir()
    to_bank.mkdir()
    run("-w", str(bank), "peers", "set-drop", "bureau", str(to_bureau))
    run("-w", str(bank), "peers", "set-pickup", str(to_bank))
    run("-w", str(bureau), "peers", "set-drop", "bank", str(to_bank))
    run("-w", str(bureau), "peers", "set-pickup", str(to_bureau))
    return bank, bureau, to_bureau, to_bank


def watcher(ws: Path, policy: Policy | None = None) -> tuple[Watcher, list[str]]:
    lines: list[str] = []
    return Watcher(Workspace(ws), policy, lines.append), lines


def test_deliver_moves_outbox_files_whole_into_the_drop_folder(wired) -> None:
    bank, bureau, to_bureau, _ = wired
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    out = json.loads(run("-w", str(bank), "peers", "deliver", "--json").stdout)
    names = sorted(m["file"] for m in out["delivered"])
    assert names == ["hs.001.job-proposal.bank-to-bureau.zip", "hs.002.hello.bank-to-bureau.zip"]
    assert sorted(p.name for p in to_bureau.iterdir()) == names  # no temporary file left behind
    assert not list((bank / "outbox").glob("*.zip"))
    assert sorted(p.name for p in (bank / "archive" / "sent").iterdir()) == names
    out = json.loads(run("-w", str(bureau), "peers", "deliver", "--json").stdout)
    assert sorted(m["file"] for m in out["picked_up"]) == names
    assert not list(to_bureau.iterdir())
    assert sorted(p.name for p in (bureau / "inbox").glob("*.zip")) == names


def test_a_different_file_in_the_drop_folder_is_never_overwritten(wired) -> None:
    bank, _, to_bureau, _ = wired
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    name = "hs.001.job-proposal.bank-to-bureau.zip"
    (to_bureau / name).write_bytes(b"someone else's file")
    err = error_line(run("-w", str(bank), "peers", "deliver", ok=False))
    assert err == (f"Error: {to_bureau / name} already exists with other content; it was not "
                   "overwritten. Check who wrote it before removing it")
    assert (to_bureau / name).read_bytes() == b"someone else's file"
    assert (bank / "outbox" / name).exists()


def test_drop_folder_mistakes(two_parties, tmp_path: Path) -> None:
    bank, _ = two_parties
    err = error_line(run("-w", str(bank), "peers", "set-drop", "nobody", str(tmp_path), ok=False))
    assert err.startswith("Error: 'nobody' is not a trusted peer of bank")
    err = error_line(run("-w", str(bank), "peers", "set-drop", "bureau", str(tmp_path / "nope"), ok=False))
    assert err == f"Error: {tmp_path / 'nope'} is not a folder; create it (or mount the share) first"
    err = error_line(run("-w", str(bank), "peers", "set-pickup", str(bank / "outbox"), ok=False))
    assert "this party's own inbox or outbox" in err


def test_watch_runs_a_job_both_ways_and_accepts_by_policy(wired, tmp_path: Path) -> None:
    bank, bureau, _, _ = wired
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    w_bank, log_bank = watcher(bank)
    w_bureau, log_bureau = watcher(bureau, load_policy(policy))
    for _ in range(3):
        w_bank.run(once=True)
        w_bureau.run(once=True)
    assert [j["done"] for j in engine.list_jobs(Workspace(bank))] == [True]
    assert [j["done"] for j in engine.list_jobs(Workspace(bureau))] == [True]
    assert "[hs] accepted the handshake proposal (the policy allows it)" in log_bureau
    assert "delivered hs.001.reply.bureau-to-bank.zip to bank (" + str(wired[3]) + ")" in log_bureau
    assert "[hs] done" in log_bank


def test_without_a_matching_policy_a_proposal_waits_for_a_person(wired, tmp_path: Path) -> None:
    bank, bureau, _, _ = wired
    policy = tmp_path / "policy.toml"
    policy.write_text('peers = ["bank"]\nprotocols = ["psi"]\n')
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    Watcher(Workspace(bank)).run(once=True)
    w, lines = watcher(bureau, load_policy(policy))
    w.run(once=True)
    w.run(once=True)
    assert engine.list_jobs(Workspace(bureau)) == []
    waits = [line for line in lines if "waits for a person" in line]
    assert waits == [("[hs] proposal from bank waits for a person: the policy does not allow protocol "
                      "handshake; run 'vfl job accept hs' or 'vfl job reject hs'")]  # said once


def test_a_bad_file_is_logged_and_the_loop_goes_on(wired) -> None:
    bank, bureau, to_bureau, _ = wired
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    Watcher(Workspace(bank)).run(once=True)
    bad = to_bureau / "zz.001.hello.bank-to-bureau.zip"
    bad.write_bytes(b"not a zip")
    os.utime(bad, (time.time() - 3600, time.time() - 3600))  # settled: not still being written
    w, lines = watcher(bureau, Policy(frozenset({"bank"}), frozenset({"handshake"})))
    w.run(once=True)
    assert [line for line in lines if line.startswith("rejected zz.001")]
    assert [j["done"] for j in engine.list_jobs(Workspace(bureau))] == [True]


def test_a_fresh_unreadable_file_in_the_pickup_folder_is_left_to_settle(wired) -> None:
    _, bureau, to_bureau, _ = wired
    partial = to_bureau / "hs.001.hello.bank-to-bureau.zip"
    partial.write_bytes(b"PK\x03\x04 half")
    assert drops.pick_up(Workspace(bureau)) == []
    assert partial.exists()
    assert drops.pick_up(Workspace(bureau), now=time.time() + drops.SETTLE_S + 1)
    assert not partial.exists()


def test_policy_file_format(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('peers = ["bank"]\nprotocols = ["hetero-lr"]\n[params]\nepochs = {max = 50}\n'
                 'optimizer = {one_of = ["adam"]}\nbatch_size = 0\n')
    p = load_policy(f)
    ok = {"epochs": 20, "optimizer": "adam", "batch_size": 0}
    assert p.refusal("bank", "hetero-lr", ok) is None
    assert p.refusal("bureau", "hetero-lr", ok) == "the policy does not allow proposals from bureau"
    assert p.refusal("bank", "hetero-lr", dict(ok, epochs=51)) == "epochs is 51; the policy's maximum is 50"
    assert p.refusal("bank", "hetero-lr", dict(ok, optimizer="sgd")) == "optimizer is 'sgd'; the policy allows ['adam']"
    assert p.refusal("bank", "hetero-lr", dict(ok, batch_size=32)) == "batch_size is 32; the policy allows only 0"
    assert p.refusal("bank", "hetero-lr", dict(ok, epochs="many")) == (
        "epochs is 'many', not a number; the policy sets a maximum")
    for text, message in (
        ('peers = "bank"\nprotocols = []\n', 'peers must be a list of names'),
        ('peers = []\nprotocols = []\nextra = 1\n', "unknown key(s) ['extra']"),
        ('peers = []\nprotocols = []\n[params]\nepochs = {below = 3}\n', "params.epochs may hold only"),
        ('peers = [', "is not valid TOML"),
    ):
        f.write_text(text)
        with pytest.raises(VflError) as exc:
            load_policy(f)
        assert message in str(exc.value)


@settings(max_examples=60, deadline=None)
@given(lo=st.integers(-100, 100), hi=st.integers(-100, 100), value=st.integers(-200, 200))
def test_policy_ranges_accept_exactly_the_values_inside(lo: int, hi: int, value: int) -> None:
    p = Policy(frozenset({"a"}), frozenset({"x"}), {"n": {"min": lo, "max": hi}})
    assert (p.refusal("a", "x", {"n": value}) is None) == (lo <= value <= hi)


def test_watch_command_once_and_a_bad_policy(wired, tmp_path: Path) -> None:
    bank, _, to_bureau, _ = wired
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    result = run("-w", str(bank), "watch", "--once")
    assert "delivered hs.002.hello.bank-to-bureau.zip to bureau" in result.stderr
    assert len(list(to_bureau.glob("*.zip"))) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("peers = 3\nprotocols = []\n")
    err = error_line(run("-w", str(bank), "watch", "--once", "--policy", str(bad), ok=False))
    assert err == f'Error: {bad}: peers must be a list of names, e.g. peers = ["..."]'


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_watch_stops_cleanly_on_a_signal(wired, signum: int) -> None:
    bank = wired[0]
    proc = subprocess.Popen([sys.executable, "-m", "vfl_cli", "-w", str(bank), "watch", "--interval", "0.2"],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "watching" in proc.stderr.readline()
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 0
        rest = proc.stderr.read()
        assert f"{signal.Signals(signum).name}: stopping after the current step" in rest
        assert rest.rstrip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stop_during_a_step_ends_the_loop_after_that_step(wired) -> None:
    bank, bureau, _, to_bank = wired
    for job in ("hs1", "hs2"):
        run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", job)
    Watcher(Workspace(bank)).run(once=True)
    lines: list[str] = []
    w = Watcher(Workspace(bureau), Policy(frozenset({"bank"}), frozenset({"handshake"})), lines.append)

    def log(line: str) -> None:  # the signal arrives while the first job is being accepted
        lines.append(line)
        if line.startswith("[hs1] accepted"):
            w.stop()

    w.log = log
    w.run(interval=0.1)  # returns: no second pass, no second job
    assert [j["job"] for j in engine.list_jobs(Workspace(bureau))] == ["hs1"]
    assert sorted(p.name for p in to_bank.glob("*.zip")) == ["hs1.001.reply.bureau-to-bank.zip"]  # still delivered


def test_until_waits_for_named_jobs_and_times_out(wired) -> None:
    bank = wired[0]
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    err = error_line(run("-w", str(bank), "watch", "--until", "hs", "--timeout", "1", "--interval", "0.2", ok=False))
    assert err == "Error: jobs hs not done after 1 s; run 'vfl status' to see what each waits for"
    err = error_line(run("-w", str(bank), "watch", "--timeout", "1", ok=False))
    assert err == "Error: a timeout needs the jobs to wait for: give --until JOB as well"
    run("-w", str(bank), "job", "cancel", "hs")
    err = error_line(run("-w", str(bank), "watch", "--until", "hs", ok=False))
    assert err == "Error: job hs was cancelled; 'vfl job show hs' says by whom"


names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)


@settings(max_examples=80, deadline=None)
@given(job=names, sender=names, recipient=names, others=st.lists(names, max_size=4), seq=st.integers(1, 999))
def test_the_recipient_is_read_back_from_any_artifact_name(job: str, sender: str, recipient: str,
                                                            others: list[str], seq: int) -> None:
    name = f"{job}.{seq:03d}.hello.{sender}-to-{recipient}.zip"
    peers = [recipient, *[o for o in others if not recipient.endswith(f"-to-{o}") and o != recipient]]
    assert drops.recipient_of(name, peers) == recipient
    assert drops.recipient_of(name, [o for o in others if o != recipient and not name.endswith(f"-to-{o}.zip")]) is None


def test_a_link_in_the_pickup_folder_is_never_followed(wired, tmp_path: Path) -> None:
    _, bureau, to_bureau, _ = wired
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the inbox")
    (to_bureau / "x.001.hello.bank-to-bureau.zip").symlink_to(secret)
    assert drops.pick_up(Workspace(bureau), now=time.time() + 3600) == []
    assert not list((bureau / "inbox").glob("*.zip"))
    assert (to_bureau / "x.001.hello.bank-to-bureau.zip").is_symlink()  # left where it is


def test_a_command_waits_a_little_for_the_lock_of_a_step_in_progress(two_parties, monkeypatch) -> None:
    import threading

    from vfl_cli.errors import WorkspaceError

    ws = Workspace(two_parties[0])
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.locked(Workspace(ws.root)):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    monkeypatch.setattr(engine, "LOCK_WAIT_S", 0.2)
    with pytest.raises(WorkspaceError, match="another vfl command is working"):
        engine.step(ws)
    monkeypatch.setattr(engine, "LOCK_WAIT_S", 10.0)
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    assert engine.step(ws) == []  # waited for the lock, then ran
    assert time.monotonic() - started >= 0.4
    holder.join()


def test_a_proposal_arriving_with_the_file_that_finishes_its_alignment_is_accepted(wired) -> None:
    bank, bureau, _, _ = wired
    policy = Policy(frozenset({"bank"}), frozenset({"psi", "hetero-lr"}))
    w_bank, _ = watcher(bank)
    w_bureau, log_bureau = watcher(bureau, policy)
    run("-w", str(bank), "align", "start", "--job", "al")
    w_bank.run(once=True)
    w_bureau.run(once=True)  # accepts and responds
    w_bank.run(once=True)  # finishes: al.003 for the bureau waits in its pickup folder
    run("-w", str(bank), "train", "start", "--protocol", "hetero-lr", "--alignment", "al", "--epochs", "1",
        "--job", "tr")
    w_bank.run(once=True)  # the training proposal joins it there
    w_bureau.run(once=True)  # one pass sees both: the alignment must be finished before the proposal
    assert "[tr] accepted the hetero-lr proposal (the policy allows it)" in log_bureau, log_bureau
    assert not list((bureau / "inbox" / "rejected").glob("*.zip"))


def test_a_proposal_arriving_before_its_alignment_is_finished_here_waits_for_it(wired) -> None:
    bank, bureau, to_bureau, _ = wired
    policy = Policy(frozenset({"bank"}), frozenset({"psi", "hetero-lr"}))
    w_bank, _ = watcher(bank)
    w_bureau, log_bureau = watcher(bureau, policy)
    run("-w", str(bank), "align", "start", "--job", "al")
    w_bank.run(once=True)
    w_bureau.run(once=True)
    w_bank.run(once=True)
    run("-w", str(bank), "train", "start", "--protocol", "hetero-lr", "--alignment", "al", "--epochs", "1",
        "--job", "tr")
    w_bank.run(once=True)
    late = to_bureau / "al.003.finish.bank-to-bureau.zip"  # the courier brings it later
    held = late.read_bytes()
    late.unlink()
    w_bureau.run(once=True)
    assert "[tr] proposal waits for job al to finish here" in log_bureau
    late.write_bytes(held)
    w_bureau.run(once=True)
    assert "[tr] accepted the hetero-lr proposal (the policy allows it)" in log_bureau
    assert not list((bureau / "inbox" / "rejected").glob("*.zip"))
