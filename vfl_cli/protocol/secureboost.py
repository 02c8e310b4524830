"""Hetero gradient boosting over files (``secureboost``; Cheng et al. 2019, "SecureBoost").

Who holds what: the active party A holds the labels and its columns, passive parties P_j their
columns. Every party bins its own columns on the training rows (quantile bins, missing values
in bin 0, :mod:`vfl_cli.models.binning`); cut points never leave the party. Rows are those of a
finished ``psi`` job, split into train / validation / test by the public seed.

Per boosting round (one tree per class), layer by layer (one exchange per layer):

1. ``sbt/layer`` A -> P_j: the node of every aligned row in each tree (``-1``: a finished
   leaf), the row sample, the nodes to build histograms for, the splits of the last layer
   that P_j won (node and opaque id only) and, on the first layer of a round, ``gh``: one
   ciphertext per sampled training row under A's key packing the row's count, gradients and
   hessians of every class in fixed point (:class:`vfl_cli.crypto.histogram.RowLayout`).
2. ``sbt/reply`` P_j -> A: the left/right assignment of the rows of each node it split, and
   for each node asked, the cumulative bin sums of every (allowed) column, in a shuffled order
   under fresh opaque ids from P_j's CSPRNG, many per ciphertext (``pack``, re-randomised); only
   candidates that can split the node (``sbt_data._splittable``). P_j builds the smaller
   child's bin sums (:func:`vfl_cli.crypto.histogram.bin_sums`) and derives the sibling by
   subtraction from the parent's, kept in its state.

A decrypts, adds its own plaintext candidates, computes the gains, and picks the best split
per node over all parties; a passive split is known to A by its opaque id only, and P_j keeps
(column, bin) in its state. Leaf weights live with A only. The first ``active_trees`` rounds use
A's columns only (no message at all), on top of the ``trees`` rounds with every party.

What each party learns (semi-honest; figures in docs/protocols/secureboost.md):

* A: per node and candidate of every passive party, the sums of gradients, hessians and row
  counts on the left side (SecureBoost's inherent leak); the instance space (left/right
  rows) of every split, its own and the passive parties'; the number of candidates per party
  and node.
* P_j: the instance space of every node (which aligned rows share a node in each tree, all
  rows: train, validation and test); the row sample; which of its candidates won (its own
  splits). Gradients only encrypted under A's key.
* Everyone: row counts, column counts via candidate counts, the public parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member, ndarray_member
from vfl_cli.crypto.histogram import RowLayout, encrypt_rows
from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.models import trees
from vfl_cli.protocol import sbt_data as sd
from vfl_cli.protocol.base import (
    Choice,
    Expect,
    Float,
    Int,
    JobRef,
    Outgoing,
    PartyContext,
    Seed,
)
from vfl_cli.protocol.kit import KitProtocol, PartyState, Phase, Step, check_round, nothing
from vfl_cli.protocol.wire import enc_member, expect_meta_count, packed_member, read_enc, sent_digests

__all__ = ["LAYER", "REPLY", "SecureBoost"]

LAYER = "sbt/layer"
REPLY = "sbt/reply"
#: Fixed-point bits of transmitted gradients (resolution 2^-40).
PRECISION = 40
#: Left-variant ciphertexts a merged hand-off may always carry: about 1 s of encryption at
#: 2048 bits, what the two vfl processes of a separate exchange cost.
MERGE_VARIANTS = 8192


# ----- states ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActiveState(PartyState):
    t: int = 0  # exchanges so far: the artifact round
    round_no: int = 0
    layer: int = 0
    classes: int = 1
    g_bits: int = 0
    base: list[float] = field(default_factory=list)
    raw: np.ndarray | None = None  # scores, aligned rows x classes
    g: np.ndarray | None = None
    h: np.ndarray | None = None
    node: np.ndarray | None = None  # aligned rows x classes; -1: in a finished leaf
    sample: np.ndarray | None = None
    frontier: list[int] = field(default_factory=list)
    pending: dict[str, list[list[int]]] = field(default_factory=dict)  # party -> [node, id]
    asked_hist: bool = False
    forest: list[list[dict[str, Any]]] = field(default_factory=list)  # round -> nodes
    history: list[dict[str, float]] = field(default_factory=list)
    best: list[float] = field(default_factory=list)  # [best valid loss, round]
    splits: dict[str, int] = field(default_factory=dict)
    gains: dict[str, float] = field(default_factory=dict)
    goss_seed: int = 0  # GOSS's draws: a secret of this party (never a public seed)
    # this party's binned rows, kept from its first step (sbt_data.PartyData.cache)
    xb: np.ndarray | None = None
    rowset: np.ndarray | None = None  # [#grow, #valid, grow..., valid..., test...]
    binning: dict[str, Any] = field(default_factory=dict)
    y: np.ndarray | None = None
    # the merged hand-off (one passive party, one tree per round): the last layer's passive
    # splits go out with the next round's gradients, both variants for their rows
    pending_sums: dict[str, list[float]] = field(default_factory=dict)  # node -> [G_L, H_L]
    held: dict[str, list[float]] = field(default_factory=dict)  # node -> [left, right] values
    held_node: np.ndarray | None = None  # the held round's nodes
    held_pending: dict[str, list[list[int]]] = field(default_factory=dict)
    g_alt: np.ndarray | None = None  # the new round's g, h per (row, mask) of sd.held_variants
    h_alt: np.ndarray | None = None
    #: digests of this round's ``gh`` ciphertexts: a reply holding any of them is refused
    sent: np.ndarray | None = None


@dataclass(frozen=True)
class PassiveState(PartyState):
    t: int = 0
    gh: np.ndarray | None = None  # this round's row ciphertexts (bytes)
    gh_rows: int = 0
    layout: list[int] = field(default_factory=list)  # classes, g_bits, rows
    bins: np.ndarray | None = None  # bin sums of the last frontier (bytes)
    bins_nodes: list[int] = field(default_factory=list)
    lookup: dict[str, list[int]] = field(default_factory=dict)  # opaque id -> [node, col, bin]
    model: list[list[Any]] = field(default_factory=list)  # [round, node, column, bin]
    xb: np.ndarray | None = None  # this party's binned rows (sbt_data.PartyData.cache)
    rowset: np.ndarray | None = None
    binning: dict[str, Any] = field(default_factory=dict)


def _tree_size(depth: int) -> int:
    return sd.tree_size(depth)


# ----- the active party -----------------------------------------------------------------------
def _begin_round(ctx: PartyContext, st: ActiveState, data: sd.ActiveData) -> ActiveState:
    p = data.params
    g, h = trees.gradients(data.y_grow, st.raw[data.grow], p.objective)  # type: ignore[index]
    w = trees.row_weights(p, st.round_no, g, st.goss_seed)  # plain sampling or GOSS
    g, h = g * w[:, None], h * w[:, None]
    G = np.zeros_like(st.raw)
    H = np.zeros_like(st.raw)
    G[data.grow], H[data.grow] = g, h
    sample = np.zeros(data.n, dtype=bool)
    sample[data.grow[w > 0]] = True
    node = np.zeros((data.n, st.classes), dtype=np.int64)
    roots = [k * _tree_size(p.depth) for k in range(st.classes)]
    node += np.array(roots)
    forest = [*st.forest, [{"id": r, "owner": None, "value": None} for r in roots]]
    return st.but(g=G, h=H, g_bits=sd.g_bits(np.vstack([g, h])), sample=sample, node=node,
                  layer=0, frontier=roots, pending={}, forest=forest)


def _local_only(ctx: PartyContext, st: ActiveState, data: sd.ActiveData) -> bool:
    return st.round_no < data.params_raw["active_trees"] or not ctx.passives


def _active_drive(ctx: PartyContext, st: ActiveState, data: sd.ActiveData) -> Step[ActiveState]:
    """Run until a message must go out (or the job is done)."""
    while True:
        if st.layer == 0 and not st.frontier and not st.pending:
            if sd.should_stop(st, data):
                return Step.finish(st, sd.active_results(ctx, st, data))
            st = _begin_round(ctx, st, data)
            if not _local_only(ctx, st, data):
                return _send_layer(ctx, st, data, first=True)
        if _local_only(ctx, st, data):
            st = _decide(ctx, st, data, {})
            continue
        if not st.frontier and st.pending and _can_merge(ctx, st, data):
            return _send_merged(ctx, st, data)
        return _send_layer(ctx, st, data, first=False)


def _can_merge(ctx: PartyContext, st: ActiveState, data: sd.ActiveData) -> bool:
    """One passive party, no GOSS (its sample follows the gradients), a next round to carry the
    splits, and not too many left variants (a row held in ``m`` class trees needs ``2^m - 1``):
    at most one per training row or :data:`MERGE_VARIANTS`."""
    if len(ctx.passives) != 1 or data.params.goss_top or st.round_no + 1 >= sd.total_rounds(data):
        return False
    pending = st.pending.get(ctx.passives[0], [])
    count = sd.variant_count(st.node, pending, data.grow, _tree_size(data.params.depth))  # type: ignore[arg-type]
    return count <= max(len(data.grow), MERGE_VARIANTS)


def _send_merged(ctx: PartyContext, st: ActiveState, data: sd.ActiveData) -> Step[ActiveState]:
    """The round's last passive splits with the next round's first layer: ``gh`` as if every
    held row went right, ``gh_left`` as if it went left; the passive party picks."""
    st = _begin_round(ctx, sd.close_round(st, data), data)
    rows, masks = sd.held_variants(st.held_node, st.held_pending[ctx.passives[0]], st.sample,  # type: ignore[arg-type]
                                   _tree_size(data.params.depth))
    gl, hl = sd.left_variants(st, data, rows, masks)
    st = st.but(g_alt=gl, h_alt=hl, g_bits=max(st.g_bits, sd.g_bits(np.vstack([gl, hl]))))
    return _send_layer(ctx, st, data, first=True, left_rows=rows)


def _send_layer(ctx: PartyContext, st: ActiveState, data: sd.ActiveData, *, first: bool,
                left_rows: np.ndarray | None = None) -> Step[ActiveState]:
    """``sbt/layer`` to every passive party: its splits, the rows' nodes, what to build."""
    p = data.params
    several = sum(1 for v in st.pending.values() if v) > 0 and len(ctx.passives) > 1
    hist = bool(st.frontier) and not several
    layout = RowLayout(st.classes, PRECISION, st.g_bits, len(data.grow))
    members: list[Member] = []
    if first:
        rows = np.flatnonzero(st.sample)  # type: ignore[arg-type]
        plains = layout.encode(layout.quantise(st.g[rows]), layout.quantise(st.h[rows]))  # type: ignore[index]
        if left_rows is not None and st.g_alt is not None and st.h_alt is not None:
            plains += layout.encode(layout.quantise(st.g_alt), layout.quantise(st.h_alt))
        priv = ctx.private_key()
        enc = encrypt_rows(priv.public, plains, private=priv)
        members.append(enc_member("gh", enc[np.arange(len(rows))]))
        if left_rows is not None:
            members.append(enc_member("gh_left", enc[np.arange(len(rows), enc.size)]))
        # A decrypts only sums a passive party built, never these ciphertexts sent back
        st = st.but(sent=sent_digests([m.data for m in members], priv.public.width))
    out = []
    for party in ctx.passives:
        meta = {"round_no": st.round_no, "layer": st.layer, "hist": hist,
                "frontier": st.frontier if hist else [],
                "splits": (st.held_pending if left_rows is not None else st.pending).get(party, []),
                "classes": st.classes, "g_bits": st.g_bits, "grow_rows": len(data.grow),
                "depth": p.depth, "first": first, "done": False, "merged": left_rows is not None}
        node = st.held_node if left_rows is not None else st.node
        arrays = [ndarray_member("node", node.astype(np.int32)),  # type: ignore[union-attr]
                  ndarray_member("sample", st.sample.astype(np.uint8))]  # type: ignore[union-attr]
        out.append(Outgoing(party, LAYER, "layer", [*members, *arrays], meta, st.t))
    return Step(st.but(asked_hist=hist), "wait-replies", out)


def _on_replies(ctx: PartyContext, st: ActiveState, received: Mapping[str, Artifact]
                ) -> Step[ActiveState]:
    data = sd.ActiveData(ctx, st)
    priv = ctx.private_key()
    layout = RowLayout(st.classes, PRECISION, st.g_bits, len(data.grow))
    node = st.node.copy()  # type: ignore[union-attr]
    held = st.held_node.copy() if st.held_node is not None else None
    size = _tree_size(data.params.depth)
    cands: dict[str, Any] = {}
    for party in ctx.passives:
        art = received[party]
        if art.kind != REPLY:
            raise InvalidArtifact(f"expected {REPLY} from {party}, got {art.kind}")
        check_round(art, st.t)
        if held is not None:  # the assignment is the held round's
            held = sd.apply_assignments(art, st.held_pending.get(party, []), held, size)
        else:
            node = sd.apply_assignments(art, st.pending.get(party, []), node, size)
        if st.asked_hist:
            cands[party] = sd.read_candidates(art, priv, layout, st.frontier, st.sent)
    st = st.but(node=node, pending={}, t=st.t + 1)
    if held is not None:
        st = sd.settle_round(st, data, held)
        if sd.should_stop(st, data):  # early stopping: the round just begun is dropped
            st = st.but(forest=st.forest[:-1])
            return Step.finish(st, sd.active_results(ctx, st, data))
    if not st.asked_hist:
        if st.frontier:  # several passive parties: now every one knows the nodes
            return _send_layer(ctx, st, data, first=False)
        st = sd.finish_round(st, data)
        return _active_drive(ctx, st, data)
    st = _decide(ctx, st, data, cands)
    return _active_drive(ctx, st, data)


def _decide(ctx: PartyContext, st: ActiveState, data: sd.ActiveData,
            cands: Mapping[str, Any]) -> ActiveState:
    """Best split of every frontier node over all parties; A's own splits applied at once."""
    p = data.params
    size = _tree_size(p.depth)
    node, forest = st.node.copy(), [dict(n) for n in st.forest[-1]]  # type: ignore[union-attr]
    pending: dict[str, list[list[int]]] = {}
    pending_sums: dict[str, list[float]] = {}
    nxt: list[int] = []
    splits, gains = dict(st.splits), dict(st.gains)
    allowed = trees.column_sample(p, st.round_no, 0, data.Xb.shape[1])
    for nid in st.frontier:
        k, i = divmod(nid, size)
        rows = np.flatnonzero((node[:, k] == nid) & st.sample)
        best = sd.best_over_parties(data, st, rows, k, nid, allowed, cands)
        if best is None:
            continue
        gain, owner, split, left_sums = best
        left, right = nid + i + 1, nid + i + 2
        forest.append({"id": left, "owner": None, "value": None})
        forest.append({"id": right, "owner": None, "value": None})
        entry = next(n for n in forest if n["id"] == nid)
        entry["owner"], entry["gain"] = owner, gain  # the gain: the report's importances
        splits[owner] = splits.get(owner, 0) + 1
        gains[owner] = gains.get(owner, 0.0) + gain
        if owner == ctx.name:
            entry["split"] = [data.features[split[0]], int(split[1])]
            at = np.flatnonzero(node[:, k] == nid)
            goes = data.Xb[at, split[0]] <= split[1]
            node[at[goes], k], node[at[~goes], k] = left, right
        else:
            pending.setdefault(owner, []).append([nid, int(split)])
            pending_sums[str(nid)] = left_sums
        if st.layer + 1 < p.depth:
            nxt += [left, right]
    forest_all = [*st.forest[:-1], forest]
    st = st.but(node=node, forest=forest_all, pending=pending, pending_sums=pending_sums, frontier=nxt,
                layer=st.layer + 1, splits=splits, gains=gains)
    if not pending and not nxt:
        st = sd.finish_round(st, data)
    return st


# ----- the passive party ----------------------------------------------------------------------
def _passive_layer(ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]
                   ) -> Step[PassiveState]:
    art = received[ctx.active]
    if art.kind != LAYER:
        raise InvalidArtifact(f"expected {LAYER} from {ctx.active}, got {art.kind}")
    check_round(art, st.t)
    data = sd.PassiveData(ctx, st)
    if st.xb is None:
        st = st.but(**data.cache())
    msg = sd.LayerMessage.decode(art, data.n, data.params.depth)
    expect_meta_count(art, "grow_rows", len(data.grow))  # both parties draw the same split
    public = ctx.public_key(ctx.active)
    node, assign, model = sd.apply_own_splits(st, msg, data)
    if msg.first:
        enc = read_enc(art, "gh", public, rows=int(msg.sample.sum()))
        if msg.merged:  # the held round's splits are applied: this round starts at the roots
            enc = sd.choose_left(msg, msg.node, node, enc, read_enc(art, "gh_left", public),
                                 art.sender)
            size = _tree_size(msg.depth)
            node = np.zeros_like(node) + np.arange(msg.classes)[None, :] * size
        st = st.but(gh=np.frombuffer(enc.to_bytes(), dtype=np.uint8), gh_rows=enc.size,
                    layout=[msg.classes, msg.g_bits, msg.grow_rows], bins=None, bins_nodes=[])
    members = [ndarray_member("assign", assign)]
    lookup: dict[str, list[int]] = {}
    bins, bins_nodes = st.bins, st.bins_nodes
    if msg.hist:
        packed, ids, counts, lookup, bins, bins_nodes = sd.build_candidates(
            ctx, st, msg, data, node, public)
        members += [packed_member("cands", packed), ndarray_member("ids", ids),
                    ndarray_member("counts", counts)]
    reply = Outgoing(ctx.active, REPLY, "reply", members, {"hist": msg.hist}, st.t)
    new = st.but(t=st.t + 1, lookup=lookup, bins=bins, bins_nodes=bins_nodes, model=model)
    return Step(new, "wait-layer", [reply])


def _passive_done(ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]
                  ) -> Step[PassiveState]:
    data = sd.PassiveData(ctx, st)
    return Step.finish(st, sd.passive_results(ctx, st, data))


def _layer_from_active(ctx: PartyContext, st: Any) -> list[Expect]:
    return [Expect(ctx.active, LAYER)]


def _replies(ctx: PartyContext, st: Any) -> list[Expect]:
    return [Expect(p, REPLY) for p in ctx.passives]


def _active_start(ctx: PartyContext, st: ActiveState, received: Any) -> Step[ActiveState]:
    data = sd.ActiveData(ctx)
    st = sd.start_state(st, data)
    step = _active_drive(ctx, st, data)
    if step.results is not None and ctx.passives:
        return Step.finish(step.state, step.results, sd.done_messages(ctx, step.state))
    return step


def _active_replies(ctx: PartyContext, st: ActiveState, received: Mapping[str, Artifact]
                    ) -> Step[ActiveState]:
    step = _on_replies(ctx, st, received)
    if step.results is not None:
        return Step.finish(step.state, step.results, [*step.out, *sd.done_messages(ctx, step.state)])
    return step


def _passive_next(ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]
                  ) -> Step[PassiveState]:
    art = received[ctx.active]
    if art.kind == LAYER and art.meta.get("done") is True:
        check_round(art, st.t)
        return _passive_done(ctx, st, received)
    return _passive_layer(ctx, st, received)


class SecureBoost(KitProtocol[Any]):
    name = "secureboost"
    states = {"active": ActiveState, "passive": PassiveState}
    params_spec = {
        "alignment": JobRef(note="the psi job whose rows to train on"),
        "objective": Choice("binary", *trees.OBJECTIVES),
        "classes": Int(0, 0, 64, note="multiclass: number of classes (0: from the labels)"),
        "trees": Int(10, 1, 1000, note="boosting rounds with every party's columns (one tree per "
                     "class each), after the active_trees rounds"),
        "depth": Int(3, 1, 8),
        "max_bins": Int(32, 3, 256, note="the missing bin included"),
        "learning_rate": Float(0.1, 0.0, 1.0, open_low=True),
        "l2": Float(0.0, 0.0, 1e6),
        "min_child_weight": Float(1e-3, 0.0, 1e6),
        "min_samples_leaf": Int(20, 1, 1_000_000),
        "subsample": Float(1.0, 0.0, 1.0, open_low=True, note="plain row subsampling per round"),
        "goss_top": Float(0.0, 0.0, 1.0, open_high=True,
                          note="GOSS: share of rows kept by largest gradient (0: off)"),
        "goss_other": Float(0.1, 0.0, 1.0, open_low=True,
                            note="GOSS: share drawn from the other rows, up-weighted"),
        "colsample": Float(1.0, 0.0, 1.0, open_low=True, note="each party its own columns"),
        "active_trees": Int(1, 0, 1000, note="rounds from the active party's columns only, first "
                            "and on top of trees"),
        # feature selection (vfl_cli.woe_select, applied by vfl_cli.columns.job_columns): each
        # party keeps its own columns by its own IV; which ones stays in its job.json
        "binning": JobRef("a finished woe-binning job: each party selects its columns by IV", optional=True),
        "select_iv": Float(0.0, 0.0, 100.0, note="with binning: each party keeps its columns of IV >= this"),
        "select_top": Int(0, 0, 100_000, note="with binning: each party keeps its top k columns by IV; 0: all"),
        "validation_fraction": Float(0.0, 0.0, 0.5, note="of the training rows"),
        "early_stopping_rounds": Int(0, 0, 1000, note="0: off"),
        "test_fraction": Float(0.2, 0.0, 1.0, open_high=True),
        "seed": Seed(),
    }

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]
                     ) -> dict[str, Any]:
        out = super().check_params(params, parties)
        if out["early_stopping_rounds"] and not out["validation_fraction"]:
            raise VflError("secureboost early_stopping_rounds needs validation_fraction > 0")
        if out["goss_top"] and (out["subsample"] < 1 or out["goss_top"] + out["goss_other"] > 1):
            raise VflError("secureboost goss_top needs subsample = 1 and goss_top + goss_other <= 1")
        if (out["select_iv"] or out["select_top"]) and not out.get("binning"):
            raise VflError("secureboost select_iv / select_top need binning=JOB, a finished "
                           "woe-binning job on the same alignment")
        return out

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _active_start),
            ("active", "wait-replies"): Phase(_replies, _active_replies),
            ("passive", "start"): Phase(_layer_from_active, _passive_next),
            ("passive", "wait-layer"): Phase(_layer_from_active, _passive_next),
        }
