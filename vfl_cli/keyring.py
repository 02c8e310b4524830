"""Key rotation and peer removal, and the keys that still verify old files after them.

``rotate`` gives the party new Paillier and signing keys and a new card, and writes a **rotation
notice**: the new card, signed (with the card's own signature by the new key inside) by the *old*
signing key. A peer imports the notice with ``vfl keys import``; it is accepted only when the old
key that signed it is the key the peer trusts for that name, so whoever holds the old key, and
only they, can move a peer's trust to a new key.

Old keys are never deleted: they move to ``keys/retired/<fingerprint>/`` (0600, folder 0700), and
a peer's replaced card to ``peers/retired/``, so that ledger entries, checkpoints and archived
files signed before the rotation still verify (:func:`own_keyring`, :func:`verifier_for_key`).

``remove_peer`` moves a peer's card to ``peers/removed/``: the peer is no longer trusted (its
files and proposals are refused, and no job can name it) while its old files still verify. An
optional **removal notice**, signed by this party, tells the peer; a peer that imports it removes
the sender in turn.

Both are logged in the party's ledger (``key-rotated``, ``peer-removed``). Neither is allowed while
a job that would be cut off (every unfinished job for a rotation; the peer's for a removal) is
still running: finish it or cancel it first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from vfl_cli.artifacts.io import canonical_json, pretty_json, replace_atomic
from vfl_cli.crypto.signing import Signer, Verifier, short
from vfl_cli.errors import KeyMismatch, VflError
from vfl_cli.workspace import PartyCard, Workspace, new_keys, now

ROTATION_FORMAT = "vfl-key-rotation"
REMOVAL_FORMAT = "vfl-peer-removal"
#: A notice or card is small; anything bigger is not one.
MAX_NOTICE_BYTES = 1 << 20


@dataclass(frozen=True)
class KeyRing(Verifier):
    """One party's signing keys: the current one (``key``, whose fingerprint this is) and the
    retired ones, for files signed before a rotation. A signature by any of them verifies."""

    retired: tuple[Verifier, ...] = ()

    def verify(self, message: bytes, signature_hex: str, *, what: str) -> None:
        try:
            super().verify(message, signature_hex, what=what)
        except KeyMismatch:
            for old in self.retired:
                try:
                    old.verify(message, signature_hex, what=what)
                    return
                except KeyMismatch:
                    continue
            raise


# ----- Paillier keys made only when a job needs them ----------------------------------------------
#: Protocols whose jobs use no Paillier key at all.
NO_PAILLIER = ("handshake", "psi", "psi-cache")


def paillier_roles(protocol: str, params: dict[str, Any], roles: set[str]) -> set[str]:
    """The roles whose Paillier keys a job of ``protocol`` uses: none for the handshake and
    alignment; in hfl the workers' (one worker holds the secure sum), and only with secure
    aggregation; every party's in the other protocols."""
    if protocol in NO_PAILLIER:
        return set()
    if protocol == "hfl":
        return {"worker"} if params.get("secure_aggregation", True) else set()
    return set(roles)


def check_paillier_keys(protocol: str, params: dict[str, Any], parties: list[dict[str, Any]]) -> None:
    """Refuse a job naming a party without a Paillier key (made with 'vfl keygen --no-paillier')
    when the job uses that party's key."""
    roles = paillier_roles(protocol, params, {str(p["role"]) for p in parties})
    lacking = [str(p["name"]) for p in parties if p["role"] in roles and not p.get("paillier_fingerprint")]
    if lacking:
        raise VflError(f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no Paillier key, and a "
                       f"{protocol} job needs one: run 'vfl keygen' there (it adds the key to the same signing "
                       "identity) and import the new card here")


# ----- keys that still verify old files -----------------------------------------------------------
def retired_verifiers(ws: Workspace) -> list[Verifier]:
    """This party's retired signing keys (newest rotation last)."""
    folder = ws.path("keys", "retired")
    if not folder.is_dir():
        return []
    return [Signer.from_seed_hex((d / "signing.key").read_text()).verifier
            for d in sorted(folder.iterdir()) if (d / "signing.key").is_file()]


def own_keyring(ws: Workspace) -> KeyRing:
    """This party's current signing key and every key it retired."""
    return KeyRing(ws.signer.verifier.key, tuple(retired_verifiers(ws)))


def _old_cards(ws: Workspace, name: str) -> list[PartyCard]:
    """A peer's replaced (``peers/retired``) and removed (``peers/removed``) cards."""
    out = []
    for sub in ("retired", "removed"):
        for f in sorted(ws.path("peers", sub).glob(f"{name}.*json")):
            card = PartyCard.from_bytes(f.read_bytes(), what=str(f))
            if card.name == name:
                out.append(card)
    return out


def peer_keyring(ws: Workspace, name: str) -> KeyRing:
    """A peer's trusted signing key and its keys before any rotation (or removal)."""
    current = ws.peers().get(name)
    old = [c.verifier for c in _old_cards(ws, name)]
    if current is None and not old:
        ws.peer(name)  # raises the usual "not a trusted peer" error
    first = current.verifier if current is not None else old.pop()
    return KeyRing(first.key, tuple(old))


def verifier_for_key(ws: Workspace, name: str, fingerprint: str) -> Verifier | None:
    """The key of ``name`` (this party or a peer, now or before a rotation or removal) whose
    fingerprint is ``fingerprint``; None when there is none."""
    if name == ws.name:
        keys = [ws.signer.verifier, *retired_verifiers(ws)]
    else:
        current = ws.peers().get(name)
        keys = ([current.verifier] if current else []) + [c.verifier for c in _old_cards(ws, name)]
    return next((v for v in keys if v.fingerprint == fingerprint), None)


# ----- rotation ----------------------------------------------------------------------------------
def unfinished_jobs(ws: Workspace, peer: str | None = None) -> list[str]:
    """Jobs still running (that name ``peer``, when given)."""
    from vfl_cli import jobs

    out = []
    for j in jobs.list_jobs(ws):
        if j["done"] or j["phase"] in ("cancelled", "rejected"):
            continue
        if peer is None or peer in {p["name"] for p in jobs.load_info(ws, j["job"])["parties"]}:
            out.append(j["job"])
    return out


def _refuse_running(ws: Workspace, running: list[str], what: str) -> None:
    if running:
        raise VflError(f"{what} would cut off {len(running)} unfinished job(s) ({', '.join(running[:5])}); "
                       "let them finish or cancel them with 'vfl job cancel JOB' first")


def rotate(
    ws: Workspace, bits: int | None = None, *, allow_insecure: bool = False
) -> tuple[PartyCard, PartyCard, bytes]:
    """New Paillier and signing keys; returns (old card, new card, rotation notice bytes).

    The old keys move to ``keys/retired/<signing fingerprint>/`` before the new ones replace them,
    and a ``key-rotated`` ledger entry signed by the old key names both fingerprints.
    """
    old = ws.card()
    _refuse_running(ws, unfinished_jobs(ws), "rotating keys")
    if old.paillier is not None:
        public, private, signer = new_keys(bits or old.paillier.bits, allow_insecure=allow_insecure)
    else:
        public, private, signer = None, None, Signer.generate()
    retired = ws.path("keys", "retired", old.signing_fingerprint[:16])
    retired.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(retired, 0o700)
    for name in ("paillier.jwk", "paillier.pub.jwk", "signing.key"):
        if ws.path("keys", name).exists():
            replace_atomic(retired / name, ws.path("keys", name).read_bytes(), mode=0o600)
    old_signer = ws.signer
    new_card = PartyCard(ws.name, ws.role, public, signer.verifier, now())
    ws.ledger.append(old_signer, "key-rotated", old_signing_fingerprint=old.signing_fingerprint,
                     new_signing_fingerprint=new_card.signing_fingerprint,
                     old_paillier_fingerprint=old.paillier_fingerprint,
                     new_paillier_fingerprint=new_card.paillier_fingerprint)
    ws.write_keys(public, private, signer)
    body = {"format": ROTATION_FORMAT, "version": 1, "name": ws.name, "rotated": now(),
            "old_signing_fingerprint": old.signing_fingerprint,
            "card": json.loads(new_card.to_bytes(signer))}
    notice = pretty_json(dict(body, signature=old_signer.sign(canonical_json(body))))
    return old, ws.card(), notice


def notice_format(data: bytes) -> str | None:
    """The format of a notice file (rotation or removal), or None for anything else (a card)."""
    try:
        d = json.loads(data[:MAX_NOTICE_BYTES])
    except (ValueError, UnicodeDecodeError):
        return None
    fmt = d.get("format") if isinstance(d, dict) else None
    return fmt if fmt in (ROTATION_FORMAT, REMOVAL_FORMAT) else None


def _signed_body(data: bytes, what: str, fields: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    if len(data) > MAX_NOTICE_BYTES:
        raise VflError(f"{what} is too big to be a notice ({len(data):,} bytes)")
    d = json.loads(data)
    missing = [k for k in (*fields, "signature") if not isinstance(d.get(k), (str, dict))]
    if missing or d.get("version") != 1:
        raise VflError(f"{what} is a malformed notice (field {(missing or ['version'])[0]})")
    return {k: v for k, v in d.items() if k != "signature"}, str(d["signature"])


def import_rotation(ws: Workspace, data: bytes, *, what: str) -> tuple[PartyCard, bool]:
    """Trust a peer's new card from its rotation notice; returns (new card, whether it was new).

    Raises:
        VflError: the peer is not trusted, the notice is for another key than the trusted one,
            its signature is not by the trusted key, or the card inside is not the peer's.
    """
    body, signature = _signed_body(data, what, ("name", "old_signing_fingerprint", "card"))
    name = str(body["name"])
    if name == ws.name:
        raise VflError(f"{what} is {ws.name}'s own rotation notice; send it to the peers")
    trusted = ws.peer(name)
    card = PartyCard.from_bytes(pretty_json(body["card"]), what=f"{what} (its new card)")
    if card.signing_fingerprint == trusted.signing_fingerprint:
        return card, False  # imported before
    if body["old_signing_fingerprint"] != trusted.signing_fingerprint:
        raise VflError(f"{what} rotates {name}'s key {short(str(body['old_signing_fingerprint']))}, but "
                       f"{ws.name} trusts {name}'s key {short(trusted.signing_fingerprint)}; ask {name} "
                       "for the notice of each rotation in turn")
    # the one check that matters: signed by the key this party trusts for the name
    trusted.verifier.verify(canonical_json(body), signature, what=what)
    if (card.name, card.role) != (name, trusted.role):
        raise VflError(f"{what}: the new card is {card.role} party {card.name!r}, not {trusted.role} party {name!r}")
    current = ws.path("peers", f"{name}.json")
    old_copy = ws.path("peers", "retired", f"{name}.{trusted.signing_fingerprint[:16]}.json")
    old_copy.parent.mkdir(exist_ok=True)
    replace_atomic(old_copy, current.read_bytes())
    replace_atomic(current, pretty_json(body["card"]))
    ws._peers = None
    ws.ledger.append(ws.signer, "peer-key-rotated", peer=name, old_signing_fingerprint=trusted.signing_fingerprint,
                     new_signing_fingerprint=card.signing_fingerprint)
    return card, True


# ----- removal -----------------------------------------------------------------------------------
def _move_to_removed(ws: Workspace, card: PartyCard) -> None:
    folder = ws.path("peers", "removed")
    folder.mkdir(exist_ok=True)
    os.replace(ws.path("peers", f"{card.name}.json"), folder / f"{card.name}.{card.signing_fingerprint[:16]}.json")
    ws._peers = None


def remove_peer(ws: Workspace, name: str) -> tuple[PartyCard, bytes]:
    """Stop trusting ``name``; returns its card and a removal notice signed by this party."""
    card = ws.peer(name)
    _refuse_running(ws, unfinished_jobs(ws, name), f"removing {name}")
    _move_to_removed(ws, card)
    ws.ledger.append(ws.signer, "peer-removed", peer=name, signing_fingerprint=card.signing_fingerprint)
    body = {"format": REMOVAL_FORMAT, "version": 1, "party": ws.name, "removed": name,
            "removed_signing_fingerprint": card.signing_fingerprint, "time": now()}
    return card, pretty_json(dict(body, signature=ws.signer.sign(canonical_json(body))))


def import_removal(ws: Workspace, data: bytes, *, what: str) -> tuple[PartyCard, list[str]]:
    """A peer's notice that it removed this party: remove it in turn.

    Returns the sender's card and this party's unfinished jobs with it (to cancel).
    """
    body, signature = _signed_body(data, what, ("party", "removed", "removed_signing_fingerprint"))
    sender = str(body["party"])
    card = ws.peer(sender)
    card.verifier.verify(canonical_json(body), signature, what=what)
    if (body["removed"], body["removed_signing_fingerprint"]) != (ws.name, ws.signer.verifier.fingerprint):
        raise VflError(f"{what} is {sender}'s removal of {str(body['removed'])[:40]!r} "
                       f"(key {short(str(body['removed_signing_fingerprint']))}), not of {ws.name}'s current key")
    running = unfinished_jobs(ws, sender)
    _move_to_removed(ws, card)
    ws.ledger.append(ws.signer, "peer-removed", peer=sender, signing_fingerprint=card.signing_fingerprint,
                     by_notice=True)
    return card, running
