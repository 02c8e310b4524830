"""A party's workspace: one folder holding its config, keys, peers, inbox, outbox, jobs and ledger.

Layout::

    vfl.json            name, role, data file (read, never modified or copied), id/label columns
    keys/               paillier.jwk (private, 0600), paillier.pub.jwk, signing.key (0600)
    peers/<name>.json   trusted party cards of the other parties
    inbox/              artifacts from peers, dropped here by hand (or by a recipe)
    outbox/             artifacts for peers, to carry to them
    archive/sent, archive/received   copies the audit re-checks
    jobs/<job>/         job state (resumable)
    ledger.jsonl        signed, hash-chained log of every artifact sent and received

Commands find the workspace like git finds a repository: walk up from the current folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vfl_cli.artifacts.io import canonical_json, pretty_json, replace_atomic, write_new
from vfl_cli.crypto import paillier
from vfl_cli.crypto.signing import Signer, Verifier, short
from vfl_cli.errors import DataError, VflError, WorkspaceError
from vfl_cli.ledger import Ledger
from vfl_cli.names import NAME_RE, check_name, is_name  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import pandas as pd

CONFIG = "vfl.json"
CARD_FORMAT = "vfl-party-card"
#: Vertical learning: the active party holds labels, passive parties features only.
#: Multi-node (horizontal) learning: a server (validation rows with labels), workers (training
#: rows with labels) and predictors (rows to score).
ROLES = ("active", "passive", "server", "worker", "predictor")
LABELLED_ROLES = ("active", "server", "worker")
MIN_KEY_BITS = 1024
SECURE_KEY_BITS = 2048

#: Bounds of the ``max_file_size`` setting: the container's zip format (no zip64) cannot hold a
#: file over 4 GiB, and a cap below 1 MiB would refuse an ordinary training step's files.
MIN_FILE_SIZE = 1 << 20
MAX_FILE_SIZE = 4 << 30
#: Size units as the memory setting reads them (psi_stream.parse_memory): kB/MB/GB (and k/M/G)
#: powers of 1000, KiB/MiB/GiB powers of 1024.
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 1 << 10, "m": 10**6, "mb": 10**6,
          "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30}


def parse_size(text: str | int) -> int:
    """A file size as written by a person: ``2GiB``, ``500MB``, ``1.5 GiB``, ``3000000`` (bytes).

    KiB/MiB/GiB are powers of 1024, kB/MB/GB (and k/M/G) powers of 1000. Refused outside
    1 MiB .. 4 GiB, the largest file the artifact container can hold.
    """
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise VflError(f"max_file_size must be a size such as 2GiB, 500MB or 3000000 (bytes), not {str(text)[:40]!r}")
    size = int(float(m.group(1)) * _UNITS[unit])
    if not MIN_FILE_SIZE <= size <= MAX_FILE_SIZE:
        raise VflError(f"max_file_size must be between 1 MiB and 4 GiB (an artifact cannot be larger), "
                       f"not {format_size(size)}")
    return size


def format_size(size: int) -> str:
    """``2 GiB``, ``1.5 GiB``, ``500 MiB``: the largest binary unit, to 3 significant digits."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def _memory(text: str) -> str:
    """The memory bound as stored (psi_stream's own parser checks it; lazy: no import cycle)."""
    from vfl_cli.protocol.psi_stream import format_memory, parse_memory

    return format_memory(parse_memory(text))


#: Settings kept in vfl.json, changed with 'vfl config set NAME VALUE': (parse, show, help).
SETTINGS: dict[str, tuple[Any, Any, str]] = {
    "max_file_size": (parse_size, format_size,
                      ("the largest file read from the inbox, a drop folder or 'vfl step FILE' "
                       "(default 2 GiB: a 10M-id alignment's largest file is about 0.7 GB)")),
    "memory": (_memory, str, ("bound on one vfl process's memory: alignments that would pass it "
                              "stream in parts (default 2GB; VFL_MEMORY sets it when unset)")),
}


@dataclass(frozen=True)
class PartyCard:
    """The public identity of a party: what it shares so that others can trust its files."""

    name: str
    role: str
    #: None for a party that made no Paillier key ('vfl keygen --no-paillier'): it takes part
    #: only in jobs that need none (handshake, alignment, hfl without secure aggregation ...)
    paillier: paillier.PublicKey | None
    verifier: Verifier
    created: str

    @property
    def paillier_fingerprint(self) -> str:
        return self.paillier.fingerprint if self.paillier is not None else ""

    @property
    def signing_fingerprint(self) -> str:
        return self.verifier.fingerprint

    def body(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT,
            "version": 1,
            "name": self.name,
            "role": self.role,
            "created": self.created,
            "paillier": self.paillier.to_jwk() if self.paillier is not None else None,
            "paillier_fingerprint": self.paillier_fingerprint,
            "signing_key": self.verifier.hex(),
            "signing_fingerprint": self.signing_fingerprint,
        }

    def to_bytes(self, signer: Signer) -> bytes:
        body = self.body()
        return pretty_json(dict(body, signature=signer.sign(canonical_json(body))))

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str) -> PartyCard:
        try:
            d = json.loads(data)
            if d.get("format") != CARD_FORMAT:
                raise VflError(f"{what} is not a vfl party card (made by 'vfl keys export')")
            card = cls(
                name=check_name(d["name"]),
                role=str(d["role"]),
                paillier=None if d["paillier"] is None else paillier.PublicKey.from_jwk(d["paillier"]),
                verifier=Verifier.from_hex(d["signing_key"]),
                created=str(d.get("created", "")),
            )
            signature = str(d["signature"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise VflError(f"{what} is not a valid party card: {exc}") from exc
        body = card.body()
        if body["paillier_fingerprint"] != d.get("paillier_fingerprint") or body[
            "signing_fingerprint"
        ] != d.get("signing_fingerprint"):
            raise VflError(f"{what}: the fingerprints in the card do not match its keys (edited)")
        card.verifier.verify(canonical_json(body), signature, what=what)
        if card.role not in ROLES:
            raise VflError(f"{what}: unknown role {card.role!r}")
        return card


class Workspace:
    """One party's folder. Core code gets everything it needs about the party from here."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        try:
            self.config: dict[str, Any] = json.loads((self.root / CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WorkspaceError(f"{self.root / CONFIG} cannot be read: {exc}") from exc
        self._peers: dict[str, PartyCard] | None = None

    # ----- creation and discovery -------------------------------------------------------------
    @classmethod
    def init(
        cls,
        root: Path,
        *,
        name: str,
        role: str,
        data: Path,
        id_column: str,
        label_column: str | None = None,
        max_file_size: str | int | None = None,
        **choice: Any,
    ) -> Workspace:
        """Create a party folder after checking the data file and columns.

        ``choice`` takes :func:`vfl_cli.columns.check_data`'s options: ``csv`` (sep, decimal,
        encoding), ``exclude``, ``features`` and ``positive_label``. ``max_file_size`` sets the
        setting of that name (default 2 GiB).
        """
        check_name(name)
        settings = {} if max_file_size is None else {"max_file_size": parse_size(max_file_size)}
        if role not in ROLES:
            raise VflError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if root.exists() and any(root.iterdir()):
            raise WorkspaceError(f"{root} exists and is not empty; choose a new folder")
        if role == "passive" and label_column:
            raise DataError(
                "a passive party holds no labels: drop --label-column, or use --role active"
            )
        if role in LABELLED_ROLES and not label_column:
            raise DataError(f"the {role} party holds the labels: give --label-column")
        from vfl_cli.columns import check_data

        data_config = check_data(data, role=role, id_column=id_column, label_column=label_column, **choice)
        for sub in ("peers", "inbox", "outbox", *PRIVATE_DIRS):
            (root / sub).mkdir(parents=True, exist_ok=True)
        secure_folders(root)
        config = {
            "name": name,
            "role": role,
            **data_config,  # data file, id/label columns, format and column choice; never the features
            **settings,
            "created": now(),
        }
        write_new(root / CONFIG, pretty_json(config))
        (root / "ledger.jsonl").touch()
        return cls(root)

    @classmethod
    def find(cls, explicit: Path | None = None, start: Path | None = None) -> Workspace:
        """The workspace named by ``-w`` or found by walking up from ``start`` (default cwd)."""
        if explicit is not None:
            if not (explicit / CONFIG).is_file():
                raise WorkspaceError(f"{explicit} is not a vfl workspace (no {CONFIG}); run 'vfl init' first")
            return cls(explicit)
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / CONFIG).is_file():
                return cls(folder)
        raise WorkspaceError(
            "not inside a vfl workspace; cd into one, pass -w DIR, or create one with 'vfl init'"
        )

    # ----- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def role(self) -> str:
        return str(self.config["role"])

    @property
    def label_column(self) -> str | None:
        return self.config.get("label_column")

    @property
    def features(self) -> list[str]:
        """The feature columns a new job uses: read from the data file now, after the party's choice."""
        from vfl_cli.columns import feature_columns

        return feature_columns(self.config)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # ----- settings ('vfl config') ------------------------------------------------------------
    @property
    def max_file_size(self) -> int:
        """The largest file this party reads from outside (inbox, drop folders, 'vfl step FILE')."""
        from vfl_cli.artifacts.container import MAX_BYTES

        value = self.config.get("max_file_size", MAX_BYTES)
        return value if isinstance(value, int) and not isinstance(value, bool) else parse_size(str(value))

    @property
    def memory(self) -> str:
        """The memory bound of this party's processes ('vfl init --memory', 'vfl config set memory')."""
        return str(self.config.get("memory") or "2GB")

    def size_limit(self) -> str:
        """The end of the message for a file over :attr:`max_file_size`: the setting, and how to raise it."""
        size = self.max_file_size
        bigger = format_size(min(MAX_FILE_SIZE, 2 * size)).replace(" ", "")
        return (f"this workspace's max_file_size setting ({format_size(size)} = {size:,} bytes); "
                f"if the file is expected, raise it with 'vfl config set max_file_size {bigger}' "
                "and hand it over again")

    def settings(self) -> dict[str, dict[str, Any]]:
        """Every setting: its value (as stored, and as shown), whether it is the default, its help."""
        out = {}
        for name, (_, show, help_) in SETTINGS.items():
            value = getattr(self, name)
            out[name] = {"value": value, "shown": show(value), "default": name not in self.config, "help": help_}
        return out

    def set_setting(self, name: str, value: str) -> Any:
        """Change a setting in vfl.json (checked first); returns the stored value."""
        if name not in SETTINGS:
            raise VflError(f"unknown setting {name[:40]!r}; settings: {', '.join(SETTINGS)} ('vfl config' lists them)")
        parsed = SETTINGS[name][0](value)
        self.config[name] = parsed
        replace_atomic(self.path(CONFIG), pretty_json(self.config))
        return parsed

    @property
    def inbox(self) -> Path:
        return self.path("inbox")

    @property
    def outbox(self) -> Path:
        return self.path("outbox")

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.path("ledger.jsonl"))

    # ----- keys -------------------------------------------------------------------------------
    def has_keys(self) -> bool:
        return self.path("keys", "signing.key").exists()

    def has_paillier(self) -> bool:
        return self.path("keys", "paillier.jwk").exists()

    def generate_keys(self, bits: int, *, allow_insecure: bool = False, with_paillier: bool = True) -> PartyCard:
        """Create a Paillier keypair (pheutil JWK, unless ``with_paillier`` is False) and an
        Ed25519 signing key; on a party that has a signing key but no Paillier key, add the
        Paillier key (peers accept the new card: it is signed by the key they trust)."""
        if self.has_keys() and not self.has_paillier() and with_paillier:
            public, private, _ = new_keys(bits, allow_insecure=allow_insecure)
            self.write_keys(public, private, self.signer)
            return self.card()
        if self.has_keys():
            raise WorkspaceError(
                f"{self.name} already has keys (fingerprint {short(self.card().signing_fingerprint)}); "
                "peers trust them, so they are never replaced. Start a new workspace for new keys"
            )
        if with_paillier:
            self.write_keys(*new_keys(bits, allow_insecure=allow_insecure))
        else:
            self.write_keys(None, None, Signer.generate())
        return self.card()

    def write_keys(self, public: paillier.PublicKey | None, private: paillier.PrivateKey | None,
                   signer: Signer) -> None:
        """Make these the party's current keys (0600); 'vfl keys rotate' retires the old ones first."""
        keys = self.path("keys")
        if public is not None and private is not None:
            replace_atomic(keys / "paillier.jwk", pretty_json(private.to_jwk()), mode=0o600)
            replace_atomic(keys / "paillier.pub.jwk", pretty_json(public.to_jwk()), mode=0o600)
        else:  # a rotation of a party without a Paillier key: none after it either
            for name in ("paillier.jwk", "paillier.pub.jwk"):
                keys.joinpath(name).unlink(missing_ok=True)
        replace_atomic(keys / "signing.key", (signer.seed_hex() + "\n").encode(), mode=0o600)
        self.config["keys_created"] = now()
        replace_atomic(self.path(CONFIG), pretty_json(self.config))
        for attr in ("signer", "private_key", "public_key"):
            self.__dict__.pop(attr, None)

    def _need_keys(self) -> None:
        if not self.has_keys():
            raise WorkspaceError(f"{self.name} has no keys yet; run 'vfl keygen' first")

    @cached_property
    def signer(self) -> Signer:
        self._need_keys()
        return Signer.from_seed_hex(self.path("keys", "signing.key").read_text())

    def _need_paillier(self) -> None:
        self._need_keys()
        if not self.has_paillier():
            raise WorkspaceError(f"{self.name} has no Paillier key (made with 'vfl keygen --no-paillier'), and this "
                                 "job needs one: run 'vfl keygen' to add it, then send the new card to the peers")

    @cached_property
    def private_key(self) -> paillier.PrivateKey:
        self._need_paillier()
        return paillier.PrivateKey.from_jwk(json.loads(self.path("keys", "paillier.jwk").read_text()))

    @cached_property
    def public_key(self) -> paillier.PublicKey:
        self._need_paillier()
        return paillier.PublicKey.from_jwk(json.loads(self.path("keys", "paillier.pub.jwk").read_text()))

    def card(self) -> PartyCard:
        return PartyCard(
            name=self.name,
            role=self.role,
            paillier=self.public_key if self.has_paillier() else None,
            verifier=self.signer.verifier,
            created=str(self.config.get("keys_created", "")),
        )

    # ----- peers ------------------------------------------------------------------------------
    def import_card(self, data: bytes, *, what: str) -> tuple[PartyCard, bool]:
        """Trust a peer's card. Returns the card and whether it was new.

        Re-importing the same card is a no-op; a different card under a known name is refused,
        because silently replacing a peer's keys is exactly what an attacker would want.
        """
        card = PartyCard.from_bytes(data, what=what)
        if card.name == self.name:
            raise VflError(f"{what} is this party's own card ({self.name}); import the peer's card")
        target = self.path("peers", f"{card.name}.json")  # a checked name (PartyCard.from_bytes)
        if card.name in self.peers():
            known = self.peer(card.name)
            if (known.signing_fingerprint, known.paillier_fingerprint) == (
                card.signing_fingerprint,
                card.paillier_fingerprint,
            ):
                return card, False
            if known.signing_fingerprint == card.signing_fingerprint and known.paillier is None:
                # the peer added a Paillier key: the card is signed by the signing key we trust
                replace_atomic(target, data)
                self._peers = None
                return card, True
            raise VflError(
                f"a different card for {card.name} is already trusted (signing key "
                f"{short(known.signing_fingerprint)}, new one {short(card.signing_fingerprint)}); "
                "if the peer rotated its keys, import the rotation notice its 'vfl keys rotate' wrote; "
                f"if it is no longer to be trusted, run 'vfl keys remove {card.name}'"
            )
        replace_atomic(target, data)
        self._peers = None
        return card, True

    def peers(self) -> dict[str, PartyCard]:
        """The trusted peers' cards by exact name (read once per workspace object).

        A received name is only ever a key into this dict, never part of a path: a sender
        ``../inbox/evil`` is simply not a trusted peer.
        """
        if self._peers is None:
            out: dict[str, PartyCard] = {}
            for f in sorted(self.path("peers").glob("*.json")):
                card = PartyCard.from_bytes(f.read_bytes(), what=str(f))
                if card.name != f.stem:
                    raise WorkspaceError(f"{f} holds the card of {card.name}; re-import it")
                out[card.name] = card
            self._peers = out
        return dict(self._peers)

    def peer(self, name: str) -> PartyCard:
        card = self.peers().get(name) if is_name(name) else None
        if card is None and is_name(name) and any(self.path("peers", "removed").glob(f"{name}.*json")):
            raise VflError(f"{name} was removed from {self.name}'s peers ('vfl keys remove'); "
                           f"import its card again with 'vfl keys import FILE' to trust it again")
        if card is None:
            shown = repr(name)[:40] if isinstance(name, str) else type(name).__name__
            raise VflError(
                f"{shown} is not a trusted peer of {self.name}; import its card with "
                f"'vfl keys import FILE'"
            )
        return card

    def peer_paillier(self, name: str) -> paillier.PublicKey:
        """A party's Paillier public key, for a job that needs one (a clear error if it has none)."""
        if name == self.name:
            return self.public_key
        card = self.peer(name)
        if card.paillier is None:
            raise VflError(f"{name} has no Paillier key (its card was made with 'vfl keygen --no-paillier'), and "
                           f"this job needs one: {name} runs 'vfl keygen' and sends its new card")
        return card.paillier

    def verifier_for(self, name: str) -> Verifier:
        return self.signer.verifier if name == self.name else self.peer(name).verifier

    # ----- data -------------------------------------------------------------------------------
    def read_data(self, path: Path | None = None) -> pd.DataFrame:
        """The party's data file (or another of its files), ids as strings.

        Data files are read, never modified, never copied into artifacts.
        """
        from vfl_cli.columns import read_party_table

        return read_party_table(self.config, path)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(int.from_bytes(os.urandom(16), "big"))


def new_keys(bits: int, *, allow_insecure: bool = False) -> tuple[paillier.PublicKey, paillier.PrivateKey, Signer]:
    """A fresh Paillier keypair of ``bits`` and a fresh Ed25519 signing key (nothing written)."""
    if bits < MIN_KEY_BITS and not allow_insecure:
        raise VflError(f"{bits}-bit Paillier keys are refused; use at least {SECURE_KEY_BITS}")
    public, private = paillier.generate_keypair(bits)
    return public, private, Signer.generate()


#: Folders holding secrets (keys; job state with PSI scalars, masks, shares and the party's own
#: ids; archived payloads): 0700, and every file the tool writes in them 0600.
PRIVATE_DIRS = ("keys", "jobs", "archive", "archive/sent", "archive/received")


def secure_folders(root: Path) -> None:
    """Make the private folders (and each job's folder) readable by their owner only.

    Files written there are created 0600 (``tempfile.mkstemp``, or an explicit mode); closing
    the folders also covers files an older version left 0644.
    """
    for sub in PRIVATE_DIRS:
        folder = root / sub
        if folder.is_dir() and (folder.stat().st_mode & 0o777) != 0o700:
            folder.chmod(0o700)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_header(path: Path, **options: Any) -> list[str]:
    """The column names of a CSV file (format detected or given: see :mod:`vfl_cli.tables`)."""
    from vfl_cli import tables

    return tables.read_header(path, **options)


def read_table(path: Path, id_column: str, **options: Any) -> pd.DataFrame:
    """Read a CSV with the id column as text (ids are strings, never numbers); see :mod:`vfl_cli.tables`."""
    from vfl_cli import tables

    return tables.read_table(path, id_column, **options)
