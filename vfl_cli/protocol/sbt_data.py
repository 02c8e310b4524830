"""SecureBoost's pure parts: each party's binned data, the layer message, histograms, splits.

Used by :mod:`vfl_cli.protocol.secureboost` (the state machine); see its docstring for the
protocol and what each party learns.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vfl_cli.artifacts.container import Artifact
from vfl_cli.checks import whole
from vfl_cli.crypto import histogram as hg
from vfl_cli.crypto import paillier
from vfl_cli.errors import DataError, InvalidArtifact
from vfl_cli.models import trees
from vfl_cli.models.binning import Binning, fit_binning
from vfl_cli.models.features import aligned_rows, numeric_matrix, split_rows
from vfl_cli.protocol.base import Outgoing, PartyContext
from vfl_cli.protocol.kit import finished_job
from vfl_cli.protocol.wire import read_packed, refuse_echo, typed_array

if TYPE_CHECKING:
    import pandas as pd

#: The most candidates one reply may carry (bounds the key holder's decryption work).
MAX_CANDIDATES = 2_000_000


def tree_size(depth: int) -> int:
    return (1 << (depth + 1)) - 1


def boost_params(params: Mapping[str, Any]) -> trees.BoostParams:
    keys = ("trees", "depth", "learning_rate", "l2", "min_child_weight", "min_samples_leaf",
            "objective", "subsample", "colsample", "seed", "goss_top", "goss_other")
    return trees.BoostParams(**{k: params[k] for k in keys})


class PartyData:
    """This party's aligned rows, split (grow / validation / test), binned on the grow rows.

    Built from the data file on a party's first step; later steps (each its own process) read
    the binned rows back from the party's job state (:meth:`cache`) instead of reading,
    aligning and binning the file again.
    """

    def __init__(self, ctx: PartyContext, st: Any = None) -> None:
        self.params = boost_params(ctx.params)
        self.params_raw = ctx.params
        self.name = ctx.name
        self.features = list(ctx.features)
        if st is not None and getattr(st, "xb", None) is not None:
            self._from_state(st)
            return
        alignment = ctx.params["alignment"]
        finished_job(ctx, alignment, ("psi",))
        df = aligned_rows(ctx.data(alignment), ctx.job_arrays(alignment), ctx.id_column,
                          alignment)
        self.df = df
        self.n = len(df)
        split = split_rows(self.n, ctx.params["test_fraction"], ctx.params["seed"],
                           ids=ctx.job_arrays(alignment).get("aligned_ids"))
        self.test = split.test
        self.grow, self.valid = _validation(split.train, ctx.params)
        self.binning: Binning = _own_binning(ctx, df.iloc[self.grow], self.features)
        self.Xb = self.binning.transform(df)
        self.n_bins = np.array([c.n_bins for c in self.binning.columns], dtype=np.int64)

    def _from_state(self, st: Any) -> None:
        self.Xb = np.asarray(st.xb)
        self.n = len(self.Xb)
        part = np.asarray(st.rowset, dtype=np.int64)
        a, b = 2 + int(part[0]), 2 + int(part[0]) + int(part[1])
        self.grow, self.valid, self.test = part[2:a], part[a:b], part[b:]
        self.binning = Binning.from_json(st.binning)
        self.n_bins = np.array([c.n_bins for c in self.binning.columns], dtype=np.int64)

    def cache(self) -> dict[str, Any]:
        """State fields that let later steps skip the data file (:meth:`_from_state`)."""
        part = np.concatenate([[len(self.grow), len(self.valid)], self.grow, self.valid,
                               self.test]).astype(np.int64)
        return {"xb": self.Xb, "rowset": part, "binning": self.binning.to_json()}


def _own_binning(ctx: PartyContext, rows: pd.DataFrame, features: list[str]) -> Binning:
    """The party's bins on its growing rows: its own cut points and category columns where it
    set them (``vfl binning cuts``, local in its job.json), ``max_bins`` quantile bins elsewhere.

    Raises:
        DataError: a column of the party's rules has more bins than ``max_bins``.
    """
    from vfl_cli.bin_rules import BinRules

    cuts, categorical = BinRules.from_json(ctx.local.get("bin_rules")).for_columns(features)
    most = int(ctx.params["max_bins"])
    binning = fit_binning(rows, features, max_bins=most, cuts=cuts, categorical=categorical)
    wide = [c.name for c in binning.columns if c.n_bins > most and c.name in {*cuts, *categorical}]
    if wide:
        raise DataError(f"{ctx.name}: column {wide[0]!r} has more bins under your binning rule "
                        f"than max_bins={most} (the missing bin included); raise max_bins or "
                        "change the rule ('vfl binning cuts show')")
    return binning


def _validation(train: np.ndarray, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    nv = round(len(train) * params["validation_fraction"])
    perm = np.random.default_rng([params["seed"], 0x5B7]).permutation(len(train))
    return np.sort(train[perm[nv:]]), np.sort(train[perm[:nv]])


PassiveData = PartyData


class ActiveData(PartyData):
    """The active party's data, with its labels."""

    def __init__(self, ctx: PartyContext, st: Any = None) -> None:
        super().__init__(ctx, st)
        if st is not None and getattr(st, "xb", None) is not None:
            y = np.asarray(st.y, dtype=np.float64)
        else:
            if not ctx.label_column:
                raise DataError(f"{ctx.name} has no label column; the active party holds the "
                                "labels")
            y = numeric_matrix(self.df, [ctx.label_column], what=ctx.name)[:, 0]
            if np.isnan(y).any():
                raise DataError(f"{ctx.name}: the label column {ctx.label_column!r} has missing "
                                "values")
        self.y = y
        self.y_grow = y[self.grow]
        self.classes = _classes(y, self.params.objective, ctx.params["classes"])


def _classes(y: np.ndarray, objective: str, given: int) -> int:
    if objective != "multiclass":
        if objective == "binary" and not np.isin(y, (0, 1)).all():
            raise DataError("objective binary needs labels 0 and 1")
        return 1
    if not (y == np.round(y)).all() or y.min() < 0:
        raise DataError("objective multiclass needs labels 0, 1, ..., classes-1")
    k = given or int(y.max()) + 1
    if y.max() >= k or k < 3:
        raise DataError(f"objective multiclass needs 3..64 classes with labels below {k}")
    return k


# ----- the active party's steps ---------------------------------------------------------------
def start_state(st: Any, data: ActiveData) -> Any:
    k = data.classes
    base = trees.init_score(data.y_grow, data.params.objective, max(k, 2))
    raw = np.tile(base, (data.n, 1))
    st = st.but(**data.cache(), y=data.y)
    # GOSS draws rows by a seed only this party knows (a public one would tell a passive party
    # which sampled rows were drawn, hence which were kept for their large gradients)
    return st.but(raw=raw, classes=k, g_bits=0, base=base.tolist(),
                  goss_seed=secrets.randbits(62))


def g_bits(g: np.ndarray) -> int:
    """Headroom exponent: ``|g| <= 2**g_bits`` (0 for log losses; regression by magnitude)."""
    top = float(np.abs(g).max(initial=1.0))
    return max(0, int(np.ceil(np.log2(top))))


def total_rounds(data: PartyData) -> int:
    """``active_trees`` protected rounds, then ``trees`` with every party (:func:`trees.rounds`)."""
    return trees.rounds(data.params, int(data.params_raw["active_trees"]))


def should_stop(st: Any, data: ActiveData) -> bool:
    if st.round_no >= total_rounds(data):
        return True
    wait = data.params_raw["early_stopping_rounds"]
    return bool(wait and st.best and st.round_no - int(st.best[1]) > wait)


def finish_round(st: Any, data: ActiveData) -> Any:
    """Leaf weights of this round's trees, scores updated, losses recorded."""
    p = data.params
    nodes = [dict(n) for n in st.forest[-1]]
    raw = st.raw.copy()
    for entry in nodes:
        if entry["owner"] is not None:
            continue
        nid = entry["id"]
        k = nid // tree_size(p.depth)
        here = st.node[:, k] == nid
        sel = here & st.sample
        entry["value"] = trees.leaf_value(float(st.g[sel, k].sum()), float(st.h[sel, k].sum()), p)
        raw[here, k] += entry["value"]
    history, best = _record(st, data, raw, st.round_no)
    return st.but(forest=[*st.forest[:-1], nodes], raw=raw, round_no=st.round_no + 1, layer=0,
                  frontier=[], pending={}, history=history, best=best)


def _record(st: Any, data: ActiveData, raw: np.ndarray, round_no: int
            ) -> tuple[list[dict[str, float]], list[float]]:
    """History and best validation loss with round ``round_no`` finished at scores ``raw``."""
    p = data.params
    train_loss = trees.loss(data.y_grow, raw[data.grow], p.objective)
    # "epoch" and "loss": the keys the report's training curve reads (one point per round)
    record = {"round": round_no, "epoch": round_no, "loss": train_loss,
              "train_loss": train_loss}
    best = list(st.best)
    if len(data.valid):
        record["valid_loss"] = trees.loss(data.y[data.valid], raw[data.valid], p.objective)
        if not best or record["valid_loss"] < best[0]:
            best = [record["valid_loss"], round_no]
    return [*st.history, record], best


# ----- the merged hand-off: a round's last passive splits ride with the next round's gradients
def close_round(st: Any, data: ActiveData) -> Any:
    """Every leaf value of this round before the passive party's last splits come back.

    The children of a held node (its split waits for the passive party's assignment) get their
    values from the decrypted left sums of the winning candidate and the node's totals; every
    other row gets its score now, a held node's rows the right child's value for now
    (:func:`settle_round` moves the left ones when the assignment arrives).
    """
    p, size = data.params, tree_size(data.params.depth)
    nodes = [dict(n) for n in st.forest[-1]]
    by_id = {n["id"]: n for n in nodes}
    raw = st.raw.copy()
    held: dict[str, list[float]] = {}
    for nid, _ in [s for lst in st.pending.values() for s in lst]:
        k, i = divmod(nid, size)
        sel = (st.node[:, k] == nid) & st.sample
        G, H = float(st.g[sel, k].sum()), float(st.h[sel, k].sum())
        GL, HL = st.pending_sums[str(nid)]
        wl, wr = trees.leaf_value(GL, HL, p), trees.leaf_value(G - GL, H - HL, p)
        by_id[nid + i + 1]["value"], by_id[nid + i + 2]["value"] = wl, wr
        held[str(nid)] = [wl, wr]
        raw[st.node[:, k] == nid, k] += wr
    for entry in nodes:
        if entry["owner"] is None and entry["value"] is None:
            k = entry["id"] // size
            here = st.node[:, k] == entry["id"]
            sel = here & st.sample
            entry["value"] = trees.leaf_value(float(st.g[sel, k].sum()),
                                              float(st.h[sel, k].sum()), p)
            raw[here, k] += entry["value"]
    return st.but(forest=[*st.forest[:-1], nodes], raw=raw, round_no=st.round_no + 1, layer=0,
                  frontier=[], pending={}, held=held, held_node=st.node, held_pending=st.pending,
                  pending_sums={})


def held_matrix(held_node: np.ndarray, pending: list[list[int]], sample: np.ndarray, size: int
                ) -> np.ndarray:
    """Rows x class trees: the sampled row is in a held node of that tree."""
    held = np.zeros(held_node.shape, dtype=bool)
    for nid, _ in pending:
        k = nid // size
        held[:, k] |= held_node[:, k] == nid
    return np.asarray(held & sample[:, None])


def held_variants(held_node: np.ndarray, pending: list[list[int]], sample: np.ndarray, size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(row, mask) of each ``gh_left`` ciphertext, in their order: rows ascending, and for a
    sampled row in held nodes of ``m`` class trees the masks ``1 .. 2^m - 1`` (bit ``i``: the
    row went left in the ``i``-th of those trees, by class; one tree per round: mask 1, left)."""
    m = held_matrix(held_node, pending, sample, size).sum(axis=1)
    rows = np.flatnonzero(m)
    reps = (np.int64(1) << m[rows].astype(np.int64)) - 1
    starts = np.cumsum(reps) - reps
    out = np.repeat(rows, reps)
    return out, np.arange(len(out)) - np.repeat(starts, reps) + 1


def taken_masks(held_node: np.ndarray, pending: list[list[int]], sample: np.ndarray, size: int,
                node: np.ndarray) -> np.ndarray:
    """Each row's mask (:func:`held_variants`) as the held splits sent it (``node``: the nodes
    after them); 0: every held split sent it right, or it is in no held node."""
    held = held_matrix(held_node, pending, sample, size)
    left = held & (node == held_node + held_node % size + 1)
    rank = np.where(held, np.cumsum(held, axis=1) - 1, 0)
    return np.asarray((left.astype(np.int64) << rank).sum(axis=1))


def variant_count(node: np.ndarray, pending: list[list[int]], grow: np.ndarray, size: int) -> int:
    """How many ``gh_left`` ciphertexts holding ``pending`` would take (every ``grow`` row
    sampled)."""
    sample = np.zeros(len(node), dtype=bool)
    sample[grow] = True
    m = held_matrix(node, pending, sample, size).sum(axis=1)
    return int(((np.int64(1) << m.astype(np.int64)) - 1).sum())


def left_variants(st: Any, data: ActiveData, rows: np.ndarray, masks: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of the new round for each (row, mask) of :func:`held_variants`: the row's
    scores had the held splits of the mask's trees sent it left."""
    size = tree_size(data.params.depth)
    pending = [s for lst in st.held_pending.values() for s in lst]
    held = held_matrix(st.held_node, pending, st.sample, size)[rows]
    rank = np.where(held, np.cumsum(held, axis=1) - 1, 0)
    raw = st.raw[rows].copy()
    for nid_s, (wl, wr) in st.held.items():
        k = int(nid_s) // size
        went = (st.held_node[rows, k] == int(nid_s)) & held[:, k] & ((masks >> rank[:, k]) & 1 == 1)
        raw[went, k] += wl - wr
    return trees.gradients(data.y[rows], raw, data.params.objective)


def settle_round(st: Any, data: ActiveData, node: np.ndarray) -> Any:
    """The assignment arrived (``node``: the held round's nodes after it): scores of the rows
    sent left moved, the new round's gradients of each held row switched to the variant of the
    way it went, the held round's losses recorded."""
    size = tree_size(data.params.depth)
    raw, g, h = st.raw.copy(), st.g.copy(), st.h.copy()
    for nid_s, (wl, wr) in st.held.items():
        nid = int(nid_s)
        k, i = divmod(nid, size)
        raw[node[:, k] == nid + i + 1, k] += wl - wr
    pending = [s for lst in st.held_pending.values() for s in lst]
    rows, masks = held_variants(st.held_node, pending, st.sample, size)
    pick = taken_masks(st.held_node, pending, st.sample, size, node)[rows] == masks
    g[rows[pick]], h[rows[pick]] = st.g_alt[pick], st.h_alt[pick]
    history, best = _record(st, data, raw, st.round_no - 1)
    return st.but(raw=raw, g=g, h=h, history=history, best=best, held={}, held_node=None,
                  held_pending={}, g_alt=None, h_alt=None)


def apply_assignments(art: Artifact, pending: list[list[int]], node: np.ndarray, size: int
                      ) -> np.ndarray:
    """The rows of each node a passive party split, sent left or right as it says."""
    bits = typed_array(art, "assign", "biu") if "assign" in art.members else np.zeros(0, np.uint8)
    if bits.ndim != 1:
        raise InvalidArtifact(f"{REPLY_KIND} from {art.sender}: the assignments are not one bit per row")
    at = 0
    for nid, _ in pending:
        k, i = divmod(nid, size)
        rows = np.flatnonzero(node[:, k] == nid)
        part = bits[at: at + len(rows)]
        if len(part) != len(rows) or not np.isin(part, (0, 1)).all():
            raise InvalidArtifact(f"{REPLY_KIND} from {art.sender}: the assignment of node {nid} "
                                  f"does not cover its {len(rows)} rows")
        left = part.astype(bool)
        node[rows[left], k], node[rows[~left], k] = nid + i + 1, nid + i + 2
        at += len(rows)
    if at != len(bits):
        raise InvalidArtifact(f"{REPLY_KIND} from {art.sender}: {len(bits)} assignments, "
                              f"expected {at}")
    return node


REPLY_KIND = "sbt/reply"


def read_candidates(art: Artifact, priv: Any, layout: hg.RowLayout, frontier: list[int],
                    sent: np.ndarray | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Node -> (opaque ids, decoded left sums (count, G_k, H_k...)) of one passive party.

    ``sent``: digests of the row ciphertexts A sent this round; sums holding any of them
    (A's own ``gh`` sent back to be decrypted) are refused before anything is decrypted.
    """
    counts = typed_array(art, "counts", "iu").astype(np.int64)
    ids = typed_array(art, "ids", "iu").astype(np.int64)
    if counts.shape != (len(frontier),) or (counts < 0).any() or ids.shape != (counts.sum(),) \
            or counts.sum() > MAX_CANDIDATES:
        raise InvalidArtifact(f"{REPLY_KIND} from {art.sender}: candidate counts do not match "
                              f"the {len(frontier)} nodes asked")
    packed = read_packed(art, "cands", priv.public)
    if packed.count != int(counts.sum()):
        raise InvalidArtifact(f"{REPLY_KIND} from {art.sender}: {packed.count} sums for "
                              f"{int(counts.sum())} candidates")
    refuse_echo(sent, packed.to_bytes(), priv.public.width, "the candidate sums", art.sender)
    stats = layout.decode(paillier.decrypt_packed(priv, packed)) if packed.count else \
        np.zeros((0, layout.slots))
    out, at = {}, 0
    for nid, c in zip(frontier, counts.tolist(), strict=True):
        out[nid] = (ids[at: at + c], stats[at: at + c])
        at += c
    return out


def best_over_parties(data: ActiveData, st: Any, rows: np.ndarray, k: int, nid: int,
                      allowed: np.ndarray, cands: Mapping[str, Any]
                      ) -> tuple[float, str, Any, list[float]] | None:
    """(gain, owner, split, left sums [G_L, H_L]) of the best candidate for node ``nid``;
    own columns first."""
    p = data.params
    g, h = st.g[rows, k], st.h[rows, k]
    G, H, C = float(g.sum()), float(h.sum()), len(rows)
    gains: list[np.ndarray] = []
    keys: list[tuple[str, Any]] = []
    lefts: list[np.ndarray] = []
    sums = trees.bin_sums(data.Xb[rows], data.n_bins, np.stack([g, h, np.ones_like(g)], 1))
    for j, s in enumerate(sums):
        if allowed[j] and len(s) > 1:
            cum = np.cumsum(s, axis=0)[:-1]
            gains.append(trees.split_gains(cum[:, 0], cum[:, 1], np.rint(cum[:, 2]), G, H, C, p))
            keys += [("", (j, t)) for t in range(len(cum))]
            lefts.append(cum[:, :2])
    for party, by_node in cands.items():
        ids, stats = by_node[nid]
        gains.append(trees.split_gains(stats[:, 1 + 2 * k], stats[:, 2 + 2 * k],
                                       np.rint(stats[:, 0]), G, H, C, p))
        keys += [(party, int(i)) for i in ids]
        lefts.append(stats[:, [1 + 2 * k, 2 + 2 * k]])
    if not keys:
        return None
    flat = np.concatenate(gains)
    i = trees.first_best(flat)
    if not flat[i] > 0:
        return None
    owner, split = keys[i]
    left = np.concatenate(lefts)[i]
    return float(flat[i]), owner or data.name, split, [float(left[0]), float(left[1])]


def done_messages(ctx: PartyContext, st: Any) -> list[Outgoing]:
    return [Outgoing(p, "sbt/layer", "done", [], {"done": True}, st.t) for p in ctx.passives]


def active_results(ctx: PartyContext, st: Any, data: ActiveData) -> dict[str, Any]:
    """The model card (trees with A's splits and every leaf weight), metrics and history."""
    from vfl_cli import metrics as m

    p, test = data.params, data.test
    scores = trees.predict_proba(st.raw[test], p.objective)
    y = data.y[test]
    if not len(test):
        met: dict[str, Any] = {}
    elif p.objective == "binary":
        met = m.classification_metrics(y, scores)
    elif p.objective == "multiclass":
        met = m.multiclass_metrics(y.astype(int), scores)
    else:
        met = m.regression_metrics(y, scores)
    card = {"protocol": "secureboost", "job": ctx.job, "party": ctx.name,
            "alignment": ctx.params["alignment"], "params": dict(ctx.params),
            "features": data.features, "objective": p.objective, "classes": st.classes,
            "base": list(st.base), "rounds": st.forest, "binning": data.binning.to_json(),
            "split_counts": st.splits, "gain_importance": st.gains}
    out: dict[str, Any] = {"model": card, "metrics": {"test": met}, "history": st.history,
                           "rounds": len(st.forest)}
    if p.objective == "binary" and len(test):
        out["test_scores"] = st.raw[test, 0].tolist()
    return out


# ----- the passive party's steps --------------------------------------------------------------
@dataclass(frozen=True)
class LayerMessage:
    """``sbt/layer`` as the passive party reads it, every field checked."""

    round_no: int
    layer: int
    hist: bool
    first: bool
    frontier: list[int]
    splits: list[list[int]]
    classes: int
    g_bits: int
    grow_rows: int
    depth: int
    node: np.ndarray
    sample: np.ndarray
    #: the splits are the last ones of the round before (``node`` is that round's), riding with
    #: this round's first layer and gradients (with their left variants, ``gh_left``)
    merged: bool = False

    @property
    def splits_round(self) -> int:
        return self.round_no - 1 if self.merged else self.round_no

    @classmethod
    def decode(cls, art: Artifact, n: int, depth: int) -> LayerMessage:
        meta = art.meta

        def num(key: str, low: int, high: int) -> int:
            v = meta.get(key)
            if not whole(v, low, high):
                raise InvalidArtifact(f"sbt/layer from {art.sender}: {key} must be a whole "
                                      f"number in {low}..{high}, not {v!r:.40}")
            return v

        size = tree_size(depth)
        classes = num("classes", 1, 64)
        frontier = meta.get("frontier")
        splits = meta.get("splits")
        ok = (isinstance(frontier, list) and all(isinstance(v, int) for v in frontier)
              and isinstance(splits, list) and all(
                  isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) for v in s)
                  for s in splits) and all(0 <= v < size * classes for v in frontier)
              and isinstance(meta.get("hist"), bool) and isinstance(meta.get("first"), bool)
              and isinstance(meta.get("merged", False), bool))
        merged = bool(meta.get("merged", False))
        ok = ok and (not merged or (meta.get("first") is True and bool(splits)))
        node, sample = typed_array(art, "node", "iu"), typed_array(art, "sample", "biu")
        if not ok or node.shape != (n, classes) or sample.shape != (n,) or num("depth", 1, 8) \
                != depth:
            raise InvalidArtifact(f"sbt/layer from {art.sender}: malformed (nodes, splits or "
                                  f"row arrays do not fit {n} rows and depth {depth})")
        return cls(num("round_no", 0, 10**6), num("layer", 0, 8), meta["hist"], meta["first"],
                   list(frontier or []), list(splits or []), classes, num("g_bits", 0, 64), num("grow_rows", 1, 10**9),
                   depth, node.astype(np.int64), sample.astype(bool), merged)


def apply_own_splits(st: Any, msg: LayerMessage, data: PartyData
                     ) -> tuple[np.ndarray, np.ndarray, list[list[Any]]]:
    """This party's won splits applied: (nodes after them, left bits, model with them)."""
    node, size = msg.node.copy(), tree_size(msg.depth)
    bits, model = [], list(st.model)
    for nid, opaque in msg.splits:
        entry = st.lookup.get(str(opaque))
        if entry is None or entry[0] != nid:
            raise InvalidArtifact(f"sbt/layer from the active party names split {opaque} for "
                                  f"node {nid}, which this party did not offer")
        _, col, b = entry
        k, i = divmod(nid, size)
        rows = np.flatnonzero(node[:, k] == nid)
        left = data.Xb[rows, col] <= b
        node[rows[left], k], node[rows[~left], k] = nid + i + 1, nid + i + 2
        bits.append(left.astype(np.uint8))
        model.append([msg.splits_round, nid, data.features[col], int(b)])
    return node, (np.concatenate(bits) if bits else np.zeros(0, np.uint8)), model


def choose_left(msg: LayerMessage, held_node: np.ndarray, node: np.ndarray,
                E: paillier.EncryptedArray, alt: paillier.EncryptedArray, sender: str
                ) -> paillier.EncryptedArray:
    """The new round's row ciphertexts: for every sampled row that one of this party's last
    splits sent left, its ``gh_left`` ciphertext of the way it went (:func:`held_variants`)
    instead of its ``gh`` one (merged hand-off)."""
    size = tree_size(msg.depth)
    rows, _ = held_variants(held_node, msg.splits, msg.sample, size)
    if alt.size != len(rows):
        raise InvalidArtifact(f"sbt/layer from {sender}: {alt.size} left-variant ciphertexts "
                              f"for {len(rows)} variants of the sampled rows of the held nodes")
    first = np.full(len(msg.sample), -1)
    first[rows[::-1]] = np.arange(len(rows))[::-1]  # each row's first variant
    taken = taken_masks(held_node, msg.splits, msg.sample, size, node)
    pos = np.full(len(msg.sample), -1)
    pos[np.flatnonzero(msg.sample)] = np.arange(int(msg.sample.sum()))
    cts, alts = list(E.raw_ciphertexts()), alt.raw_ciphertexts()
    for r in np.flatnonzero(taken).tolist():
        cts[pos[r]] = alts[first[r] + int(taken[r]) - 1]
    return paillier.EncryptedArray(E.public, cts, E.shape, E.exponent)


def node_bins(st: Any, msg: LayerMessage, data: PartyData, node: np.ndarray,
              E: paillier.EncryptedArray) -> dict[int, paillier.EncryptedArray]:
    """Encrypted bin sums of every frontier node: the smaller child built, its sibling derived.

    The nodes to build are summed in one pass (one modular product per row and column).
    """
    size, total = tree_size(msg.depth), int(data.n_bins.sum())
    offsets = np.concatenate([[0], np.cumsum(data.n_bins)[:-1]])
    srows = np.flatnonzero(msg.sample)
    pos = np.full(data.n, -1)
    pos[srows] = np.arange(len(srows))
    members = {nid: srows[node[srows, nid // size] == nid] for nid in msg.frontier}
    parents = _stored_bins(st, E.public, total)
    build, derive = [], []
    for nid in msg.frontier:
        k, i = divmod(nid, size)
        sib = nid + 1 if i % 2 else nid - 1
        parent = k * size + (i - 1) // 2
        if i and parent in parents and sib in members:
            mine, theirs = len(members[nid]), len(members[sib])
            if mine > theirs or (mine == theirs and i % 2 == 0):
                derive.append((nid, parent, sib))
                continue
        build.append(nid)
    rows = np.concatenate([members[nid] for nid in build]) if build else np.zeros(0, np.int64)
    block = np.concatenate([np.full(len(members[nid]), i) for i, nid in enumerate(build)]
                           ) if build else np.zeros(0, np.int64)
    index = block[:, None] * total + offsets[None, :] + data.Xb[rows]
    sums = hg.bin_sums(E[pos[rows]], index, total * len(build))
    out = {nid: sums[np.arange(i * total, (i + 1) * total)] for i, nid in enumerate(build)}
    for nid, parent, sib in derive:
        out[nid] = hg.subtract(parents[parent], out[sib])
    return out


def _stored_bins(st: Any, public: Any, total: int) -> dict[int, paillier.EncryptedArray]:
    if st.bins is None or not st.bins_nodes:
        return {}
    allb = hg.from_own_state(public, st.bins.tobytes(), len(st.bins_nodes) * total)
    return {nid: allb[np.arange(i * total, (i + 1) * total)] for i, nid in
            enumerate(st.bins_nodes)}


def build_candidates(ctx: PartyContext, st: Any, msg: LayerMessage, data: PartyData,
                     node: np.ndarray, public: Any) -> tuple[Any, ...]:
    """Shuffled, packed cumulative sums of every frontier node under fresh opaque ids.

    Only candidates that can split are sent (:func:`_splittable`); the rest would have no gain.
    """
    E = hg.from_own_state(public, st.gh.tobytes(), st.gh_rows)
    layout = hg.RowLayout(msg.classes, 40, msg.g_bits, msg.grow_rows)
    bins = node_bins(st, msg, data, node, E)
    party = 1 + ctx.passives.index(ctx.name)
    allowed = trees.column_sample(data.params, msg.round_no, party, len(data.features))
    offsets = np.concatenate([[0], np.cumsum(data.n_bins)[:-1]])
    cols = np.flatnonzero(allowed)
    groups = [(int(offsets[j]), int(data.n_bins[j])) for j in cols]
    keys = [(int(j), b) for j in cols for b in range(int(data.n_bins[j]) - 1)]
    chunks, ids_all, counts = [], [], []
    lookup: dict[str, list[int]] = {}
    shuffle = random.SystemRandom()  # the order and the ids: this party's CSPRNG only
    srows = np.flatnonzero(msg.sample)
    size = tree_size(msg.depth)
    for nid in msg.frontier:
        cum = hg.cumulative(bins[nid], groups, layout.bits)
        rows = srows[node[srows, nid // size] == nid]
        order = np.flatnonzero(_splittable(data, rows, cols)).tolist()
        shuffle.shuffle(order)
        ids = _fresh_ids(len(order), lookup)
        for opaque, o in zip(ids, order, strict=True):
            lookup[str(opaque)] = [nid, keys[o][0], keys[o][1]]
        chunks.append(cum[np.array(order, dtype=np.int64)])
        ids_all.append(np.array(ids, dtype=np.int64))
        counts.append(len(order))
    cands = paillier.concatenate(chunks)
    packed = hg.pack_sums(cands, value_bits=layout.bits)
    kept = paillier.concatenate([bins[nid] for nid in msg.frontier])
    return (packed, np.concatenate(ids_all), np.array(counts, dtype=np.int64), lookup,
            np.frombuffer(kept.to_bytes(), dtype=np.uint8), list(msg.frontier))


def _splittable(data: PartyData, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Of every candidate ``(column, bin)`` of ``cols`` (in :func:`build_candidates`' order),
    whether it can split the node's sampled ``rows``: both sides keep ``min_samples_leaf``
    rows, and the bin below holds a row of the node (else the candidate's sums are those of
    the one before it, which wins the tie: the plaintext reference's first candidate).

    This party counts its own rows of the node (it knows the node's rows and the sample); the
    active party reads the same counts from the sums it decrypts, so leaving these candidates
    out tells it nothing new, and packing and decryption shrink with them.
    """
    least, total = data.params.min_samples_leaf, len(rows)
    out = []
    for j in cols.tolist():
        left = np.cumsum(np.bincount(data.Xb[rows, j], minlength=int(data.n_bins[j])))[:-1]
        fresh = np.r_[left[:1] > 0, left[1:] > left[:-1]]
        out.append((left >= least) & (total - left >= least) & fresh)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def _fresh_ids(count: int, taken: Mapping[str, Any]) -> list[int]:
    out: set[int] = set()
    while len(out) < count:
        v = secrets.randbits(62)
        if str(v) not in taken:
            out.add(v)
    return list(out)


def passive_results(ctx: PartyContext, st: Any, data: PartyData) -> dict[str, Any]:
    """This party's model part: its splits (round, node, column, bin, readable threshold)."""
    splits = []
    for round_no, nid, col, b in st.model:
        labels = data.binning.column(col).labels
        splits.append({"round": round_no, "node": nid, "feature": col, "bin": b,
                       "left": "bins " + ", ".join(labels[: b + 1])})
    card = {"protocol": "secureboost", "job": ctx.job, "party": ctx.name,
            "alignment": ctx.params["alignment"], "params": dict(ctx.params),
            "features": data.features, "splits": splits, "binning": data.binning.to_json()}
    return {"model": card, "splits": len(splits)}
