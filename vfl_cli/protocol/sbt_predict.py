"""``secureboost-predict``: scoring aligned rows with a finished SecureBoost model.

Parameters: ``model`` (a finished ``secureboost`` job whose parts every party holds) and
``alignment`` (a finished ``psi`` job over the rows to score, possibly on new data files); for
a binary model also the public points scaling (``base_score``, ``pdo``, ``odds``), as ``predict``.

One message, ``sbt/routes`` P -> A, from each passive party P. P bins its aligned rows with the
cut points of its own model part and routes them through its own splits only: for each of its
split nodes ``(round, node)`` it sends one bit per row, ``reach`` (P's own splits above that node
send the row towards it) and one bit ``left`` (the row goes left there; 0 where ``reach`` is 0).
P sends no column, threshold or bin: the active party knows P's nodes only as nodes of its
trees that P owns. A routes the rows through every tree, its own splits with its own bins, P's
splits with P's bits (a row that reaches a node of P must have ``reach`` set there, else the
reply is refused), adds its leaf weights to its start scores and keeps the scores.

What each party learns: A learns the scores and, for each row, the left/right decision of every
passive split that the row reaches through that party's own splits (every passive split whose
passive ancestors are on the row's side; on the row's actual path, all of them). Passive
parties receive nothing at all: no scores, no leaf weights, no other party's splits.

Written on the kit (:mod:`vfl_cli.protocol.kit`): typed states and messages, pure steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact
from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.models import trees
from vfl_cli.models.binning import Binning
from vfl_cli.models.features import aligned_rows, numeric_matrix
from vfl_cli.protocol.base import Expect, JobRef, PartyContext
from vfl_cli.protocol.kit import (
    KitProtocol,
    Message,
    PartyState,
    Phase,
    Step,
    finished_job,
    nothing,
)
from vfl_cli.protocol.predict import SCORING_PARAMS
from vfl_cli.protocol.registry import REGISTRY

__all__ = ["ROUTES", "Routes", "SbtPredict", "TreeModel", "passive_routes", "route_scores"]

NAME = "secureboost-predict"
ROUTES = "sbt/routes"


@dataclass(frozen=True)
class ActiveState(PartyState):
    scores: np.ndarray | None = None  # probabilities (binary: of class 1), or the regression value
    raw: np.ndarray | None = None  # raw scores, rows x classes
    points: np.ndarray | None = None  # binary models: each row's points


@dataclass(frozen=True)
class PassiveState(PartyState):
    pass


@dataclass(frozen=True)
class Routes(Message):
    """``sbt/routes``: P's split nodes and, per row, two bit planes over them (packed)."""

    kind = ROUTES
    nodes: list[Any]  # [[round, node], ...] in the order of the bit columns
    rows: int
    reach: np.ndarray  # np.packbits(rows x splits, axis=1)
    left: np.ndarray

    def bits(self, sender: str) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
        """``(nodes, reach, left)`` unpacked, every shape and value checked."""
        ok = all(isinstance(n, list) and len(n) == 2 and all(
            type(v) is int and v >= 0 for v in n) for n in self.nodes)
        nodes = [(int(n[0]), int(n[1])) for n in self.nodes] if ok else []
        width = (len(nodes) + 7) // 8
        if not ok or len(set(nodes)) != len(nodes) or any(
                a.dtype != np.uint8 or a.shape != (self.rows, width) for a in (self.reach, self.left)):
            raise InvalidArtifact(f"{ROUTES} from {sender}: malformed (nodes, or bit planes that "
                                  f"do not cover {self.rows} rows x {len(nodes)} splits)")
        reach, left = (np.unpackbits(a, axis=1, count=len(nodes)).astype(bool)
                       for a in (self.reach, self.left))
        if (left & ~reach).any():
            raise InvalidArtifact(f"{ROUTES} from {sender}: a left bit where the row cannot reach")
        return nodes, reach, left


@dataclass(frozen=True)
class TreeModel:
    """This party's part of a finished ``secureboost`` job, as its model card holds it."""

    job: str
    card: dict[str, Any]

    @property
    def depth(self) -> int:
        return int(self.card["params"]["depth"])

    @property
    def size(self) -> int:
        return (1 << (self.depth + 1)) - 1

    def binned(self, df: Any) -> np.ndarray:
        """The rows' bins with the model's own cut points (fitted on its training rows)."""
        return Binning.from_json(self.card["binning"]).transform(df)

    def column(self, name: str) -> int:
        return [c["name"] for c in self.card["binning"]["columns"]].index(name)


def tree_model(ctx: PartyContext) -> TreeModel:
    """This party's part of the ``model`` job (a finished job of a protocol this one scores)."""
    job = ctx.params["model"]
    scored = tuple(n for n, e in REGISTRY.items() if e.predictor == NAME)
    card = finished_job(ctx, job, scored)["results"].get("model")
    if not isinstance(card, dict) or "binning" not in card:
        raise VflError(f"job {job} holds no tree model part of {ctx.name}")
    return TreeModel(job, card)


def aligned(ctx: PartyContext) -> Any:
    alignment = ctx.params["alignment"]
    finished_job(ctx, alignment, ("psi",))
    return aligned_rows(ctx.data(alignment), ctx.job_arrays(alignment), ctx.id_column, alignment)


# ----- the passive party: its own splits only ---------------------------------------------------
def _towards(node: int, size: int) -> list[tuple[int, bool]]:
    """The ancestors of ``node`` (ids within its tree's block) and whether it is left of each."""
    base, i = divmod(node, size)
    out = []
    while i > 0:
        parent = (i - 1) // 2
        out.append((base * size + parent, i == 2 * parent + 1))
        i = parent
    return out


def passive_routes(model: TreeModel, Xb: np.ndarray) -> Routes:
    """For each own split ``(round, node)``: can each row reach it, and does it go left there."""
    splits = model.card["splits"]
    goes = {(int(s["round"]), int(s["node"])): Xb[:, model.column(s["feature"])] <= int(s["bin"])
            for s in splits}
    nodes = list(goes)
    reach = np.ones((len(Xb), len(nodes)), dtype=bool)
    for j, (r, nid) in enumerate(nodes):
        for anc, is_left in _towards(nid, model.size):
            if (r, anc) in goes:
                reach[:, j] &= goes[(r, anc)] if is_left else ~goes[(r, anc)]
    left = np.stack([goes[n] for n in nodes], axis=1) if nodes else np.zeros((len(Xb), 0), bool)
    left &= reach
    return Routes([list(n) for n in nodes], len(Xb), _pack(reach), _pack(left))


def _pack(bits: np.ndarray) -> np.ndarray:
    """Rows x splits bits as bytes (8 splits a byte)."""
    if not bits.shape[1]:
        return np.zeros((len(bits), 0), np.uint8)
    return np.packbits(bits, axis=1)


# ----- the active party: every tree, its own bins, the passive parties' bits --------------------
def _owned(card: Mapping[str, Any], party: str) -> set[tuple[int, int]]:
    return {(r, int(n["id"])) for r, nodes in enumerate(card["rounds"]) for n in nodes
            if n["owner"] == party}


def route_scores(model: TreeModel, Xb: np.ndarray, me: str,
                 passive: Mapping[str, tuple[list[tuple[int, int]], np.ndarray, np.ndarray]]
                 ) -> np.ndarray:
    """Raw scores (rows x classes): start scores plus the leaf weight each row reaches per tree."""
    card, size, n = model.card, model.size, len(Xb)
    where = {(r, nid): (party, j) for party, (nodes, _, _) in passive.items()
             for j, (r, nid) in enumerate(nodes)}
    raw = np.tile(np.asarray(card["base"], dtype=float), (n, 1))
    for r, nodes in enumerate(card["rounds"]):
        at = np.tile(np.arange(raw.shape[1]) * size, (n, 1))
        for entry in sorted(nodes, key=lambda e: int(e["id"])):
            nid = int(entry["id"])
            k, i = divmod(nid, size)
            rows = np.flatnonzero(at[:, k] == nid)
            if entry["owner"] is None:
                raw[rows, k] += float(entry["value"])
                continue
            if entry["owner"] == me:
                left = Xb[rows, model.column(entry["split"][0])] <= int(entry["split"][1])
            else:
                party, j = where[(r, nid)]
                _, reach, bits = passive[party]
                if not reach[rows, j].all():
                    raise InvalidArtifact(f"{ROUTES} from {party}: rows that reach node {nid} of "
                                          f"round {r} are marked as unable to reach it")
                left = bits[rows, j]
            at[rows[left], k], at[rows[~left], k] = nid + i + 1, nid + i + 2
    return raw


def _metrics(y: np.ndarray, scores: np.ndarray, objective: str) -> dict[str, Any]:
    from vfl_cli import metrics as m

    if objective == "binary":
        return m.classification_metrics(y, scores)
    if objective == "multiclass":
        return m.multiclass_metrics(y.astype(int), scores)
    return m.regression_metrics(y, scores)


def scored(ctx: PartyContext, model: TreeModel, df: Any, scores: np.ndarray) -> dict[str, Any]:
    """The active party's results: row count, task and, when every row has a label, metrics."""
    objective = str(model.card["objective"])
    results: dict[str, Any] = {"rows": len(df), "model": model.job, "task": objective}
    label = ctx.label_column
    if label and label in df.columns and len(df):
        y = numeric_matrix(df, [label], what=ctx.name)[:, 0]
        results["labelled_rows"] = int((~np.isnan(y)).sum())
        if results["labelled_rows"] == len(y):
            results["metrics"] = {"test": _metrics(y, scores, objective)}
    return results


# ----- handlers: decode -> step -> encode --------------------------------------------------------
def _active_check(ctx: PartyContext, state: ActiveState, received: Any) -> Step[ActiveState]:
    tree_model(ctx).binned(aligned(ctx))  # checks model and alignment before any file arrives
    return Step(state, "wait-routes")


def _active_score(ctx: PartyContext, state: ActiveState, received: Mapping[str, Artifact]
                  ) -> Step[ActiveState]:
    model, df = tree_model(ctx), aligned(ctx)
    passive = {}
    for party in ctx.passives:
        msg = Routes.receive(received, party)
        nodes, reach, left = msg.bits(party)
        if msg.rows != len(df) or set(nodes) != _owned(model.card, party):
            raise InvalidArtifact(f"{ROUTES} from {party}: its split nodes or its {msg.rows} rows "
                                  f"do not match this party's model and {len(df)} aligned rows")
        passive[party] = (nodes, reach, left)
    raw = route_scores(model, model.binned(df), ctx.name, passive)
    objective = str(model.card["objective"])
    scores = trees.predict_proba(raw, objective)
    results = scored(ctx, model, df, scores)
    points = None
    if objective == "binary":
        from vfl_cli.scorecard import Scaling

        points = Scaling(ctx.params["base_score"], ctx.params["pdo"], ctx.params["odds"]).score(
            raw[:, 0])
    return Step.finish(state.but(scores=scores, raw=raw, points=points), results)


def _passive_send(ctx: PartyContext, state: PassiveState, received: Any) -> Step[PassiveState]:
    model = tree_model(ctx)
    msg = passive_routes(model, model.binned(aligned(ctx)))
    return Step.finish(state, {"rows": msg.rows, "splits": len(msg.nodes)},
                       [msg.to(ctx.active, "routes")])


def _routes(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(p, ROUTES) for p in ctx.passives]


class SbtPredict(KitProtocol[Any]):
    name = NAME
    states = {"active": ActiveState, "passive": PassiveState}
    params_spec = {"model": JobRef(note="the finished secureboost job"), **SCORING_PARAMS}

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _active_check),
            ("active", "wait-routes"): Phase(_routes, _active_score),
            ("passive", "start"): Phase(nothing, _passive_send),
        }
