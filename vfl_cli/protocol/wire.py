"""Wire helpers shared by protocols: ciphertext and masked members, masks, partial scores.

Everything here turns a value a step produces into what crosses to a peer (an artifact
member) or into what a party keeps between its steps (a field of its typed state), and back.
Protocols import these instead of each other's internals. Ciphertexts are read with their key
checked (a member encrypted under another key is refused, naming both fingerprints), counts are
checked before anything is decrypted, and a key holder can refuse to decrypt ciphertexts it
sent itself (:func:`sent_digests`, :func:`refuse_echo`). Ciphertexts leave a party only fresh:
:func:`enc_member` and :func:`packed_member` refuse ciphertexts computed from others
(``paillier.require_fresh``) until they are re-randomised or masked.

Plain values in, plain values out (artifacts, members, keys, arrays): nothing here reads or
writes the engine's ``JobState``. A party's round, stashed ciphertexts and digests of what it
sent live in fields of its typed state (:class:`vfl_cli.protocol.kit.PartyState`), and the round
check is :func:`vfl_cli.protocol.kit.check_round`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member
from vfl_cli.checks import whole
from vfl_cli.crypto import paillier
from vfl_cli.crypto.signing import short
from vfl_cli.errors import InvalidArtifact
from vfl_cli.protocol.base import Outgoing, PartyContext

__all__ = [
    "PEER_SCORES",
    "SCORES",
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
    "read_enc",
    "read_ints",
    "read_packed",
    "refuse_echo",
    "save_mask",
    "send_scores",
    "sent_digests",
    "typed_array",
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


def is_echo(sent: np.ndarray | None, blob: bytes, width: int) -> bool:
    """Whether ``blob`` holds any ciphertext whose digest is among ``sent``."""
    return sent is not None and len(sent) > 0 and bool(np.isin(_digests(blob, width), sent).any())


def refuse_echo(sent: np.ndarray | None, blob: bytes, width: int, what: str, sender: str) -> None:
    """Refuse to decrypt ciphertexts this party itself sent (a decryption oracle).

    ``sent`` holds the digests of what it sent (:func:`sent_digests`, kept in a field of the
    party's typed state), or is None when it sent nothing to refuse.
    """
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
    if not whole(value) or value != actual:
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
    paillier.require_fresh(x, repr(name))
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
            f"{name!r} from {art.sender} was encrypted under key {short(str(m.info.get('key_id')))}, "
            f"expected {short(public.fingerprint)}"
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
    paillier.require_fresh(p, repr(name))
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
            f"{name!r} from {art.sender} is not under key {short(public.fingerprint)}"
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
