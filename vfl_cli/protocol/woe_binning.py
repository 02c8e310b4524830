"""Joint WOE/IV binning (``woe-binning``): weight of evidence and information value of every
party's columns against the active party's label, over files.

Who holds what: the active party A holds the labels (0/1, event = 1) and its columns; each
passive party P_j its columns. Rows are the training rows of a finished ``psi`` job (the
job's public ``test_fraction`` and ``seed`` split them as a training job with the same values
does, so that WOE is fitted on training rows only). Every party bins its own columns
(:mod:`vfl_cli.models.binning`: quantile or equal-width, categories by category, missing values
in a bin of their own); cut points and categories never leave the party.

1. ``woe/labels`` A -> P_j: the training rows' labels, one fresh Paillier ciphertext per row
   under A's key (exponent 0).
2. ``woe/sums`` P_j -> A: for every (column, bin) of P_j, under an opaque id (a permutation
   from P_j's CSPRNG, :func:`vfl_cli.models.binning.opaque_ids`): the encrypted sum of the
   labels of its rows (packed, re-randomised), the bin's row count in plaintext, an opaque
   column number (a second CSPRNG permutation) and, for a numeric column when ``monotone`` is
   on, the bin's rank in the column's order (missing bin first; -1 otherwise).
3. ``woe/result`` A -> P_j: per opaque id the WOE and IV of its bin (after monotone merging:
   of the merged bin, with the merged bin's number), and per opaque column its IV.

A computes WOE/IV of its own columns in the clear and of every passive column from the
decrypted sums (:func:`vfl_cli.models.woe.woe_iv`, :func:`~vfl_cli.models.woe.monotone_merge`);
P_j maps the figures back to its own bins and keeps its merged bins and WOE encoder.

What each party learns (semi-honest; docs/protocols/woe-binning.md):

* A: for every bin of every passive column, under opaque ids, its event and non-event counts;
  which opaque bins form one column (not which column), the number of columns and bins of
  each party; with ``monotone``, the order of a numeric column's bins (never its cut points).
  Not which row is in which bin: it receives only per-bin sums and counts.
* P_j: the WOE and IV of its own bins and columns (from which, with its own bin counts, it
  can derive each of its bins' event rate relative to the overall rate: the inherent output
  of WOE binning). The labels only as ciphertexts under A's key. Nothing of other parties.
* Everyone: the number of training rows, the public parameters.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from vfl_cli.artifacts.container import Artifact, Member, ndarray_member
from vfl_cli.bin_rules import BinRules
from vfl_cli.crypto import paillier
from vfl_cli.crypto.paillier_matmul import plain_matmul
from vfl_cli.errors import DataError, InvalidArtifact
from vfl_cli.models.binning import MAX_BINS, NUMERIC, Binning, ColumnBins, fit_binning, opaque_ids
from vfl_cli.models.woe import WoeEncoder, WoeIv, fit_woe, monotone_merge, woe_iv
from vfl_cli.protocol.base import (
    Bool,
    Choice,
    Expect,
    Float,
    Int,
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
    expect_meta_count,
    packed_member,
    read_enc,
    read_packed,
    refuse_echo,
    sent_digests,
)

__all__ = ["LABELS", "RESULT", "SUMS", "Labels", "Result", "Sums", "WoeBinning"]

LABELS = "woe/labels"
SUMS = "woe/sums"
RESULT = "woe/result"
#: Bound on the bins one passive party may send (every column at the largest bin count).
MAX_TOTAL_BINS = 4096 * 64


# ----- messages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Labels(Message):
    """A -> P_j: the training rows' labels, encrypted under A's key."""

    kind = LABELS
    rows: int
    y: Any  # paillier.EncryptedArray

    def meta(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def members(self) -> list[Member]:
        return [enc_member("y", self.y)]

    @classmethod
    def read(cls, art: Artifact, public: paillier.PublicKey, rows: int) -> Labels:
        if art.kind != LABELS:
            raise InvalidArtifact(f"expected {LABELS} from {art.sender}, got {art.kind}")
        expect_meta_count(art, "rows", rows)  # the training rows this party drew too
        return cls(rows, read_enc(art, "y", public, rows=rows))


@dataclass(frozen=True)
class Sums(Message):
    """P_j -> A: per opaque bin id, encrypted event sum, row count, opaque column, rank."""

    kind = SUMS
    bins: int
    events: Any  # paillier.Packed, in opaque id order
    counts: np.ndarray
    column: np.ndarray
    rank: np.ndarray

    def meta(self) -> dict[str, Any]:
        return {"bins": self.bins}

    def members(self) -> list[Member]:
        return [packed_member("events", self.events), ndarray_member("counts", self.counts),
                ndarray_member("column", self.column), ndarray_member("rank", self.rank)]

    @classmethod
    def read(cls, art: Artifact, public: paillier.PublicKey, rows: int) -> Sums:
        if art.kind != SUMS:
            raise InvalidArtifact(f"expected {SUMS} from {art.sender}, got {art.kind}")
        bins = art.meta.get("bins")
        if type(bins) is not int or not 0 < bins <= MAX_TOTAL_BINS:
            raise InvalidArtifact(f"{SUMS} from {art.sender}: bins is {bins!r:.20}")
        arrays = {}
        for name in ("counts", "column", "rank"):
            m = art.members.get(name)
            a = art.array(name) if m is not None and m.type == "ndarray" else None
            if a is None or a.shape != (bins,) or a.dtype.kind not in "iu":
                raise InvalidArtifact(f"{SUMS} from {art.sender}: {name!r} is not {bins} integers")
            arrays[name] = a.astype(np.int64)
        for k in np.unique(arrays["column"]):
            counts = arrays["counts"][arrays["column"] == k]
            if counts.min() < 0 or counts.sum() != rows:
                raise InvalidArtifact(f"{SUMS} from {art.sender}: the bin counts of a column do "
                                      f"not add up to the {rows} training rows")
        packed = read_packed(art, "events", public)
        if packed.count != bins:
            raise InvalidArtifact(f"{SUMS} from {art.sender}: {packed.count} sums for {bins} bins")
        return cls(bins, packed, arrays["counts"], arrays["column"], arrays["rank"])


@dataclass(frozen=True)
class Result(Message):
    """A -> P_j: per opaque bin id its (merged) bin's WOE, IV and merged number; IV per column."""

    kind = RESULT
    woe: np.ndarray
    iv_bins: np.ndarray
    merged: np.ndarray
    iv: np.ndarray


# ----- states ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActiveState(PartyState):
    own: dict[str, Any] = field(default_factory=dict)  # results for A's own columns
    sent: np.ndarray | None = None  # digests of the label ciphertexts A sent: refused back


@dataclass(frozen=True)
class PassiveState(PartyState):
    ids: list[list[Any]] = field(default_factory=list)  # opaque id -> [column, bin]
    columns: list[str] = field(default_factory=list)  # opaque column number -> name


# ----- data -----------------------------------------------------------------------------------
def party_binning(ctx: PartyContext, df: pd.DataFrame) -> Binning:
    """This party's bins: its own cut points and category columns where it set them (local,
    :mod:`vfl_cli.bin_rules`), the job's ``method`` and ``bins`` elsewhere."""
    cuts, categorical = BinRules.from_json(ctx.local.get("bin_rules")).for_columns(
        list(ctx.features))
    return fit_binning(df, list(ctx.features), method=ctx.params["method"],
                       max_bins=ctx.params["bins"], cuts=cuts, categorical=categorical)


def labels_of(ctx: PartyContext, df: pd.DataFrame) -> np.ndarray:
    if not ctx.label_column:
        raise DataError(f"{ctx.name} has no label column; the active party holds the labels")
    y = pd.to_numeric(df[ctx.label_column], errors="coerce").to_numpy(dtype=float)
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"WOE binning needs labels 0 and 1 (event = 1) in "
                        f"{ctx.label_column!r}")
    return np.asarray(y, dtype=np.int64)


# ----- pure steps: the passive party ----------------------------------------------------------
def sum_bins(binning: Binning, df: pd.DataFrame, y: paillier.EncryptedArray, *, monotone: bool,
             rng: random.Random | None = None) -> tuple[Sums, PassiveState]:
    """Encrypted label sums and row counts of every bin, under opaque ids (this party's CSPRNG)."""
    rng = rng or random.SystemRandom()
    ids = opaque_ids(binning, rng)
    names = binning.names
    col_perm = list(range(len(names)))
    rng.shuffle(col_perm)  # col_perm[k]: the column behind opaque column number k
    col_number = {names[c]: k for k, c in enumerate(col_perm)}
    offsets = np.concatenate([[0], np.cumsum([c.n_bins for c in binning.columns])[:-1]])
    xb = binning.transform(df)
    total = int(sum(c.n_bins for c in binning.columns))
    onehot = np.zeros((total, len(df)), dtype=np.float64)
    for j in range(xb.shape[1]):
        onehot[offsets[j] + xb[:, j], np.arange(len(df))] = 1.0
    index = np.array([offsets[names.index(c)] + b for c, b in ids.keys], dtype=np.int64)
    sums = plain_matmul(onehot, y, exponent=0)[index]  # onehot (bins x rows) @ labels
    counts = onehot.sum(axis=1)[index].astype(np.int64)
    ordered = {c.name: monotone and c.kind == NUMERIC for c in binning.columns}
    rank = np.array([b if ordered[c] else -1 for c, b in ids.keys], dtype=np.int64)
    column = np.array([col_number[c] for c, _ in ids.keys], dtype=np.int64)
    packed = paillier.pack(sums, value_bits=max(len(df), 1).bit_length())
    state = PassiveState([[c, b] for c, b in ids.keys], [names[c] for c in col_perm])
    return Sums(total, packed, counts, column, rank), state


def map_back(binning: Binning, state: PassiveState, result: Result, counts: np.ndarray
             ) -> dict[str, Any]:
    """This party's own figures, per column and bin, from the opaque-id result."""
    per: dict[str, dict[int, int]] = {}
    for i, (c, b) in enumerate(state.ids):
        per.setdefault(str(c), {})[int(b)] = i
    columns, woe, iv, table = [], {}, {}, []
    for k, name in enumerate(state.columns):
        col = binning.column(name)
        at = [per[name][b] for b in range(col.n_bins)]
        merged_col = _merged_column(col, result.merged[at])
        groups = _groups(result.merged, at)
        if len(groups) != merged_col.n_bins:
            raise InvalidArtifact(f"{RESULT} from the active party merges the bins of a column "
                                  "in a way this party cannot map back")
        woe[name] = tuple(float(result.woe[g[0]]) if g else 0.0 for g in groups)
        iv[name] = float(result.iv[k])
        for g, label, ids in zip(range(merged_col.n_bins), merged_col.labels, groups,
                                 strict=True):
            table.append({"column": name, "bin": g, "label": label,
                          "rows": int(counts[ids].sum()) if ids else 0,
                          "woe": woe[name][g], "iv": float(result.iv_bins[ids[0]]) if ids else 0.0})
        columns.append(merged_col)
    encoder = WoeEncoder(Binning(tuple(sorted(columns, key=lambda c: binning.names.index(c.name)))),
                         woe)
    return {"encoder": encoder.to_json(), "iv": iv, "table": table}


def _groups(merged: np.ndarray, at: list[int]) -> list[list[int]]:
    """Opaque ids of each merged bin, merged bins in the order of their first bin."""
    found: dict[int, list[int]] = {}
    for i in at:
        found.setdefault(int(merged[i]), []).append(i)
    return list(found.values())


def _merged_column(col: ColumnBins, merged: np.ndarray) -> ColumnBins:
    """The column with the cuts between bins the active party merged removed."""
    if col.kind != NUMERIC:
        return col
    values = merged[1:]  # value bins in order; the missing bin never merges
    dropped = [j for j in range(len(col.cuts)) if values[j] == values[j + 1]]
    return col.without_cuts(dropped) if dropped else col


# ----- pure steps: the active party -----------------------------------------------------------
def column_figures(events: np.ndarray, nonevents: np.ndarray, ordered: bool, monotone: bool,
                   adjustment: float) -> tuple[WoeIv, np.ndarray]:
    """WOE/IV of one column's bins (in rank order when ``ordered``), and each bin's merged bin."""
    if not (ordered and monotone) or len(events) < 3:
        return woe_iv(events, nonevents, adjustment=adjustment), np.arange(len(events))
    # the cut points stay with the passive party: merge over stand-in cuts between ranks
    stand_in = ColumnBins("column", NUMERIC, tuple(j + 0.5 for j in range(len(events) - 2)))
    merged, res = monotone_merge(stand_in, events, nonevents, adjustment=adjustment)
    bins = np.searchsorted(np.asarray(merged.cuts), np.arange(len(events) - 1), side="left") + 1
    return res, np.concatenate([[0], bins]).astype(np.int64)


def passive_figures(sums: Sums, events: np.ndarray, *, monotone: bool, adjustment: float,
                    min_rows: int = 1) -> tuple[Result, list[dict[str, Any]]]:
    """Figures of every opaque column of one passive party from its decrypted sums.

    A (merged) bin of 1..``min_rows - 1`` rows gets WOE 0 and IV 0, left out of its column's IV:
    its WOE would tell the passive party the labels of those few rows.
    """
    counts, column, rank = sums.counts, sums.column, sums.rank
    if np.any(events < 0) or np.any(events > counts):
        raise InvalidArtifact("decrypted event sums exceed their bins' row counts")
    woe, iv_bins = np.zeros(sums.bins), np.zeros(sums.bins)
    merged, ivs, shown = np.zeros(sums.bins, dtype=np.int64), [], []
    for k in range(int(column.max()) + 1 if sums.bins else 0):
        at = np.flatnonzero(column == k)
        if not len(at) or len(at) > MAX_BINS:
            raise InvalidArtifact(f"opaque column {k} has {len(at)} bins")
        ordered = bool(rank[at].min() >= 0)
        if ordered:
            if sorted(rank[at].tolist()) != list(range(len(at))):
                raise InvalidArtifact(f"opaque column {k}: bin ranks are not 0..{len(at) - 1}")
            at = at[np.argsort(rank[at])]
        e = events[at]
        res, group = column_figures(e, counts[at] - e, ordered, monotone, adjustment)
        rows = np.bincount(group, weights=counts[at], minlength=len(res.woe))
        small = (rows > 0) & (rows < min_rows)
        gw, gi = np.where(small, 0.0, res.woe), np.where(small, 0.0, res.iv_bins)
        woe[at], iv_bins[at], merged[at] = gw[group], gi[group], group
        ivs.append(float(gi.sum()))
        shown.append({"column": k, "ids": at.tolist(), **res.to_json(), "iv": float(gi.sum()),
                      "withheld": np.flatnonzero(small).tolist()})
    return Result(woe, iv_bins, merged, np.array(ivs, dtype=float)), shown


# ----- handlers -------------------------------------------------------------------------------
def _send_labels(ctx: PartyContext, st: ActiveState, received: Any) -> Step[ActiveState]:
    df = training_rows(ctx)
    y = labels_of(ctx, df)
    binning = party_binning(ctx, df)
    encoder, figures = fit_woe(binning, df, y, monotone=ctx.params["monotone"],
                               adjustment=ctx.params["adjustment"])
    own = _own_results(ctx, encoder, figures, df)
    enc = paillier.encrypt(ctx.private_key().public, y.astype(float), exponent=0)
    out = [Labels(len(df), enc).to(p, "labels") for p in ctx.passives]
    if not ctx.passives:
        return Step.finish(st, own)
    return Step(ActiveState(own, sent_digests([enc.to_bytes()], enc.public.width)), "wait-sums", out)


def _own_results(ctx: PartyContext, encoder: WoeEncoder, figures: Mapping[str, WoeIv],
                 df: pd.DataFrame) -> dict[str, Any]:
    table = []
    for col in encoder.binning.columns:
        bins = col.transform(df[col.name])
        r = figures[col.name]
        for b, label in enumerate(col.labels):
            table.append({"column": col.name, "bin": b, "label": label,
                          "rows": int((bins == b).sum()), "events": int(r.events[b]),
                          "woe": float(r.woe[b]), "iv": float(r.iv_bins[b])})
    return {"party": ctx.name, "rows": len(df), "encoder": encoder.to_json(),
            "iv": {k: r.iv for k, r in figures.items()}, "table": table}


def _answer_labels(ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]
                   ) -> Step[PassiveState]:
    df = training_rows(ctx)
    labels = Labels.read(received[ctx.active], ctx.public_key(ctx.active), len(df))
    binning = party_binning(ctx, df)
    sums, new = sum_bins(binning, df, labels.y, monotone=ctx.params["monotone"])
    return Step(new, "wait-result", [sums.to(ctx.active, "sums")])


def _compute(ctx: PartyContext, st: ActiveState, received: Mapping[str, Artifact]
             ) -> Step[ActiveState]:
    priv = ctx.private_key()
    rows = int(st.own["rows"])
    out, passive = [], {}
    for p in ctx.passives:
        sums = Sums.read(received[p], priv.public, rows)
        # sums P built, never A's own label ciphertexts sent back to be decrypted
        refuse_echo(st.sent, sums.events.to_bytes(), priv.public.width, "the bin sums", p)
        events = np.rint(paillier.unpack(paillier.decrypt_packed(priv, sums.events), sums.events))
        result, shown = passive_figures(sums, events.astype(float), monotone=ctx.params["monotone"],
                                        adjustment=ctx.params["adjustment"],
                                        min_rows=ctx.params["min_bin_rows"])
        passive[p] = shown
        out.append(result.to(p, "result"))
    return Step.finish(st, {**st.own, "passive": passive}, out)


def _take_result(ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]
                 ) -> Step[PassiveState]:
    result = Result.receive(received, ctx.active)
    n = len(st.ids)
    for name, kinds in (("woe", "f"), ("iv_bins", "f"), ("merged", "iu"), ("iv", "f")):
        if getattr(result, name).dtype.kind not in kinds:  # no text or complex cast silently
            raise InvalidArtifact(f"{RESULT} from {ctx.active}: {name!r} holds {getattr(result, name).dtype} values")
    for name in ("woe", "iv_bins", "merged"):
        if getattr(result, name).shape != (n,):
            raise InvalidArtifact(f"{RESULT} from {ctx.active}: {name!r} is not {n} values")
    if result.iv.shape != (len(st.columns),):
        raise InvalidArtifact(f"{RESULT} from {ctx.active}: 'iv' is not {len(st.columns)} values")
    df = training_rows(ctx)
    binning = party_binning(ctx, df)
    xb = binning.transform(df)
    counts = np.array([int((xb[:, binning.names.index(c)] == b).sum()) for c, b in st.ids])
    mine = map_back(binning, st, result, counts)
    return Step.finish(st, {"party": ctx.name, "rows": len(df), **mine})


def _sums(ctx: PartyContext, st: Any) -> list[Expect]:
    return [Expect(p, SUMS) for p in ctx.passives]


class WoeBinning(KitProtocol[Any]):
    name = "woe-binning"
    states = {"active": ActiveState, "passive": PassiveState}
    params_spec: ClassVar[dict[str, Param]] = {
        "alignment": JobRef(note="the psi job whose rows to bin"),
        "method": Choice("quantile", "quantile", "equal-width"),
        "bins": Int(10, 3, 256, note="bins per column, the missing bin included"),
        "monotone": Bool(False, note="merge adjacent numeric bins until WOE is monotone"),
        "adjustment": Float(0.5, 0.0, 10.0, open_low=True,
                            note="added to a bin without events or non-events"),
        "min_bin_rows": Int(10, 1, 1_000_000,
                            note="a passive bin with fewer rows gets WOE 0 (its labels stay hidden)"),
        "test_fraction": Float(0.2, 0.0, 1.0, open_high=True,
                               note="rows left out, as the training job will"),
        "seed": Seed(),
    }

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _send_labels),
            ("active", "wait-sums"): Phase(_sums, _compute),
            ("passive", "start"): Phase(from_active(LABELS), _answer_labels),
            ("passive", "wait-result"): Phase(from_active(RESULT), _take_result),
        }
