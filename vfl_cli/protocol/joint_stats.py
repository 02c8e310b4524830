"""Joint statistics (``joint-stats``): Pearson correlation between the active party's columns and
each passive party's columns, and the active party's label rate per passive bin, over files.

Who holds what: the active party A holds its columns and, for the label rate, the labels (0/1,
event = 1); each passive party P_j its columns. Rows are the training rows of a finished
``psi`` job (split by the public ``test_fraction`` and ``seed`` as a training job splits them).
Columns are named by number (1 = a party's first feature column) so that no party's column
names go into the proposal; ``[0]`` is every column.

Pearson: each party standardises its own named columns (mean 0, population standard deviation
1, a missing cell counts as the mean, a constant column as 0), so that ``r = Z_A^T Z_P / n``.

1. ``jstats/columns`` A -> P_j: ``Enc(Z_A)`` (rows x a, fixed point, fresh ciphertexts under A's
   key) and, for the label rate, ``Enc(y)`` (one ciphertext per row).
2. ``jstats/products`` P_j -> A: ``Enc(Z_P^T Z_A)`` (p x a, :func:`paillier.plain_matmul`),
   re-randomised when A is to learn it (``reveal_to`` active or both), else plus a uniform mask
   modulo n (:func:`paillier.mask`, full domain); for the label rate, per opaque bin id (a
   permutation from P_j's CSPRNG, :func:`vfl_cli.models.binning.opaque_ids`) the encrypted
   label sum of its rows plus a uniform mask modulo n, the bin's row count, its opaque column.
3. ``jstats/result`` A -> P_j (when P_j learns anything): the masked products decrypted (the
   values themselves with ``reveal_to`` both) and the masked bin sums decrypted, except those
   of bins of 1..``min_bin_rows - 1`` rows, which A withholds. P_j unmasks.

What each party learns (semi-honest; docs/protocols/joint-stats.md):

* A: with ``reveal_to`` active or both, the p x a correlations (P_j's columns by number only);
  per opaque bin its row count and which opaque bins form one column. Uniform values otherwise.
  Not which row is in which bin.
* P_j: with ``reveal_to`` passive or both, the p x a correlations; the event count (hence the
  label rate) of each of its own bins but the withheld ones. Labels and A's columns only as
  ciphertexts under A's key.
* Everyone: the number of training rows, the column numbers, the public parameters.

Each party's correlations between its own columns are computed locally and never sent.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from vfl_cli.artifacts.container import Artifact, Member, ndarray_member
from vfl_cli.crypto import paillier
from vfl_cli.crypto.histogram import bin_sums
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.models.binning import Binning, as_numbers, fit_binning, opaque_ids
from vfl_cli.protocol.base import (
    Bool,
    Choice,
    Expect,
    Float,
    Int,
    IntList,
    JobRef,
    Param,
    PartyContext,
    Seed,
)
from vfl_cli.protocol.kit import (
    KitProtocol,
    Message,
    PartyState,
    Phase,
    Step,
    from_active,
    nothing,
    training_rows,
)
from vfl_cli.protocol.wire import (
    enc_member,
    exact_unmask,
    ints_member,
    load_mask,
    read_enc,
    read_ints,
    refuse_echo,
    save_mask,
    sent_digests,
)

__all__ = ["COLUMNS", "PRODUCTS", "RESULT", "JointStats", "standardise", "within"]

COLUMNS = "jstats/columns"
PRODUCTS = "jstats/products"
RESULT = "jstats/result"
#: A party learns ``k`` inner products per column of the other side: the rows must be at least
#: this many times the columns it names, so that no party can solve for the other's rows.
MIN_ROWS_PER_COLUMN = 10
MAX_COLUMNS = 4096
MAX_TOTAL_BINS = 4096 * 64
#: Slack on |r| <= 1 for fixed-point rounding (2**-32 per factor).
R_SLACK = 1e-6


# ----- messages -------------------------------------------------------------------------------
def _ints(art: Artifact, name: str, count: int) -> np.ndarray:
    m = art.members.get(name)
    a = art.array(name) if m is not None and m.type == "ndarray" else None
    if a is None or a.shape != (count,) or a.dtype.kind not in "iub":
        raise InvalidArtifact(f"{art.kind} from {art.sender}: {name!r} is not {count} integers")
    return a.astype(np.int64)


def _numbers(art: Artifact, key: str) -> list[int]:
    v = art.meta.get(key)
    if not isinstance(v, list) or len(v) > MAX_COLUMNS or not all(
            type(x) is int and x > 0 for x in v):
        raise InvalidArtifact(f"{art.kind} from {art.sender}: {key!r} is not a list of column "
                              "numbers")
    return v


@dataclass(frozen=True)
class Columns(Message):
    """A -> P_j: A's standardised columns and the labels, encrypted under A's key."""

    kind = COLUMNS
    rows: int
    active: list[int]
    z: Any  # paillier.EncryptedArray (rows x a) or None
    y: Any  # paillier.EncryptedArray (rows,) or None

    def meta(self) -> dict[str, Any]:
        return {"rows": self.rows, "active": self.active}

    def members(self) -> list[Member]:
        return [enc_member(n, v) for n, v in (("z", self.z), ("y", self.y)) if v is not None]

    @classmethod
    def read(cls, art: Artifact, public: paillier.PublicKey, rows: int,
             params: Mapping[str, Any]) -> Columns:
        if art.kind != COLUMNS:
            raise InvalidArtifact(f"expected {COLUMNS} from {art.sender}, got {art.kind}")
        if art.meta.get("rows") != rows:
            raise InvalidArtifact(f"{COLUMNS} from {art.sender} is for {art.meta.get('rows')!r} "
                                  f"training rows, this party has {rows}")
        active = _numbers(art, "active") if params["pearson"] else []
        z = None
        if params["pearson"]:
            z = read_enc(art, "z", public)
            if z.shape != (rows, len(active)) or not active:
                raise InvalidArtifact(f"{COLUMNS} from {art.sender}: 'z' holds {z.shape} values, "
                                      f"expected {rows} x {len(active)}")
        y = read_enc(art, "y", public, rows=rows) if params["label_rate"] else None
        return cls(rows, active, z, y)


@dataclass(frozen=True)
class Products(Message):
    """P_j -> A: the products (masked or re-randomised) and masked label sums per opaque bin."""

    kind = PRODUCTS
    passive: list[int]
    c: Any  # paillier.EncryptedArray (p x a) or None
    s: Any  # paillier.EncryptedArray (bins,) or None
    counts: np.ndarray
    column: np.ndarray

    def meta(self) -> dict[str, Any]:
        return {"passive": self.passive, "bins": len(self.counts)}

    def members(self) -> list[Member]:
        out = [enc_member(n, v) for n, v in (("c", self.c), ("s", self.s)) if v is not None]
        return out + [ndarray_member("counts", self.counts), ndarray_member("column", self.column)]

    @classmethod
    def read(cls, art: Artifact, public: paillier.PublicKey, rows: int, active: int,
             params: Mapping[str, Any]) -> Products:
        if art.kind != PRODUCTS:
            raise InvalidArtifact(f"expected {PRODUCTS} from {art.sender}, got {art.kind}")
        passive = _numbers(art, "passive") if params["pearson"] else []
        c = read_enc(art, "c", public) if params["pearson"] else None
        if c is not None and (c.shape != (len(passive), active) or not passive):
            raise InvalidArtifact(f"{PRODUCTS} from {art.sender}: 'c' holds {c.shape} values, "
                                  f"expected {len(passive)} x {active}")
        bins = art.meta.get("bins") if params["label_rate"] else 0
        if type(bins) is not int or not 0 <= bins <= MAX_TOTAL_BINS:
            raise InvalidArtifact(f"{PRODUCTS} from {art.sender}: bins is {bins!r:.20}")
        counts, column = _ints(art, "counts", bins), _ints(art, "column", bins)
        s = read_enc(art, "s", public, rows=bins) if params["label_rate"] else None
        _check_counts(counts, column, rows, art.sender)
        return cls(passive, c, s, counts, column)


def _check_counts(counts: np.ndarray, column: np.ndarray, rows: int, sender: str) -> None:
    for k in np.unique(column):
        at = column == k
        if counts[at].min() < 0 or counts[at].sum() != rows:
            raise InvalidArtifact(f"{PRODUCTS} from {sender}: the bin counts of a column do not "
                                  f"add up to the {rows} training rows")


@dataclass(frozen=True)
class Result(Message):
    """A -> P_j: masked decryptions (or, with reveal_to both, the correlations) for P_j."""

    kind = RESULT
    c: Any  # list[int] masked decryptions, np.ndarray correlations, or None
    s: Any  # list[int] masked decryptions of the bin sums (withheld bins: 0), or None
    withheld: np.ndarray
    modulus: int

    def meta(self) -> dict[str, Any]:
        return {"bins": len(self.withheld)}

    def members(self) -> list[Member]:
        out = [ndarray_member("withheld", self.withheld)]
        if isinstance(self.c, np.ndarray):
            out.append(ndarray_member("r", self.c))
        elif self.c is not None:
            out.append(ints_member("c", self.c, self.modulus))
        if self.s is not None:
            out.append(ints_member("s", self.s, self.modulus))
        return out


# ----- states ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActiveState(PartyState):
    rows: int = 0
    active: list[int] = field(default_factory=list)  # A's column numbers behind Z_A
    own: dict[str, Any] = field(default_factory=dict)
    sent_digests: np.ndarray | None = None


@dataclass(frozen=True)
class PassiveState(PartyState):
    rows: int = 0
    active: list[int] = field(default_factory=list)
    passive: list[int] = field(default_factory=list)
    c_mask: dict[str, Any] = field(default_factory=dict)
    s_mask: dict[str, Any] = field(default_factory=dict)
    ids: list[list[Any]] = field(default_factory=list)  # opaque id -> [column, bin]
    binning: dict[str, Any] = field(default_factory=dict)
    own: dict[str, Any] = field(default_factory=dict)
    counts: np.ndarray | None = None


# ----- data -----------------------------------------------------------------------------------
def chosen(features: list[str], numbers: list[int], who: str, hint: str = "") -> list[int]:
    """The 1-based column numbers a job names (``[0]``: all), checked against ``features``."""
    if numbers == [0]:
        return list(range(1, len(features) + 1))
    bad = [n for n in numbers if not 1 <= n <= len(features)]
    if bad or len(set(numbers)) != len(numbers):
        what = f"column number {bad[0]}" if bad else "a column number twice"
        raise DataError(f"the job names {what} of {who}, which has columns "
                        f"1..{len(features)}{hint}")
    return list(numbers)


def standardise(x: np.ndarray) -> np.ndarray:
    """Columns to mean 0, population deviation 1; missing cells and constant columns to 0."""
    if not x.size:
        return np.zeros(x.shape, dtype=float)
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    z[:, scaler.var_ == 0] = 0.0
    out: np.ndarray = np.nan_to_num(z, nan=0.0)
    return out


def numbers_of(df: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The named columns as floats (text refused, naming the column)."""
    return np.column_stack([as_numbers(df[c], c) for c in names]) if names else np.zeros((len(df), 0))


def within(z: np.ndarray) -> np.ndarray:
    """Correlations between one party's own standardised columns (local: ``Z^T Z / n``)."""
    return np.asarray(z.T @ z / max(len(z), 1))


def _guard(rows: int, columns: int, learner: str) -> None:
    if rows < MIN_ROWS_PER_COLUMN * columns:
        raise VflError(f"{rows} training rows are too few for {columns} columns: {learner} would "
                       f"learn {columns} inner products per column over {rows} rows (at least "
                       f"{MIN_ROWS_PER_COLUMN} rows per column are needed); name fewer columns")


def _own(ctx: PartyContext, df: pd.DataFrame, numbers: list[int]) -> tuple[dict[str, Any],
                                                                           np.ndarray]:
    names = [ctx.features[n - 1] for n in numbers]
    z = standardise(numbers_of(df, names))
    own = {"party": ctx.name, "role": ctx.role, "rows": len(df), "columns": names,
           "within": within(z).tolist()}
    return own, z


def labels_of(ctx: PartyContext, df: pd.DataFrame) -> np.ndarray:
    if not ctx.label_column:
        raise DataError(f"{ctx.name} has no label column; the active party holds the labels")
    y: np.ndarray = pd.to_numeric(df[ctx.label_column], errors="coerce").to_numpy(dtype=float)
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"the label rate needs labels 0 and 1 (event = 1) in "
                        f"{ctx.label_column!r}")
    return y


# ----- pure steps: the passive party ----------------------------------------------------------
def _unbounded(x: paillier.EncryptedArray) -> paillier.EncryptedArray:
    """The same ciphertexts with no tracked bound: :func:`paillier.mask` then masks uniformly
    modulo n (a bound derived from this party's data would show in the masked values' size)."""
    return paillier.EncryptedArray(x.public, x.raw_ciphertexts(), x.shape, x.exponent)


def cross_products(z_active: paillier.EncryptedArray, z_passive: np.ndarray, reveal_to: str,
                   rng: random.Random | None = None
                   ) -> tuple[paillier.EncryptedArray, dict[str, Any]]:
    """``Enc(Z_P^T Z_A)``: masked uniformly modulo n (the mask kept) unless the active party is
    to learn it, then re-randomised."""
    c = paillier.plain_matmul(z_passive.T, z_active)
    if reveal_to == "passive":
        masked, m = paillier.mask(_unbounded(c), rng=rng)
        return masked, save_mask(m)
    return paillier.rerandomize(c), {}


def label_sums(binning: Binning, df: pd.DataFrame, y: paillier.EncryptedArray,
               rng: random.Random | None = None
               ) -> tuple[paillier.EncryptedArray, dict[str, Any], np.ndarray, np.ndarray,
                          list[list[Any]]]:
    """Masked encrypted label sums per opaque bin id, the mask, row counts, opaque columns, ids.

    The ids and the column numbers are permutations from this party's CSPRNG; each sum gets a
    uniform mask modulo n, so the key holder decrypts only uniform values.
    """
    rng = rng or random.SystemRandom()
    ids = opaque_ids(binning, rng)
    names = binning.names
    perm = list(range(len(names)))
    rng.shuffle(perm)  # perm[k]: the column behind opaque column number k
    number = {names[c]: k for k, c in enumerate(perm)}
    offsets = np.concatenate([[0], np.cumsum([c.n_bins for c in binning.columns])[:-1]])
    at = binning.transform(df) + offsets.astype(np.int64)  # each row's bin in every column
    total = int(sum(c.n_bins for c in binning.columns))
    index = np.array([offsets[names.index(c)] + b for c, b in ids.keys], dtype=np.int64)
    sums = bin_sums(y, at, total)[index]  # in opaque id order
    masked, m = paillier.mask(_unbounded(sums), rng=rng)
    counts = np.bincount(at.ravel(), minlength=total)[index].astype(np.int64)
    column = np.array([number[c] for c, _ in ids.keys], dtype=np.int64)
    return masked, save_mask(m), counts, column, ids.to_json()


def rates_table(binning: Binning, ids: list[list[Any]], counts: np.ndarray,
                events: list[int | None]) -> list[dict[str, Any]]:
    """One line per (column, bin) of this party: rows, events and label rate (None: withheld)."""
    at = {(str(c), int(b)): i for i, (c, b) in enumerate(ids)}
    table = []
    for col in binning.columns:
        for b, label in enumerate(col.labels):
            i = at[(col.name, b)]
            rows, e = int(counts[i]), events[i]
            rate = None if e is None or rows == 0 else e / rows
            table.append({"column": col.name, "bin": b, "label": label, "rows": rows,
                          "events": e, "rate": rate})
    return table


def unmask_events(raw: list[int], mask: paillier.Mask, counts: np.ndarray,
                  withheld: np.ndarray) -> list[int | None]:
    """The event count of every bin the active party did not withhold (checked 0..rows)."""
    out: list[int | None] = []
    for i, w in enumerate(withheld.tolist()):
        if w:
            out.append(None)
            continue
        e = exact_unmask(raw[i], mask, i)
        if not 0 <= e <= counts[i]:
            raise InvalidArtifact(f"{RESULT}: the events of a bin are {e}, outside 0..{counts[i]}"
                                  " (a wrong key or a tampered reply)")
        out.append(e)
    return out


def _checked_r(r: np.ndarray, shape: tuple[int, int], sender: str) -> np.ndarray:
    if r.shape != shape or not np.all(np.isfinite(r)) or np.abs(r).max(initial=0) > 1 + R_SLACK:
        raise InvalidArtifact(f"correlations from {sender} are not {shape[0]} x {shape[1]} values "
                              "in [-1, 1] (a wrong key or a tampered reply)")
    clipped: np.ndarray = np.clip(r, -1.0, 1.0)
    return clipped


# ----- pure steps: the active party -----------------------------------------------------------
def _refuse_echo(st: ActiveState, prod: Products, sender: str) -> None:
    """A decrypts only what P_j computed: never its own ciphertexts sent back."""
    for name, x in (("products", prod.c), ("label sums", prod.s)):
        if x is not None and x.size:
            refuse_echo(st.sent_digests, x.to_bytes(), x.public.width, f"{PRODUCTS} ({name})", sender)


def decrypt_products(priv: paillier.PrivateKey, prod: Products, rows: int, reveal_to: str,
                     sender: str) -> tuple[np.ndarray | None, Any]:
    """A's correlations (None unless it is to learn them) and what goes back to P_j for them."""
    if prod.c is None:
        return None, None
    if reveal_to != "active":  # P_j learns a inner products for each of its p columns
        _guard(rows, len(prod.passive), sender)
    if reveal_to == "passive":
        return None, priv.decrypt_raw(prod.c)
    r = _checked_r(priv.decrypt(prod.c) / rows, prod.c.shape, sender)
    return r, (r if reveal_to == "both" else None)


def withhold(priv: paillier.PrivateKey, prod: Products, min_rows: int
             ) -> tuple[list[int] | None, np.ndarray]:
    """The masked sums decrypted, 0 in place of those of bins of 1..min_rows-1 rows."""
    small = (prod.counts > 0) & (prod.counts < min_rows)
    if prod.s is None:
        return None, small.astype(np.int8)
    raw = priv.decrypt_raw(prod.s)
    return [0 if w else int(v) for v, w in zip(raw, small.tolist(), strict=True)], \
        small.astype(np.int8)


def passive_learns(params: Mapping[str, Any]) -> bool:
    return bool(params["label_rate"] or (params["pearson"] and params["reveal_to"] != "active"))


# ----- handlers -------------------------------------------------------------------------------
def _send_columns(ctx: PartyContext, st: ActiveState, received: Any) -> Step[ActiveState]:
    p = ctx.params
    df = training_rows(ctx)
    numbers = chosen(list(ctx.features), p["active_columns"], ctx.name) if p["pearson"] else []
    _guard(len(df), len(numbers), ctx.name)  # each passive party checks it again
    own, z = _own(ctx, df, numbers)
    pub = ctx.private_key().public
    z_enc = paillier.encrypt(pub, z) if p["pearson"] else None
    y_enc = paillier.encrypt(pub, labels_of(ctx, df), exponent=0) if p["label_rate"] else None
    blobs = [x.to_bytes() for x in (z_enc, y_enc) if x is not None]
    msg = Columns(len(df), numbers, z_enc, y_enc)
    new = ActiveState(len(df), numbers, own, sent_digests(blobs, pub.width))
    return Step(new, "wait-products", [msg.to(q, "columns") for q in ctx.passives])


def _compute(ctx: PartyContext, st: ActiveState, received: Mapping[str, Artifact]
             ) -> Step[ActiveState]:
    p, priv = ctx.params, ctx.private_key()
    out, pearson, bins = [], {}, {}
    for q in ctx.passives:
        prod = Products.read(received[q], priv.public, st.rows, len(st.active), p)
        _refuse_echo(st, prod, q)
        r, c_back = decrypt_products(priv, prod, st.rows, p["reveal_to"], q)
        s_back, withheld = withhold(priv, prod, p["min_bin_rows"])
        if p["pearson"]:
            pearson[q] = {"mine": st.own["columns"], "theirs": prod.passive,
                          "r": None if r is None else r.T.tolist()}
        if p["label_rate"]:
            bins[q] = {"bins": len(prod.counts), "columns": len(np.unique(prod.column)),
                       "withheld": int(withheld.sum())}
        if passive_learns(p):
            out.append(Result(c_back, s_back, withheld, priv.public.n).to(q, "result"))
    results = {**st.own, "pearson": pearson, "label_rate": bins}
    return Step.finish(st.but(sent_digests=None), results, out)


def _answer_columns(ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]
                    ) -> Step[PassiveState]:
    p = ctx.params
    df = training_rows(ctx)
    cols = Columns.read(received[ctx.active], ctx.public_key(ctx.active), len(df), p)
    hint = f"; stop the job with 'vfl job cancel {ctx.job}' (a notice for {ctx.active})"
    numbers = chosen(list(ctx.features), p["passive_columns"], ctx.name, hint) \
        if p["pearson"] else []
    if p["pearson"]:
        _guard(len(df), len(cols.active), ctx.active)
    own, z = _own(ctx, df, numbers)
    c, c_mask = cross_products(cols.z, z, p["reveal_to"]) if p["pearson"] else (None, {})
    s, s_mask, ids, fitted = None, {}, [], {}  # type: ignore[var-annotated]
    counts = column = np.zeros(0, np.int64)
    if p["label_rate"]:
        binning = fit_binning(df, list(ctx.features), method=p["method"], max_bins=p["bins"])
        s, s_mask, counts, column, ids = label_sums(binning, df, cols.y)
        fitted = binning.to_json()
    msg = Products(numbers, c, s, counts, column).to(ctx.active, "products")
    new = PassiveState(len(df), cols.active, numbers, c_mask, s_mask, ids, fitted, own, counts)
    if passive_learns(p):
        return Step(new, "wait-result", [msg])
    return Step.finish(new.but(c_mask={}, s_mask={}), _passive_results(ctx, new, None, []),
                       [msg])


def _passive_results(ctx: PartyContext, st: PassiveState, r: np.ndarray | None,
                     table: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(st.own)
    if ctx.params["pearson"]:
        out["pearson"] = {ctx.active: {"mine": st.own["columns"], "theirs": st.active,
                                       "r": None if r is None else r.tolist()}}
    out["label_rate"] = table
    return out


def _take_result(ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]
                 ) -> Step[PassiveState]:
    p = ctx.params
    art = received[ctx.active]
    if art.kind != RESULT:
        raise InvalidArtifact(f"expected {RESULT} from {art.sender}, got {art.kind}")
    shape = (len(st.passive), len(st.active))
    r = None
    if p["pearson"] and p["reveal_to"] == "passive":
        raw = read_ints(art, "c", shape[0] * shape[1])
        r = _checked_r(paillier.unmask(raw, load_mask(st.c_mask)) / st.rows, shape, art.sender)
    elif p["pearson"] and p["reveal_to"] == "both":
        m = art.members.get("r")
        got = art.array("r") if m is not None and m.type == "ndarray" else np.zeros(0)
        r = _checked_r(np.asarray(got, dtype=float), shape, art.sender)
    table: list[dict[str, Any]] = []
    if p["label_rate"]:
        counts = np.asarray(st.counts, dtype=np.int64)
        withheld = _ints(art, "withheld", len(st.ids))
        raw_s = read_ints(art, "s", len(st.ids))
        events = unmask_events(raw_s, load_mask(st.s_mask), counts, withheld)
        table = rates_table(Binning.from_json(st.binning), st.ids, counts, events)
    return Step.finish(st.but(c_mask={}, s_mask={}), _passive_results(ctx, st, r, table))


def _products(ctx: PartyContext, st: Any) -> list[Expect]:
    return [Expect(q, PRODUCTS) for q in ctx.passives]


class JointStats(KitProtocol[Any]):
    name = "joint-stats"
    states: ClassVar[Mapping[str, type[PartyState]]] = {"active": ActiveState,
                                                        "passive": PassiveState}
    params_spec: ClassVar[dict[str, Param]] = {
        "alignment": JobRef(note="the psi job whose rows to use"),
        "pearson": Bool(True, note="correlations between the active and each passive party's columns"),
        "active_columns": IntList([0], 0, MAX_COLUMNS,
                                  note="the active party's columns, numbered from 1; [0]: all"),
        "passive_columns": IntList([0], 0, MAX_COLUMNS,
                                   note="each passive party's columns, numbered from 1; [0]: all"),
        "reveal_to": Choice("active", "active", "passive", "both",
                            note="who learns the correlations between the parties' columns"),
        "label_rate": Bool(True, note="the label rate of every passive bin, for its party"),
        "method": Choice("quantile", "quantile", "equal-width"),
        "bins": Int(10, 3, 256, note="bins per passive column, the missing bin included"),
        "min_bin_rows": Int(10, 1, 1_000_000,
                            note="a passive bin with fewer rows gets no label rate"),
        "test_fraction": Float(0.2, 0.0, 1.0, open_high=True,
                               note="rows left out, as the training job will"),
        "seed": Seed(),
    }

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]
                     ) -> dict[str, Any]:
        out = super().check_params(params, parties)
        if not out["pearson"] and not out["label_rate"]:
            raise VflError("a joint-stats job needs pearson=true or label_rate=true (or both)")
        for key in ("active_columns", "passive_columns"):
            if 0 in out[key] and out[key] != [0]:
                raise VflError(f"joint-stats parameter {key} is [0] (every column) or column "
                               f"numbers from 1, not {out[key]}")
        return out

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _send_columns),
            ("active", "wait-products"): Phase(_products, _compute),
            ("passive", "start"): Phase(from_active(COLUMNS), _answer_columns),
            ("passive", "wait-result"): Phase(from_active(RESULT), _take_result),
        }
