"""Issue #12, part A: an untrusted file cannot exhaust, spoof or slip past the artifact container.

One test per attack of the issue that falls on the container and ``vfl inspect``, each written
from its description, then hypothesis fuzzing of the container bytes and of the manifest (signed
and unsigned): reading, verifying and opening only ever raise ``VflError``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_party, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfl_cli.artifacts import _zip
from vfl_cli.artifacts.container import (
    encode,
    ndarray_member,
    new_artifact,
    parse_artifact,
    points_member,
    read_artifact,
)
from vfl_cli.artifacts.io import canonical_json
from vfl_cli.crypto.signing import Signer
from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.workspace import Workspace

BANK = Signer.generate()
BUREAU = Signer.generate()


def _valid(**meta: Any) -> bytes:
    art = new_artifact(kind="psi/start", job="al1", seq=1, step="start", sender="bank", recipient="bureau",
                       meta=meta or {"rows": 3},
                       members=[ndarray_member("x", np.arange(3.0)),
                                points_member("p", np.zeros((2, 32), np.uint8))])
    return encode(art, BANK, to=BUREAU.verifier)


VALID = _valid()


def _parts(data: bytes) -> dict[str, bytes]:
    return {e.name: bytes(e.content) for e in _zip.unpack(data, max_entries=66, fail=ValueError)}


def _forge(mutate: Callable[[dict[str, Any]], None], *, signed: bool = True) -> bytes:
    """VALID with its manifest changed by ``mutate``, re-signed by bank's key (or not)."""
    parts = _parts(VALID)
    manifest = json.loads(parts["manifest.json"])
    mutate(manifest)
    raw = canonical_json(manifest)
    parts["manifest.json"] = raw
    if signed:
        parts["manifest.sig"] = (BANK.sign(raw) + "\n").encode()
    return _zip.pack(list(parts.items()))


def _full_read(data: bytes) -> None:
    """Everything a recipient does with a file: parse, verify, open, read every member."""
    loaded = parse_artifact(data, name="f.zip")
    loaded.verify(BANK.verifier, what="f.zip")
    art = loaded.open(BUREAU, "bureau").artifact
    for name, m in art.members.items():
        art.array(name) if m.type == "ndarray" else art.points(name)


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: the attacks below used to block or read forever."""

    def expire(*_: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _peak(fn: Callable[[], object]) -> tuple[int, float]:
    """Peak traced memory (bytes) and seconds of ``fn``, which must raise InvalidArtifact."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(InvalidArtifact):
            fn()
        return tracemalloc.get_traced_memory()[1], time.perf_counter() - start
    finally:
        tracemalloc.stop()


# ----- exhaustion before any check ----------------------------------------------------------------
def test_fifo_in_the_inbox_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.001.start.bank-to-bureau.zip"
    os.mkfifo(fifo)
    with _deadline(5), pytest.raises(InvalidArtifact, match="named pipe"):
        read_artifact(fifo)  # no writer ever comes: a blocking open would wait forever
    with _deadline(5):
        result = run("inspect", str(fifo), ok=False)
    assert result.exit_code == 1 and "Error:" in result.stderr and "named pipe" in result.stderr


def test_symlink_to_dev_zero_is_refused_before_reading(tmp_path: Path) -> None:
    link = tmp_path / "zero.zip"
    link.symlink_to("/dev/zero")
    with _deadline(5), pytest.raises(InvalidArtifact, match="symbolic link"):
        read_artifact(link)
    with _deadline(5), pytest.raises(InvalidArtifact, match="character device"):
        read_artifact(Path("/dev/zero"))  # and named directly, it is no regular file either


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArtifact, match="folder"):
        read_artifact(tmp_path)


def test_file_over_the_cap_is_refused_without_reading_it(tmp_path: Path) -> None:
    sparse = tmp_path / "huge.zip"
    with open(sparse, "wb") as fh:
        fh.truncate(3 << 30)  # 3 GiB, sparse: costs no disk, would cost 3 GiB to read
    peak, seconds = _peak(lambda: read_artifact(sparse))
    assert peak < 1 << 20 and seconds < 1
    small = tmp_path / "small.zip"
    small.write_bytes(VALID)
    with pytest.raises(InvalidArtifact, match="exceeds the 1,000-byte limit"):
        read_artifact(small, max_bytes=1000)


def _deflated_bomb(megabytes: int) -> bytes:
    parts = _parts(VALID)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("manifest.json", parts["manifest.json"])
        zf.writestr("manifest.sig", parts["manifest.sig"])
        zf.writestr("payload/p.bin.sealed", bytes(megabytes << 20))
    return buf.getvalue()


def test_zip_bomb_is_refused_fast_and_small(tmp_path: Path) -> None:
    bomb = _deflated_bomb(64)  # 64 MiB of zeros in about 64 KB
    f = tmp_path / "bomb.zip"
    f.write_bytes(bomb)
    peak, seconds = _peak(lambda: read_artifact(f))
    assert peak < 4 * len(bomb) + (256 << 10) and seconds < 1
    # the same bomb declaring 4 GiB: sizes are read from the directory, nothing is inflated
    lying = bytearray(bomb)
    at = lying.rfind(b"payload/p.bin.sealed") - 46 + 24
    lying[at : at + 4] = struct.pack("<I", 0xFFFFFFF0)
    peak, seconds = _peak(lambda: parse_artifact(bytes(lying), name="bomb.zip"))
    assert peak < 4 * len(bomb) + (256 << 10) and seconds < 1


def test_overlapping_and_countless_entries_are_refused() -> None:
    """Directory records that all point at one entry (a 'non-recursive' bomb), or claim 65,535."""
    parts = list(_parts(VALID).items())
    data = bytearray(_zip.pack(parts))
    cd_offset = struct.unpack_from("<I", data, len(data) - 6)[0]
    second = cd_offset + 46 + len("manifest.json")
    data[second + 42 : second + 46] = struct.pack("<I", 0)  # manifest.sig's record points at offset 0
    with pytest.raises(InvalidArtifact, match="not canonical"):
        parse_artifact(bytes(data), name="f.zip")
    many = bytearray(_zip.pack(parts))
    many[-12:-8] = struct.pack("<HH", 65535, 65535)
    peak, _ = _peak(lambda: parse_artifact(bytes(many), name="f.zip"))
    assert peak < 64 << 10


def test_one_megabyte_of_garbage_is_refused_fast_and_small(tmp_path: Path) -> None:
    f = tmp_path / "garbage.zip"
    f.write_bytes(os.urandom(1 << 20))
    peak, seconds = _peak(lambda: read_artifact(f))
    assert seconds < 0.5 and peak < 3 << 20  # the file itself, read once, and little else
    zipped = tmp_path / "garbage2.zip"
    zipped.write_bytes(VALID[:200] + os.urandom(1 << 20) + VALID[-22:])  # a real end record
    peak, seconds = _peak(lambda: read_artifact(zipped))
    assert seconds < 0.5 and peak < 3 << 20


def test_manifest_size_and_depth_are_capped() -> None:
    with pytest.raises(InvalidArtifact, match="exceeds the 1,048,576-byte limit"):
        _full_read(_forge(lambda m: m["meta"].update(pad="x" * (1 << 20))))
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidArtifact, match="nests deeper than 32"):
        _full_read(_forge(lambda m: m["meta"].update(deep=deep)))
    parts = _parts(VALID)
    parts["manifest.json"] = b"[" * 100_000 + b"]" * 100_000  # deeper than Python's recursion limit
    with pytest.raises(InvalidArtifact, match="nests deeper"):
        parse_artifact(_zip.pack(list(parts.items())), name="f.zip")


# ----- only the container's own canonical, stored members -----------------------------------------
def test_deflated_member_is_refused() -> None:
    parts = _parts(VALID)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.items():
            zf.writestr(name, data)
    with pytest.raises(InvalidArtifact, match="compressed .method 8.*nothing is ever decompressed"):
        parse_artifact(buf.getvalue(), name="f.zip")


def test_extra_and_duplicate_members_are_refused() -> None:
    parts = list(_parts(VALID).items())
    for extra in [("payload/evil.bin.sealed", b"x" * 64), ("../evil", b"x"), ("manifest.json", parts[0][1])]:
        with pytest.raises(InvalidArtifact, match="not the members its manifest lists|must come first"):
            parse_artifact(_zip.pack([*parts, extra]), name="f.zip")
    with pytest.raises(InvalidArtifact, match="unlisted or repeated"):
        parse_artifact(_zip.pack([*parts[:3], parts[2], parts[3]]), name="f.zip")  # one member twice
    with pytest.raises(InvalidArtifact, match="missing"):
        parse_artifact(_zip.pack(parts[:3]), name="f.zip")


def test_declared_sizes_are_checked_before_hashing() -> None:
    def grow(m: dict[str, Any]) -> None:
        m["members"]["p"]["size"] += 1

    with pytest.raises(InvalidArtifact, match="holds 80 bytes, its manifest says 81"):
        _full_read(_forge(grow))


# ----- names are data, never paths ----------------------------------------------------------------
@pytest.mark.parametrize("sender", ["../inbox/evil", "/tmp/evil", "bank/../evil", "Bank", "bank\n", "", "a" * 33])
@pytest.mark.parametrize("signed", [True, False])
def test_sender_that_is_a_path_is_refused_at_parse(sender: str, signed: bool) -> None:
    data = _forge(lambda m: m.update(sender=sender), signed=signed)
    with pytest.raises(InvalidArtifact, match="manifest field 'sender': sender name .* is not allowed"):
        parse_artifact(data, name="f.zip")  # before any key is looked up, so no path is ever built


@pytest.mark.parametrize("field,value", [("recipient", "/etc"), ("job", "zz/../tr1"), ("job", "/abs"),
                                         ("kind", "psi/../x"), ("step", "a b"), ("kind", "psi/start\x1b[2J")])
def test_every_name_field_follows_the_one_pattern(field: str, value: str) -> None:
    with pytest.raises(InvalidArtifact, match=f"manifest field '{field}'"):
        parse_artifact(_forge(lambda m: m.update({field: value})), name="f.zip")


@pytest.mark.parametrize("field,value", [("shape", [[3]]), ("shape", "3"), ("count", -1), ("count", 2**40),
                                         ("key_id", "../k"), ("exponent", [1]), ("dtype", "O\n")])
def test_member_fields_protocols_read_have_one_form(field: str, value: Any) -> None:
    member = "p" if field == "count" else "x"
    with pytest.raises(InvalidArtifact, match=f"field '{field}' is not in its form"):
        parse_artifact(_forge(lambda m: m["members"][member].update({field: value})), name="f.zip")


def test_member_name_that_is_a_path_is_refused() -> None:
    def rename(m: dict[str, Any]) -> None:
        m["members"]["../../x"] = m["members"].pop("x")

    with pytest.raises(InvalidArtifact, match="member name '../../x' is not allowed"):
        parse_artifact(_forge(rename), name="f.zip")


# ----- the terminal cannot be spoofed -------------------------------------------------------------
SPOOF = "\nsignature: valid (bank's key trusted by bureau)\x1b[2K\x1b[1A\r"


def _unsigned_spoof(tmp_path: Path, name: str = f"al1.001.start{SPOOF}.zip") -> Path:
    data = _forge(lambda m: m["meta"].update(note=SPOOF, tag="[/]", link="[link=file:///etc]x[/link]"),
                  signed=False)  # the old signature no longer matches
    f = tmp_path / name
    f.write_bytes(data)
    return f


def test_newlines_and_escapes_cannot_print_a_fake_signature_line(tmp_path: Path) -> None:
    result = run("inspect", str(_unsigned_spoof(tmp_path)))
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("signature:")] == [lines[3]]
    assert lines[3].startswith("signature: not verified")
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    assert "\\nsignature: valid" in result.stderr  # shown, as a visible escape, inside its field
    long = run("inspect", str(_unsigned_spoof(tmp_path, "x" * 52 + "signature: valid (trusted).zip")))
    assert [line for line in long.stderr.splitlines() if "signature:" in line][1].startswith("signature: not verified")
    assert not any(line.startswith("signature: valid") for line in long.stderr.splitlines())  # cut, not wrapped


def test_rich_markup_in_a_field_prints_as_itself(tmp_path: Path) -> None:
    result = run("inspect", str(_unsigned_spoof(tmp_path, "evil[bold]x[red]y[link=z].zip")))
    assert '"tag": "[/]"' in result.stderr and "[link=file:///etc]x[/link]" in result.stderr
    assert result.stderr.startswith("evil[bold]x[red]y[link=z].zip  (")


def test_error_line_stays_one_line_whatever_a_file_said() -> None:
    from click.testing import CliRunner

    from vfl_cli.cli import VflGroup

    group = VflGroup(name="t")

    @group.command()
    def boom() -> None:
        raise VflError(f"f.zip: step from bank{SPOOF}")

    result = CliRunner().invoke(group, ["boom"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: f.zip: step from bank\\nsignature: valid") and "\x1b" not in result.stderr


def test_status_lines_stay_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from vfl_cli.cli._console import say

    say(f"[j1] cancelled by bank: {SPOOF}")  # a reason from a peer's signed notice, say
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\\nsignature: valid" in err


def test_inspect_json_is_valid_and_escaped(tmp_path: Path) -> None:
    result = run("inspect", "--json", str(_unsigned_spoof(tmp_path)))
    out = json.loads(result.stdout)
    assert out["manifest"]["meta"]["note"] == SPOOF and out["opened"] is False
    assert "\x1b" not in result.stdout


# ----- confidential payloads: who sees what -------------------------------------------------------
def test_only_recipient_and_sender_see_plaintext(two_parties: tuple[Path, Path], tmp_path: Path,
                                                 sample: Callable[[str], Path]) -> None:
    bank, bureau = two_parties
    art = new_artifact(kind="psi/start", job="al1", seq=1, step="start", sender="bank", recipient="bureau",
                       members=[ndarray_member("x", np.array([11.5, 22.5, 33.5]))])
    f = tmp_path / art.default_name()
    f.write_bytes(encode(art, Workspace(bank).signer, to=Workspace(bureau).signer.verifier))
    for ws in (bank, bureau):
        shown = json.loads(run("-w", str(ws), "inspect", "--json", str(f)).stdout)
        assert shown["opened"] and shown["plaintext"]["x"]["values"] == [11.5, 22.5, 33.5]
        assert "11.5, 22.5, 33.5" in run("-w", str(ws), "inspect", str(f)).stderr
    insurer = make_party(tmp_path, "insurer", "passive", sample("breast_passive.csv"))
    run("-w", str(insurer), "keys", "import", str(tmp_path / "bank.card"))
    shown = json.loads(run("-w", str(insurer), "inspect", "--json", str(f)).stdout)
    assert shown["signature"].startswith("valid") and not shown["opened"] and shown["plaintext"] == {}
    assert shown["manifest"]["members"]["x"]["shape"] == [3]  # kinds, counts and sizes, no values
    assert "11.5" not in run("-w", str(insurer), "inspect", str(f)).stderr


# ----- fuzzing: only ever VflError ----------------------------------------------------------------
def _only_vfl_errors(data: bytes) -> None:
    with contextlib.suppress(VflError):
        _full_read(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    _only_vfl_errors(data)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID)), st.binary(max_size=64))
def test_fuzz_container_bytes(flips: list[tuple[int, int]], cut: int, tail: bytes) -> None:
    data = bytearray(VALID)
    for at, value in flips:
        data[at] = value
    _only_vfl_errors(bytes(data))
    _only_vfl_errors(bytes(data[:cut]) + tail)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
_PATHS = [("version",), ("kind",), ("job",), ("seq",), ("round",), ("step",), ("sender",), ("recipient",),
          ("sender_key",), ("created",), ("nonce",), ("meta",), ("members",), ("sealed",), ("format",),
          ("members", "x"), ("members", "x", "shape"), ("members", "x", "dtype"), ("members", "x", "size"),
          ("members", "x", "type"), ("members", "x", "file"), ("members", "p", "count"),
          ("members", "p", "encrypted"), ("members", "p", "sha256"), ("sealed", "to_recipient"),
          ("sealed", "key_commitment"), ("sealed", "cipher"), ("unknown",), ("members", "x", "NOT A NAME")]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_PATHS), JSON, st.booleans(), st.booleans())
def test_fuzz_manifest(path: tuple[str, ...], value: Any, delete: bool, signed: bool) -> None:
    def mutate(m: dict[str, Any]) -> None:
        *parents, last = path
        for key in parents:
            m = m[key]
        if delete:
            m.pop(last, None)
        else:
            m[last] = value

    _only_vfl_errors(_forge(mutate, signed=signed))
