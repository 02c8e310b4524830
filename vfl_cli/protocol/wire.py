"""Wire helpers shared by protocols: ciphertext and masked members, masks, stashes, the round.

Everything here turns a value a step produces into what crosses to a peer (an artifact
member) or into what a party keeps between its steps (its job state), and back. Protocols
import these instead of each other's internals. Ciphertexts are read with their key checked
(a member encrypted under another key is refused, naming both fingerprints), counts are
checked before anything is decrypted, and a key holder can refuse to decrypt ciphertexts it
sent itself (:func:`remember_sent`, :func:`refuse_echo`).

The training position (``t``, ``epoch``, ``batch``) and stashes are kept under fixed keys of
``JobState.data``/``arrays``: they are the (de)serialisation of those values, written once here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member
from vfl_cli.crypto import paillier
from vfl_cli.errors import InvalidArtifact
from vfl_cli.protocol.base import JobState, Outgoing, PartyContext

__all__ = [
    "PEER_SCORES",
    "SCORES",
    "advance_position",
    "check_round",
    "collect_scores",
    "enc_member",
    "exact_unmask",
    "expect_count",
    "expect_members",
    "expect_meta_count",
    "ints_member",
    "is_echo",
    "json_state",
    "load_mask",
    "packed_member",
    "position",
    "read_enc",
    "read_ints",
    "read_packed",
    "refuse_echo",
    "remember_sent",
    "save_mask",
    "send_scores",
    "sent_digests",
    "stash",
    "stash_members",
    "typed_array",
    "unstash",
    "unstash_members",
]

#: Partial scores on their way to the active party (evaluation and prediction).
SCORES = "hetero/scores"
PEER_SCORES = "hetero/peer-scores"


# ----- ciphertexts this party sent: refused when they come back -------------------------------
def _digests(blob: bytes, width: int) -> np.ndarray:
    """The first 8 bytes of each ciphertext's SHA-256, to recognise a ciphertext sent back."""
    return np.array(
        [
            int.from_bytes(hashlib.sha256(blob[i : i + width]).digest()[:8], "big")
            for i in range(0, len(blob), width)
        ],
        dtype=np.uint64,
    )


def sent_digests(blobs: list[bytes], width: int) -> np.ndarray:
    """Digests of ciphertexts (``width`` bytes each) a key holder sends under its own key, to
    keep in its state (a protocol on the kit keeps them in a field of its typed state)."""
    if not blobs:
        return np.zeros(0, dtype=np.uint64)
    return np.concatenate([_digests(b, width) for b in blobs])


def remember_sent(state: JobState, blobs: list[bytes], width: int) -> None:
    """Keep digests of the ciphertexts under this party's key it sends this round."""
    state.arrays["sent_digests"] = sent_digests(blobs, width)


def is_echo(sent: np.ndarray | None, blob: bytes, width: int) -> bool:
    """Whether ``blob`` holds any ciphertext whose digest is among ``sent``."""
    return sent is not None and len(sent) > 0 and bool(np.isin(_digests(blob, width), sent).any())


def refuse_echo(
    state: JobState | np.ndarray | None, blob: bytes, width: int, what: str, sender: str
) -> None:
    """Refuse to decrypt ciphertexts this party itself sent (a decryption oracle).

    ``state`` is the engine's job state (digests kept by :func:`remember_sent`) or the digests
    themselves (:func:`sent_digests`, kept by a protocol on the kit).
    """
    sent = state.arrays.get("sent_digests") if isinstance(state, JobState) else state
    if is_echo(sent, blob, width):
        raise InvalidArtifact(
            f"{what} from {sender} holds ciphertexts that this party sent it; refused without "
            "decrypting (a key holder decrypts only what the step expects)"
        )


def expect_count(count: int, cols: int, what: str, sender: str) -> None:
    if count != cols:
        raise InvalidArtifact(
            f"{what} from {sender} holds {count} values, but {sender} has {cols} columns; "
            "refused without decrypting"
        )


def expect_meta_count(art: Artifact, key: str, actual: int, *, required: bool = True) -> None:
    """Refuse an artifact whose manifest count ``meta[key]`` is not ``actual``, the count its
    payload holds (or the step expects): a declared count and the arrays must agree.

    A count left out is refused too, unless ``required`` is False (older senders).
    """
    value = art.meta.get(key)
    if value is None and not required and key not in art.meta:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value != actual:
        raise InvalidArtifact(
            f"{art.kind} from {art.sender} declares {key}={str(value)[:40]!r} in its manifest, "
            f"but holds {actual}; refused (its counts and its payload disagree)"
        )


def expect_members(art: Artifact, names: tuple[str, ...] | list[str], due: bool, why: str) -> None:
    """Optional members present exactly when the step says they are due, and absent otherwise.

    ``why`` says when they are due (for the message), e.g. ``"the loss is due this round"``.
    """
    present = [n for n in names if n in art.members]
    if due and len(present) != len(names):
        missing = [n for n in names if n not in art.members]
        raise InvalidArtifact(
            f"{art.kind} from {art.sender} lacks {', '.join(repr(n) for n in missing)}, "
            f"but {why}; refused"
        )
    if not due and present:
        raise InvalidArtifact(
            f"{art.kind} from {art.sender} holds {', '.join(repr(n) for n in present)}, "
            f"which this step does not expect ({why} only); refused without decrypting"
        )


# ----- artifact members ------------------------------------------------------------------------
_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats"}


def typed_array(art: Artifact, name: str, kinds: str) -> np.ndarray:
    """The array member ``name``, refused unless its dtype kind is one of ``kinds`` (numpy's
    letters: ``b`` bool, ``i``/``u`` integers, ``f`` floats): no text, complex or float where
    whole numbers are expected is ever cast silently."""
    m = art.members.get(name)
    if m is None or m.type != "ndarray":
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks the array {name!r}")
    a = art.array(name)
    if a.dtype.kind not in kinds:
        wanted = " or ".join(sorted({_KIND_NAMES[k] for k in kinds}))
        raise InvalidArtifact(f"{name!r} from {art.sender} holds {a.dtype} values, expected {wanted}")
    return a


def enc_member(name: str, x: paillier.EncryptedArray) -> Member:
    return Member(
        name,
        "paillier",
        x.to_bytes(),
        {"key_id": x.public.fingerprint, "shape": list(x.shape), "exponent": x.exponent},
    )


def read_enc(
    art: Artifact,
    name: str,
    public: paillier.PublicKey,
    *,
    rows: int | None = None,
    max_abs: float | None = None,
) -> paillier.EncryptedArray:
    m = art.members.get(name)
    if m is None or m.type != "paillier":
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks ciphertexts {name!r}")
    if m.info.get("key_id") != public.fingerprint:
        raise InvalidArtifact(
            f"{name!r} from {art.sender} was encrypted under key {str(m.info.get('key_id'))[:16]}, "
            f"expected {public.fingerprint[:16]}"
        )
    shape = [int(s) for s in m.info.get("shape", [])]
    if rows is not None and shape != [rows]:
        raise InvalidArtifact(
            f"{name!r} from {art.sender} holds {shape} values, expected {rows} (mismatched rows)"
        )
    return paillier.EncryptedArray.from_bytes(
        public, m.data, shape, int(m.info["exponent"]), max_abs=max_abs
    )


def packed_member(name: str, p: paillier.Packed) -> Member:
    return Member(
        name,
        "paillier",
        p.to_bytes(),
        {
            "key_id": p.public.fingerprint,
            "shape": [p.ciphertexts.size],
            "exponent": p.exponent,
            "packed": p.meta(),
        },
    )


def read_packed(art: Artifact, name: str, public: paillier.PublicKey) -> paillier.Packed:
    m = art.members.get(name)
    if m is None or m.type != "paillier" or "packed" not in m.info:
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks packed ciphertexts {name!r}")
    if m.info.get("key_id") != public.fingerprint:
        raise InvalidArtifact(
            f"{name!r} from {art.sender} is not under key {public.fingerprint[:16]}"
        )
    return paillier.Packed.from_bytes(public, m.data, dict(m.info["packed"]))


def ints_member(name: str, values: list[int], modulus: int) -> Member:
    width = (modulus.bit_length() + 7) // 8
    data = b"".join(int(v).to_bytes(width, "big") for v in values)
    return Member(name, "masked", data, {"count": len(values), "width": width})


def read_ints(art: Artifact, name: str, count: int) -> list[int]:
    m = art.members.get(name)
    if m is None or m.type != "masked":
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks masked values {name!r}")
    width = int(m.info.get("width", 0))
    if width < 1 or len(m.data) != width * count:
        raise InvalidArtifact(f"{name!r} from {art.sender}: expected {count} values")
    return [int.from_bytes(m.data[i * width : (i + 1) * width], "big") for i in range(count)]


def save_mask(m: paillier.Mask) -> dict[str, Any]:
    return {
        "exponent": m.exponent,
        "shape": list(m.shape),
        "offsets": [format(o, "x") for o in m.offsets],
        "shift": format(m.shift, "x"),
        "bound": None if m.bound is None else format(m.bound, "x"),
        "fingerprint": m.fingerprint,
        "n": format(m.n, "x"),
    }


def load_mask(d: Mapping[str, Any]) -> paillier.Mask:
    return paillier.Mask(
        d["fingerprint"],
        int(d["n"], 16),
        int(d["exponent"]),
        tuple(d["shape"]),
        tuple(int(o, 16) for o in d["offsets"]),
        int(d["shift"], 16),
        None if d["bound"] is None else int(d["bound"], 16),
    )


def exact_unmask(raw: int, m: paillier.Mask, index: int = 0) -> int:
    """The exact signed integer under a mask (no decoding to floats)."""
    v = (int(raw) - m.offsets[index] - m.shift) % m.n
    return v - m.n if v > m.n // 2 else v


# ----- training position -----------------------------------------------------------------------
def position(state: JobState) -> tuple[int, int, int]:
    """The global mini-batch counter t, the epoch and the batch within it."""
    d = state.data
    return int(d["t"]), int(d["epoch"]), int(d["batch"])


def check_round(art: Artifact, state: JobState) -> None:
    """Refuse an artifact for another round than the one this party is at."""
    t = int(state.data["t"])
    if art.round != t:
        raise InvalidArtifact(
            f"{art.kind} from {art.sender} is for round {art.round}, "
            f"but this party is at round {t} (stale or replayed)"
        )


def advance_position(state: JobState, batches_per_epoch: int) -> None:
    """Move to the next mini-batch, and to the next epoch after the last one."""
    d = state.data
    d["t"] += 1
    d["batch"] += 1
    if d["batch"] >= batches_per_epoch:
        d["batch"] = 0
        d["epoch"] += 1


# ----- stashes: values kept in the party's own job state until its next step ----------------
def stash(state: JobState, name: str, x: paillier.EncryptedArray) -> None:
    """Keep ciphertexts in the party's private job state until its next step."""
    state.arrays[f"stash_{name}"] = np.frombuffer(x.to_bytes(), dtype=np.uint8)
    state.data[f"stash_{name}"] = {"shape": list(x.shape), "exponent": x.exponent}


def unstash(state: JobState, name: str, public: paillier.PublicKey) -> paillier.EncryptedArray:
    info = state.data.pop(f"stash_{name}")
    data = state.arrays.pop(f"stash_{name}").tobytes()
    return paillier.EncryptedArray.from_bytes(public, data, info["shape"], info["exponent"])


def stash_members(state: JobState, members: list[Member], meta: dict[str, Any]) -> None:
    for m in members:
        state.arrays[f"member_{m.name}"] = np.frombuffer(m.data, dtype=np.uint8)
    state.data["stashed_members"] = {
        "meta": meta,
        "members": [[m.name, m.type, dict(m.info)] for m in members],
    }


def unstash_members(state: JobState) -> tuple[list[Member], dict[str, Any]]:
    saved = state.data.pop("stashed_members")
    members = [
        Member(n, t, state.arrays.pop(f"member_{n}").tobytes(), info)
        for n, t, info in saved["members"]
    ]
    return members, dict(saved["meta"])


# ----- partial scores to the active party ------------------------------------------------------
def send_scores(ctx: PartyContext, u: np.ndarray, t: int) -> list[Outgoing] | None:
    """A passive party's partial scores for A, encrypted under A's key.

    With one passive party they go to A; with several, every party but P1 sends them to P1,
    which adds them up (:func:`collect_scores`) so that A learns only their sum. Returns None
    for P1 when it must first collect the others'.
    """
    enc = paillier.encrypt(ctx.public_key(ctx.active), u)
    member, meta = [enc_member("u", enc)], {"rows": len(u)}
    if ctx.name != ctx.passives[0]:
        return [Outgoing(ctx.passives[0], PEER_SCORES, "peer-scores", member, meta, t)]
    if len(ctx.passives) > 1:
        return None
    return [Outgoing(ctx.active, SCORES, "scores", member, meta, t)]


def collect_scores(
    ctx: PartyContext, u: np.ndarray, received: Mapping[str, Artifact], t: int
) -> list[Outgoing]:
    """P1 adds its own partial scores to the other passive parties' (all under A's key)."""
    ka = ctx.public_key(ctx.active)
    total = paillier.encrypt(ka, u)
    for art in received.values():
        expect_meta_count(art, "rows", len(u))
        total = total + read_enc(art, "u", ka, rows=len(u))
    total = paillier.rerandomize(total)
    return [Outgoing(ctx.active, SCORES, "scores", [enc_member("u", total)], {"rows": len(u)}, t)]


def json_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """An optimiser's or model's state dict as JSON (arrays to lists)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
