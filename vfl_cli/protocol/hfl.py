"""Multi-node training over files (``hfl``): parameter server, delta updates, node weighting.

Who holds what: the **server** holds the master model and its own labelled rows, which it splits
(by the job's ``seed``) into *validation* rows (the Actor-Critic reward, and the column means
and deviations every party standardises with) and *test* rows (the metrics). Each **worker**
(node) holds training rows with the same feature columns and a label. **Predictors** hold rows
to score and a copy of the model. The pure cores are in :mod:`vfl_cli.hfl`; this module only
carries their values between parties as signed artifacts.

One round ``t`` (``round`` in every artifact; see ``docs/protocols/hfl.md``):

1. ``hfl/model`` server -> every worker: the master model ``m_t`` (float64). Round 0 also
   carries the feature column names, the model spec and the standardisation (column means and
   deviations of the server's validation rows); a worker refuses other columns than its own.
2. ``hfl/delta`` worker -> server: ``d_i = trained - m_t``, the sample count ``n_i`` and, for
   Actor-Critic weighting only, the statistics ``loss_before``, ``loss_after``, ``delta_norm``.
   Round 0 also carries the worker's column names (the server checks them too). By default
   (``secure_aggregation``) the delta is encrypted under the key of the first worker, the
   *aggregation key holder* H; in plaintext only when the job turns secure aggregation off.
   With DP-FedAvg (``dp_clip > 0``) the worker first clips its delta to that L2 norm and adds its
   share of Gaussian noise from its own CSPRNG (:mod:`vfl_cli.hfl.privacy`).
3. With secure aggregation (the default): ``hfl/sum-request`` server -> H: the weighted sum
   ``sum_i w_i [[d_i]]``, packed, masked with uniform randomness modulo ``n`` and re-randomised;
   ``hfl/sum-reply`` H -> server: the decrypted, still masked, integers. The server removes its
   mask and gets the weighted sum, nothing else.
4. The server sets ``m_{t+1} = m_t + server_lr * sum_i w_i d_i``, scores it on its validation
   rows (Actor-Critic learns from the improvement), and sends every predictor ``hfl/update``:
   a real-time update (top ``realtime_k`` of the changed weights) or, every ``full_every``
   rounds and after the last round, a full update. The job opens with a full update of the
   initial model (version 1), so a predictor can serve from the start.
5. After the last round the server sends the workers a final ``hfl/model`` and computes the
   test metrics.

What each party learns (semi-honest parties; details, measured attacks and the limits of
secure aggregation in the protocol doc): workers learn the master model of every round (and so
the weighted sum of the deltas of each round), the server's feature names and column means and
deviations; predictors the master model; the server each node's sample count, its statistics
when Actor-Critic needs them, and each round's weighted sum only (each delta in the clear only if
the job turns secure aggregation off). H learns uniformly random integers. A job needs at least
``min_nodes`` workers (default 3), so no aggregate is one or two nodes' deltas. The server's
results carry a ``privacy`` block: the aggregation mode and, with DP-FedAvg, the epsilon of an
RDP accountant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member, ndarray_member
from vfl_cli.crypto import encoding, paillier
from vfl_cli.errors import CryptoError, DataError, InvalidArtifact, VflError
from vfl_cli.hfl.aggregation import apply_sum, weighted_sum
from vfl_cli.hfl.model import LOGISTIC_SPEC, init_model, model_loss, model_predict
from vfl_cli.hfl.privacy import (
    RDP_ORDERS,
    effective_multiplier,
    epsilon,
    gaussian_rdp,
    private_delta,
)
from vfl_cli.hfl.strategy import WEIGHTINGS, Strategy, make_strategy, restore_strategy
from vfl_cli.hfl.updates import (
    FullUpdate,
    PredictionReplica,
    SparseUpdate,
    UpdatePublisher,
    update_from_bytes,
)
from vfl_cli.hfl.worker import STAT_NAMES, local_train, node_seed
from vfl_cli.models.features import Split, Standardiser, numeric_matrix, split_rows
from vfl_cli.protocol.base import (
    Bool,
    Choice,
    Expect,
    Float,
    Int,
    IntList,
    JobState,
    Outgoing,
    Param,
    PartyContext,
    Seed,
    defaults,
    meta_int,
    meta_list,
    need,
    typed_params,
    unique_parties,
)
from vfl_cli.protocol.kit import KitProtocol, PartyState, Phase, Step, check_round, nothing
from vfl_cli.protocol.wire import (
    enc_member,
    expect_meta_count,
    ints_member,
    load_mask,
    read_enc,
    read_ints,
    save_mask,
)

__all__ = [
    "DEFAULTS",
    "HFL",
    "check_params",
    "model_spec",
    "node_weights",
    "predict_rows",
    "server_split",
    "status",
]

MODEL = "hfl/model"
DELTA = "hfl/delta"
SUM_REQUEST = "hfl/sum-request"
SUM_REPLY = "hfl/sum-reply"
UPDATE = "hfl/update"

#: Public bound on every delta entry under secure aggregation, ``|d| <= 2**DELTA_BITS``: a
#: worker refuses to send a larger delta (training diverged), and the server's packing headroom
#: is derived from it and the number of workers, never from the data.
DELTA_BITS = 20
#: The most rows a node may report having trained on (a received count is bounded before use).
MAX_SAMPLES = 10**12
_FRACTION_BITS = encoding.fraction_bits(paillier.EXPONENT)  # 32: bits below the point

PARAMS: dict[str, Param] = {
    "rounds": Int(10, 1, 10_000),
    "weighting": Choice("fedavg", *WEIGHTINGS),
    "model": Choice("logistic", "logistic", "mlp"),
    "hidden": IntList([16], 1, 4096, max_len=16, note="MLP hidden layer sizes"),
    "local_epochs": Int(1, 1, 10_000),
    "batch_size": Int(32, 0, 100_000_000, note="0: full batch"),
    "learning_rate": Float(0.1, 0.0, 10.0, open_low=True),
    "server_learning_rate": Float(1.0, 0.0, 10.0, open_low=True),
    "test_fraction": Float(0.5, 0.0, 0.9, open_low=True),
    "seed": Seed(),
    "realtime_k": Float(0.1, 0.0, 1.0, open_low=True),
    "full_every": Int(5, 1, 10_000),
    "secure_aggregation": Bool(True, note="the server sees only each round's weighted sum"),
    "min_nodes": Int(3, 1, 10_000, note="fewer workers are refused: no aggregate of fewer nodes"),
    "dp_clip": Float(0.0, 0.0, 1e6, note="DP-FedAvg: L2 bound of each node's delta; 0: off"),
    "dp_noise_multiplier": Float(1.0, 0.0, 100.0, note="DP-FedAvg: noise std / clip, whole sum"),
    "dp_delta": Float(1e-5, 0.0, 0.1, open_low=True, note="DP-FedAvg: delta of the epsilon"),
}
DEFAULTS: dict[str, Any] = defaults(PARAMS)
MODELS = PARAMS["model"].choices


# ----- parameters --------------------------------------------------------------------------------
def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate hfl parameters against :data:`PARAMS` and fill defaults; the result is its own
    checked form.

    Raises:
        VflError: An unknown parameter or an invalid value, naming both and the allowed range,
            or DP-FedAvg with Actor-Critic weighting (its per-node statistics are outside the
            DP guarantee).
    """
    checked = typed_params(params, PARAMS, what="hfl")
    if checked["dp_clip"] > 0 and checked["weighting"] == "actor-critic":
        raise VflError(
            "dp_clip (DP-FedAvg) needs weighting = fedavg: Actor-Critic sends per-node loss "
            "statistics that the DP guarantee does not cover"
        )
    return checked


def model_spec(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The network spec of the job's model: logistic regression, or an MLP with ReLU layers."""
    if params["model"] == "logistic":
        return [dict(layer) for layer in LOGISTIC_SPEC]
    spec: list[dict[str, Any]] = []
    for units in params["hidden"]:
        spec += [{"type": "dense", "units": int(units), "init": "he"}, {"type": "relu"}]
    return spec + [{"type": "dense", "units": 1}]


def server_split(n_rows: int, params: Mapping[str, Any]) -> Split:
    """The server's own rows: ``train`` are its validation rows, ``test`` its test rows."""
    return split_rows(n_rows, params["test_fraction"], params["seed"])


def _sum_value_bits(n_workers: int) -> int:
    # |d| <= 2**DELTA_BITS at 2**-32 resolution, times a weight <= 1 at 2**-32, summed over the
    # workers (+1 for the encodings' rounding): a public function of public numbers.
    return DELTA_BITS + 2 * _FRACTION_BITS + max(1, math.ceil(math.log2(n_workers))) + 1


# ----- data -----------------------------------------------------------------------------------
def _labelled(ctx: PartyContext, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    df = ctx.data()
    if not ctx.label_column:
        raise DataError(f"{ctx.name} is a {ctx.role} of an hfl job and needs a label column")
    X = numeric_matrix(df, list(columns), what=ctx.name)
    y = numeric_matrix(df, [ctx.label_column], what=ctx.name)[:, 0]
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise DataError(
            f"{ctx.name}: the label column {ctx.label_column!r} must hold 0/1 labels without gaps"
        )
    if len(y) < 2:
        raise DataError(f"{ctx.name}: only {len(y)} rows; an hfl party needs at least 2")
    return X, y


def _check_columns(
    mine: Sequence[str], theirs: Sequence[str], who: str, me: str, *, subset: bool = False
) -> None:
    missing = [c for c in theirs if c not in mine]
    extra = [] if subset else [c for c in mine if c not in theirs]
    if missing or extra:
        detail = "; ".join(
            part
            for part in (
                f"{me} lacks {', '.join(missing[:5])}" if missing else "",
                f"{me} has extra {', '.join(extra[:5])}" if extra else "",
            )
            if part
        )
        raise DataError(
            f"{who} and {me} do not hold the same feature columns ({detail}); multi-node training "
            "needs the same columns at every node: fix the data files (or the label column) and "
            "start a new job"
        )


def _array(art: Artifact, name: str, *, size: int | None = None) -> np.ndarray:
    m = art.members.get(name)
    if m is None or m.type != "ndarray":
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks the array {name!r}")
    a = art.array(name)
    if a.dtype != np.float64 or a.ndim != 1 or (size is not None and a.size != size):
        raise InvalidArtifact(
            f"{name!r} from {art.sender} is {a.dtype} of shape {a.shape}, expected float64"
            + (f" of {size} values" if size is not None else "")
        )
    if not np.all(np.isfinite(a)):
        raise InvalidArtifact(f"{name!r} from {art.sender} holds NaN or infinite values")
    return a


# ----- typed party states: the only code that reads or writes the job state's keys --------------
@dataclass(frozen=True)
class _Standardised(PartyState):
    """Column means and deviations (the server's validation rows'), shared by every role."""

    columns: list[str] = field(default_factory=list)
    spec: list[dict[str, Any]] = field(default_factory=list)
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def standardiser(self) -> Standardiser:
        if self.mean is None or self.scale is None:
            raise VflError("no standardisation yet: the job has not started here")
        return Standardiser(mean=self.mean, scale=self.scale)


@dataclass(frozen=True)
class ServerState(_Standardised):
    """The server: master model, the round ``t``, the weighting's state and the round records."""

    t: int = 0
    nodes: list[str] = field(default_factory=list)
    node_weights: list[list[float]] = field(default_factory=list)
    policy: list[list[float]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    secure_rounds: int = 0
    actor_critic: dict[str, Any] | None = None  # Strategy.state_dict() (None: FedAvg)
    pending_weights: list[float] | None = None  # this round's weights, until the sum is known
    sum_mask: dict[str, Any] | None = None  # wire.save_mask form of the mask on the sum request
    sum_layout: dict[str, Any] | None = None  # paillier.Packed.meta() of the packed sum
    publisher_version: int = 0
    dp_rdp: list[float] | None = None
    dp_rdp_each: list[float] | None = None
    dp_multipliers: list[float] = field(default_factory=list)
    master: np.ndarray | None = None
    last_sent: np.ndarray | None = None

    def strategy(self) -> Strategy:
        return restore_strategy(self.actor_critic)

    def mask(self) -> paillier.Mask:
        if self.sum_mask is None:
            raise VflError("no sum request is pending")
        return load_mask(self.sum_mask)

    def publisher(self) -> UpdatePublisher:
        publisher = UpdatePublisher()
        version = self.publisher_version
        last = self.last_sent if version else None
        publisher.load_state_dict({"version": version, "last_sent": last})
        return publisher

    def model(self) -> np.ndarray:
        if self.master is None:
            raise VflError("the server holds no master model yet")
        return self.master


@dataclass(frozen=True)
class WorkerState(_Standardised):
    """A worker: the next round ``t`` it trains, the model size and, once done, the model."""

    t: int = 0
    n_params: int = 0
    model: np.ndarray | None = None


@dataclass(frozen=True)
class PredictorState(_Standardised):
    """A predictor: its replica of the model and the updates it applied."""

    version: int = 0
    round: int = 0
    applied: list[dict[str, Any]] = field(default_factory=list)
    replica: np.ndarray | None = None


STATES: dict[str, type[_Standardised]] = {
    "server": ServerState,
    "worker": WorkerState,
    "predictor": PredictorState,
}


# ----- messages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeDelta:
    """A worker's ``hfl/delta``, its manifest checked; the delta itself is read by mode."""

    sender: str
    n_samples: int
    stats: dict[str, float]
    art: Artifact

    @classmethod
    def decode(cls, art: Artifact, state: ServerState, server: str, needs_stats: bool) -> NodeDelta:
        w = art.sender
        check_round(art, state.t)
        if state.t == 0:
            _check_columns(meta_list(art, "columns"), state.columns, server, w)
        n = meta_int(art, "n_samples", low=1, high=MAX_SAMPLES)
        stats: dict[str, float] = {}
        if needs_stats:
            s = art.meta.get("stats")
            if not isinstance(s, Mapping) or any(
                not isinstance(s.get(k), (int, float)) for k in STAT_NAMES
            ):
                raise InvalidArtifact(
                    f"the delta from {w} lacks the statistics {', '.join(STAT_NAMES)}"
                )
            stats = {k: float(s[k]) for k in STAT_NAMES}
        return cls(w, n, stats, art)


@dataclass(frozen=True)
class Setup:
    """Round 0's columns, spec and standardisation, checked against this party's own."""

    columns: list[str]
    spec: list[dict[str, Any]]
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def decode(cls, art: Artifact, ctx: PartyContext, *, subset: bool) -> Setup:
        what = "update" if art.kind == UPDATE else "model"
        columns = meta_list(art, "columns")
        _check_columns(ctx.features, columns, art.sender, ctx.name, subset=subset)
        spec = art.meta.get("spec")
        if not isinstance(spec, list) or spec != model_spec(ctx.params):
            raise InvalidArtifact(
                f"the {what} from {art.sender} has another spec than the job's parameters name"
            )
        mean = _array(art, "mean", size=len(columns))
        scale = _array(art, "scale", size=len(columns))
        return cls(columns, spec, mean, scale)


# ----- roles ----------------------------------------------------------------------------------
def _server(ctx: PartyContext) -> str:
    return next(p["name"] for p in ctx.parties if p["role"] == "server")


def _workers(ctx: PartyContext) -> list[str]:
    return [p["name"] for p in ctx.parties if p["role"] == "worker"]


def _predictors(ctx: PartyContext) -> list[str]:
    return [p["name"] for p in ctx.parties if p["role"] == "predictor"]


# ----- server steps -------------------------------------------------------------------------------
def _server_data(ctx: PartyContext, state: ServerState) -> tuple[np.ndarray, np.ndarray, Split]:
    """The server's rows, standardised, and its validation/test split."""
    X, y = _labelled(ctx, state.columns)
    return state.standardiser().transform(X), y, server_split(len(y), ctx.params)


def initial_state(ctx: PartyContext) -> ServerState:
    """Round 0: the standardisation of the validation rows, the initial model, the strategy."""
    params, columns = ctx.params, list(ctx.features)
    X_raw, y = _labelled(ctx, columns)
    split = server_split(len(y), params)
    if len(split.train) < 2 or len(split.test) < 2:
        raise DataError(
            f"{ctx.name} holds {len(y)} rows: too few for {len(split.train)} validation and "
            f"{len(split.test)} test rows; lower test_fraction or add rows"
        )
    std = Standardiser.fit(X_raw[split.train])
    spec = model_spec(params)
    master = init_model(spec, len(columns), seed=params["seed"])
    val_loss = model_loss(spec, master, std.transform(X_raw[split.train]), y[split.train])
    workers = _workers(ctx)
    strategy = make_strategy(params["weighting"], len(workers), seed=params["seed"])
    return ServerState(
        columns=columns,
        spec=spec,
        mean=std.mean,
        scale=std.scale,
        t=0,
        nodes=workers,
        history=[{"round": 0, "val_loss": val_loss}],
        actor_critic=strategy.state_dict(),
        master=master,
    )


def _publish(
    ctx: PartyContext,
    state: ServerState,
    publisher: UpdatePublisher,
    update: SparseUpdate | FullUpdate,
    extra: list[Member] | None = None,
    meta: dict[str, Any] | None = None,
    *,
    final: bool = False,
) -> tuple[ServerState, list[Outgoing]]:
    """Send ``update`` to every predictor; the state remembers the publisher's."""
    last = publisher.last_sent if publisher.last_sent is not None else state.last_sent
    state = state.but(publisher_version=publisher.version, last_sent=last)
    body = np.frombuffer(update.to_bytes(), dtype=np.uint8)
    members = [ndarray_member("update", body), *(extra or [])]
    entries = int(update.indices.size) if isinstance(update, SparseUpdate) else update.n_params
    info = {
        "update": update.kind,
        "version": update.version,
        "n_params": update.n_params,
        "entries": entries,
        "final": final,
        **(meta or {}),
    }
    return state, [Outgoing(p, UPDATE, "update", members, info, state.t) for p in _predictors(ctx)]


def _s_start(ctx: PartyContext, state: ServerState, received: Any) -> Step[ServerState]:
    new = initial_state(ctx)
    master, std = new.model(), new.standardiser()
    setup = [
        ndarray_member("model", master),
        ndarray_member("mean", std.mean),
        ndarray_member("scale", std.scale),
    ]
    meta = {"columns": new.columns, "spec": new.spec, "n_params": int(master.size), "final": False}
    out = [Outgoing(w, MODEL, "model", setup, meta, 0) for w in new.nodes]
    publisher = UpdatePublisher()
    update = publisher.full(master)
    new, sent = _publish(
        ctx, new, publisher, update, setup[1:], {"columns": new.columns, "spec": new.spec}
    )
    return Step(new, "wait-deltas", out + sent)


def _s_deltas(
    ctx: PartyContext, state: ServerState, received: Mapping[str, Artifact]
) -> Step[ServerState]:
    """The deltas arrived: weigh them, then sum them (in plaintext, or ask for the sum)."""
    strategy = state.strategy()
    deltas = [
        NodeDelta.decode(need(received, w, DELTA), state, ctx.name, strategy.needs_stats)
        for w in _workers(ctx)
    ]
    weights = strategy.weigh([d.n_samples for d in deltas], [d.stats for d in deltas])
    state = state.but(actor_critic=strategy.state_dict(), pending_weights=weights.tolist())
    if not ctx.params["secure_aggregation"]:
        n_params = int(state.model().size)
        plain = [_array(d.art, "delta", size=n_params) for d in deltas]
        return _finish_round(ctx, state, weighted_sum(plain, weights))
    return _sum_request(ctx, state, deltas, weights)


def _sum_request(
    ctx: PartyContext, state: ServerState, deltas: list[NodeDelta], weights: np.ndarray
) -> Step[ServerState]:
    """Secure aggregation: the weighted sum of the encrypted deltas, packed and masked, to H.

    The deltas stay encrypted under the key holder's key; the server computes the weighted sum
    on ciphertexts (its weights are plaintext to it).
    """
    holder = _workers(ctx)[0]
    kh = ctx.public_key(holder)
    n_params = int(state.model().size)
    total: paillier.EncryptedArray | None = None
    for d, w in zip(deltas, weights, strict=True):
        enc = read_enc(d.art, "delta", kh, rows=n_params, max_abs=float(2**DELTA_BITS))
        term = enc * float(w)
        total = term if total is None else total + term
    if total is None:
        raise VflError("hfl needs at least one worker")
    packed = paillier.pack(total, value_bits=_sum_value_bits(len(deltas)))
    # A mask uniform modulo n (not a bounded one): the key holder sees uniformly random
    # residues, whatever the sum; packing first keeps it to one decryption per few values.
    masked, mask = paillier.mask(packed.ciphertexts)
    state = state.but(sum_mask=save_mask(mask), sum_layout=packed.meta())
    request = Outgoing(
        holder,
        SUM_REQUEST,
        "sum-request",
        [enc_member("sum", masked)],
        {"values": n_params},
        state.t,
    )
    return Step(state, "wait-sum", [request])


def _s_sum(
    ctx: PartyContext, state: ServerState, received: Mapping[str, Artifact]
) -> Step[ServerState]:
    """The key holder's residues: remove the mask, read the weighted sum, finish the round."""
    holder = _workers(ctx)[0]
    art = need(received, holder, SUM_REPLY)
    check_round(art, state.t)
    mask = state.mask()
    raw = read_ints(art, "sum", len(mask.offsets))
    total = unpack_sum(raw, mask, state.sum_layout or {})
    n_params = int(state.model().size)
    if total.size != n_params:
        raise InvalidArtifact(
            f"the sum from {holder} holds {total.size} values, expected {n_params}"
        )
    state = state.but(sum_mask=None, sum_layout=None, secure_rounds=state.secure_rounds + 1)
    return _finish_round(ctx, state, total)


def _learn_round(ctx: PartyContext, state: ServerState, master: np.ndarray) -> ServerState:
    """The new master model scored on the validation rows; the strategy learns; records kept."""
    params = ctx.params
    X, y, split = _server_data(ctx, state)
    val_loss = model_loss(state.spec, master, X[split.train], y[split.train])
    weights = list(state.pending_weights or [])
    if params["dp_clip"] > 0:
        state = _accounted(state, params, weights)
    strategy = state.strategy()
    learned = strategy.learn(np.asarray(weights), state.history[-1]["val_loss"], val_loss)
    record: dict[str, Any] = {"round": state.t + 1, "val_loss": val_loss}
    if learned.record is not None:
        record["reward"] = learned.record["reward"]
    return state.but(
        master=master,
        t=state.t + 1,
        pending_weights=None,
        node_weights=[*state.node_weights, weights],
        policy=[*state.policy, learned.policy.tolist()],
        history=[*state.history, record],
        actor_critic=strategy.state_dict(),
    )


def _finish_round(ctx: PartyContext, state: ServerState, total: np.ndarray) -> Step[ServerState]:
    """``m_{t+1} = m_t + server_lr * sum``: learn, publish, send the model, maybe finish."""
    params = ctx.params
    master = apply_sum(state.model(), total, params["server_learning_rate"])
    state = _learn_round(ctx, state, master)
    final = state.t >= params["rounds"]
    publisher = state.publisher()
    if final or state.t % params["full_every"] == 0:
        update: SparseUpdate | FullUpdate = publisher.full(master)
    else:
        update = publisher.realtime(master, k_fraction=params["realtime_k"])
    state, out = _publish(ctx, state, publisher, update, final=final)
    meta = {"n_params": int(master.size), "final": final}
    out += [
        Outgoing(w, MODEL, "model", [ndarray_member("model", master)], meta, state.t)
        for w in _workers(ctx)
    ]
    if not final:
        return Step(state, "wait-deltas", out)
    return Step.finish(state, _server_results(ctx, state), out)


def _server_results(ctx: PartyContext, state: ServerState) -> dict[str, Any]:
    """The server's results: test metrics, the weights and policy per round, privacy, model."""
    from vfl_cli.metrics import classification_metrics  # scikit-learn: slow to import

    X, y, split = _server_data(ctx, state)
    scores = model_predict(state.spec, state.model(), X[split.test])
    return {
        "metrics": {"test": classification_metrics(y[split.test], scores)},
        "node_weights": state.node_weights,
        "policy": state.policy,
        "nodes": state.nodes,
        "round_history": state.history,
        "privacy": privacy_summary(ctx.params, state),
        "model": model_card(ctx, state.columns, state.spec, state.model()),
    }


# ----- worker steps -------------------------------------------------------------------------------
def _w_setup(ctx: PartyContext, state: WorkerState, art: Artifact) -> WorkerState:
    """Round 0: the server's columns, spec and standardisation, checked against this party's."""
    setup = Setup.decode(art, ctx, subset=False)
    if np.any(setup.scale <= 0):
        raise InvalidArtifact(f"the standardisation from {art.sender} has a scale <= 0")
    return state.but(columns=setup.columns, spec=setup.spec, mean=setup.mean, scale=setup.scale)


def _w_train(ctx: PartyContext, state: WorkerState, master: np.ndarray) -> Outgoing:
    """Train the master model on this worker's rows; the delta (and its counts) to the server."""
    params, t = ctx.params, state.t
    X, y = _labelled(ctx, state.columns)
    node = _workers(ctx).index(ctx.name)
    delta = local_train(
        master,
        state.spec,
        state.standardiser().transform(X),
        y,
        params["local_epochs"],
        params["batch_size"] or None,
        params["learning_rate"],
        node_seed(params["seed"], t, node),
    )
    meta: dict[str, Any] = {"n_samples": delta.n_samples}
    if params["weighting"] == "actor-critic":
        meta["stats"] = {k: delta.stats[k] for k in STAT_NAMES}
    if t == 0:
        meta["columns"] = state.columns
    return Outgoing(_server(ctx), DELTA, "delta", [_delta_member(ctx, delta.values)], meta, t)


def _w_round(
    ctx: PartyContext, state: WorkerState, received: Mapping[str, Artifact]
) -> Step[WorkerState]:
    """The master model of round t: train and send the delta, or keep the final model."""
    art = need(received, _server(ctx), MODEL)
    check_round(art, state.t)
    if state.t == 0:
        state = _w_setup(ctx, state, art)
    master = _array(art, "model", size=state.n_params or None)  # every round the same model size
    expect_meta_count(art, "n_params", int(master.size))  # the manifest's count is what it holds
    state = state.but(n_params=int(master.size))
    if art.meta.get("final"):
        card = model_card(ctx, state.columns, state.spec, master)
        return Step.finish(state.but(model=master), {"model": card})
    out = _w_train(ctx, state, master)
    is_holder = ctx.params["secure_aggregation"] and _workers(ctx).index(ctx.name) == 0
    return Step(state.but(t=state.t + 1), "wait-request" if is_holder else "wait-model", [out])


def _delta_member(ctx: PartyContext, values: np.ndarray) -> Member:
    """What leaves the worker: its delta, DP-noised if the job says so, then encrypted under
    the key holder's key (secure aggregation, the default) or, if the job turned that off,
    as a plain array."""
    params = ctx.params
    if params["dp_clip"] > 0:
        values = private_delta(
            values, params["dp_clip"], params["dp_noise_multiplier"], len(_workers(ctx))
        )
    if not params["secure_aggregation"]:
        return ndarray_member("delta", values)
    if np.abs(values).max(initial=0.0) > 2.0**DELTA_BITS:
        raise VflError(
            f"the delta exceeds 2**{DELTA_BITS} (training diverged): lower learning_rate"
        )
    holder = ctx.public_key(_workers(ctx)[0])
    return enc_member("delta", paillier.encrypt(holder, values))


def _w_decrypt(
    ctx: PartyContext, state: WorkerState, received: Mapping[str, Artifact]
) -> Step[WorkerState]:
    """The key holder decrypts the server's masked sum: uniformly random residues to it."""
    server = _server(ctx)
    art = need(received, server, SUM_REQUEST)
    t = state.t - 1
    check_round(art, t)
    priv = ctx.private_key()
    expect_meta_count(art, "values", state.n_params)  # a sum of the model's values, no other
    request = read_enc(art, "sum", priv.public)
    # Only as many ciphertexts as one packed weighted sum of the model needs: a bound on
    # what a request can ask to have decrypted (see the protocol doc's limits).
    expected = _sum_ciphertexts(priv.public.bits, len(_workers(ctx)), state.n_params)
    if request.size != expected:
        raise InvalidArtifact(
            f"the sum request from {server} holds {request.size} ciphertexts, a packed sum of "
            f"{state.n_params} values needs {expected}"
        )
    raw = priv.decrypt_raw(request)
    reply = Outgoing(
        server, SUM_REPLY, "sum-reply", [ints_member("sum", raw, priv.public.n)], {}, t
    )
    return Step(state, "wait-model", [reply])


# ----- predictor step -----------------------------------------------------------------------------
def _read_update(art: Artifact) -> SparseUpdate | FullUpdate:
    """The update an ``hfl/update`` carries, its manifest checked against its body."""
    server = art.sender
    m = art.members.get("update")
    if m is None or m.type != "ndarray":
        raise InvalidArtifact(f"{art.kind} from {server} lacks the update member")
    body = art.array("update")
    if body.dtype != np.uint8 or body.ndim != 1:
        raise InvalidArtifact(f"the update from {server} is {body.dtype}, expected uint8 bytes")
    update = update_from_bytes(body.tobytes())
    entries = int(update.indices.size) if isinstance(update, SparseUpdate) else update.n_params
    # the manifest's counts (what a courier or auditor sees) are those the body holds
    expect_meta_count(art, "n_params", update.n_params, required=False)
    expect_meta_count(art, "entries", entries, required=False)
    if art.meta.get("version") != update.version or art.meta.get("update") != update.kind:
        raise InvalidArtifact(
            f"the update from {server} says version {art.meta.get('version')!r} "
            f"({art.meta.get('update')!r}) in its manifest but holds {update.kind} version "
            f"{update.version}"
        )
    return update


def _apply_update(
    ctx: PartyContext, state: PredictorState, art: Artifact, update: SparseUpdate | FullUpdate
) -> Step[PredictorState]:
    """Apply ``update`` to the replica, strictly in order; the last one finishes the job."""
    replica = PredictionReplica(state.spec, len(state.columns))
    replica.version = state.version
    replica.params = None if state.replica is None else state.replica.copy()
    try:
        replica.apply(update)
    except VflError as exc:
        raise InvalidArtifact(f"{art.kind} {art.seq} from {art.sender}: {exc}") from None
    params = replica.params if replica.params is not None else np.zeros(0)
    applied = {"version": update.version, "kind": update.kind, "round": art.round}
    state = state.but(
        replica=params, version=replica.version, round=art.round, applied=[*state.applied, applied]
    )
    if not art.meta.get("final"):
        return Step(state, "serving")
    card = model_card(ctx, state.columns, state.spec, replica.params)
    return Step.finish(state, {"model": card, "update_version": replica.version})


def _p_first(
    ctx: PartyContext, state: PredictorState, received: Mapping[str, Artifact]
) -> Step[PredictorState]:
    """The first update: a full one, with the columns, spec and standardisation."""
    art = need(received, _server(ctx), UPDATE)
    update = _read_update(art)
    setup = Setup.decode(art, ctx, subset=True)
    state = state.but(columns=setup.columns, spec=setup.spec, mean=setup.mean, scale=setup.scale)
    return _apply_update(ctx, state, art, update)


def _p_update(
    ctx: PartyContext, state: PredictorState, received: Mapping[str, Artifact]
) -> Step[PredictorState]:
    """A later update (real-time or full)."""
    art = need(received, _server(ctx), UPDATE)
    return _apply_update(ctx, state, art, _read_update(art))


# ----- the protocol ----------------------------------------------------------------------------
def _deltas_from(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(w, DELTA) for w in _workers(ctx)]


def _sum_from(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(_workers(ctx)[0], SUM_REPLY)]


def _model_from(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(_server(ctx), MODEL)]


def _request_from(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(_server(ctx), SUM_REQUEST)]


def _update_from(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(_server(ctx), UPDATE)]


class HFL(KitProtocol[Any]):
    """Multi-node (horizontal) training: one server, workers holding rows, optional predictors."""

    name = "hfl"
    roles = ("server", "worker", "predictor")
    states = STATES

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("server", "start"): Phase(nothing, _s_start),
            ("server", "wait-deltas"): Phase(_deltas_from, _s_deltas),
            ("server", "wait-sum"): Phase(_sum_from, _s_sum),
            ("worker", "start"): Phase(_model_from, _w_round),
            ("worker", "wait-model"): Phase(_model_from, _w_round),
            ("worker", "wait-request"): Phase(_request_from, _w_decrypt),
            ("predictor", "start"): Phase(_update_from, _p_first),
            ("predictor", "serving"): Phase(_update_from, _p_update),
        }

    def check_parties(self, parties: list[dict[str, str]]) -> None:
        """Exactly one server, at least one worker, any number of predictors."""
        unique_parties(parties)
        roles = [p["role"] for p in parties]
        if (
            roles.count("server") != 1
            or roles.count("worker") < 1
            or any(r not in self.roles for r in roles)
        ):
            listing = ", ".join(f"{p['name']} ({p['role']})" for p in parties)
            raise VflError(
                "hfl needs exactly one server, at least one worker and optionally predictors; "
                f"these parties are: {listing}"
            )

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
        checked = check_params(params)
        workers = [p.get("name") for p in parties if p.get("role") == "worker"]
        if workers and len(workers) < checked["min_nodes"]:
            # Each round's weighted sum reaches the server and every party; with one node it is
            # that node's delta, with two each node learns the other's.
            raise VflError(
                f"hfl needs at least min_nodes = {checked['min_nodes']} workers per aggregate, "
                f"this job has {len(workers)} ({', '.join(map(str, workers))}); add workers, or "
                "agree to a lower min_nodes knowing that a sum of few deltas reveals each of them"
            )
        return checked


# ----- privacy accounting ---------------------------------------------------------------------
def _accounted(
    state: ServerState, params: Mapping[str, Any], weights: Sequence[float]
) -> ServerState:
    """Add one round's Renyi DP to the server's running totals (see :mod:`vfl_cli.hfl.privacy`).

    ``dp_rdp``: what the round's weighted sum (the master model, seen by everyone) costs the
    node it depends on most. ``dp_rdp_each``: what one node's own noised delta costs it, for a
    server that sees deltas one by one (secure aggregation off): its noise share alone, ``z /
    sqrt(N)``.
    """
    z = float(params["dp_noise_multiplier"])
    n = len(weights)
    zero = [0.0] * len(RDP_ORDERS)
    rdp = np.asarray(state.dp_rdp or zero) + gaussian_rdp(effective_multiplier(weights, z))
    each = np.asarray(state.dp_rdp_each or zero) + gaussian_rdp(z / math.sqrt(n))
    return state.but(
        dp_rdp=rdp.tolist(),
        dp_rdp_each=each.tolist(),
        dp_multipliers=[*state.dp_multipliers, effective_multiplier(weights, z)],
    )


def privacy_summary(params: Mapping[str, Any], state: ServerState) -> dict[str, Any]:
    """What the job's results say about its privacy: aggregation mode and DP-FedAvg's epsilon."""
    secure = bool(params["secure_aggregation"])
    out: dict[str, Any] = {
        "secure_aggregation": secure,
        "min_nodes": int(params["min_nodes"]),
        "server_sees": "each round's weighted sum" if secure else "every node's delta",
        "dp": None,
    }
    if params["dp_clip"] <= 0 or state.dp_rdp is None:
        return out
    delta = float(params["dp_delta"])
    eps, order = epsilon(state.dp_rdp, delta)
    dp: dict[str, Any] = {
        "clip": float(params["dp_clip"]),
        "noise_multiplier": float(params["dp_noise_multiplier"]),
        "round_multipliers": state.dp_multipliers,
        "delta": delta,
        "epsilon": eps,
        "rdp_order": order,
        "accountant": "RDP of the Gaussian mechanism, node level, no sampling (Mironov 2017; "
        "Balle et al. 2020 conversion)",
    }
    if not secure and state.dp_rdp_each is not None:
        dp["epsilon_each_delta"] = epsilon(state.dp_rdp_each, delta)[0]
    out["dp"] = dp
    return out


# ----- secure aggregation helpers -----------------------------------------------------------------
def unpack_sum(raw: Sequence[int], mask: paillier.Mask, layout: Mapping[str, Any]) -> np.ndarray:
    """Remove the server's mask from the key holder's residues and read the packed slots.

    Args:
        raw: Decrypted residues (masked packed plaintexts) from the key holder.
        mask: The full-domain mask the server added.
        layout: :meth:`paillier.Packed.meta` of the packed sum.

    Returns:
        The weighted sum, float64.

    Raises:
        InvalidArtifact: A residue does not unmask to a valid packed plaintext (a wrong key, a
            tampered reply or an overflow).
    """
    try:
        return paillier.unpack_masked(raw, mask, layout)
    except CryptoError as exc:  # the reply is refused (quarantined), not a crash
        raise InvalidArtifact(
            f"the decrypted sum does not unmask to the packed sum (wrong key, tampered reply or "
            f"overflow): {exc}"
        ) from None


def _sum_ciphertexts(key_bits: int, n_workers: int, n_params: int) -> int:
    """How many ciphertexts the packed weighted sum of ``n_params`` values takes (pack's layout)."""
    layout = paillier.SlotLayout.for_value_bits(key_bits, _sum_value_bits(n_workers))
    return layout.ciphertexts(n_params)


# ----- model cards, scoring, status ---------------------------------------------------------------
def model_card(
    ctx: PartyContext, columns: Sequence[str], spec: list[dict[str, Any]], flat: np.ndarray | None
) -> dict[str, Any]:
    """The model card every party keeps: spec, columns, parameters, rounds.

    A logistic model lists its weights per feature; an MLP lists its layers (every party holds
    the whole model, in plaintext).
    """
    columns = list(columns)
    card: dict[str, Any] = {
        "protocol": "hfl",
        "job": ctx.job,
        "party": ctx.name,
        "role": ctx.role,
        "alignment": None,  # multi-node training: same columns everywhere, nothing to align
        "params": dict(ctx.params),
        "features": columns,
        "spec": spec,
        "n_params": 0 if flat is None else int(flat.size),
        "rounds": int(ctx.params["rounds"]),
        "rounds_run": int(ctx.params["rounds"]),
        "local_epochs": int(ctx.params["local_epochs"]),
        "weights": {},
    }
    if ctx.params["model"] == "logistic":
        values: Sequence[float] = [] if flat is None else flat.tolist()
        card["weights"] = {
            c: float(v) for c, v in zip([*columns, "(intercept)"], values, strict=False)
        }
        return card
    card["layers"] = _layers(spec, len(columns))
    return card


def _layers(spec: list[dict[str, Any]], width: int) -> list[dict[str, Any]]:
    """One row per layer of an MLP: its shape; every party computes it in plaintext."""
    layers = []
    for layer in spec:
        if layer["type"] == "dense":
            shape, width = [width, int(layer["units"])], int(layer["units"])
        else:
            shape = [width]
        layers.append(
            {
                "party": "every party",
                "part": "whole model",
                "layer": layer["type"],
                "mode": "plaintext",
                "shape": shape,
            }
        )
    return layers


def _current_model(role: str, state: _Standardised) -> np.ndarray:
    if isinstance(state, ServerState):
        model = state.master
    elif isinstance(state, WorkerState):
        model = state.model
    else:
        model = state.replica if isinstance(state, PredictorState) else None
    if model is None or model.size == 0:
        what = {
            "worker": "a worker holds the final model only once the job is done",
            "predictor": "this predictor has applied no update yet",
        }.get(role, "no model yet")
        raise VflError(f"no model to score with: {what}")
    return model


def predict_rows(role: str, state: JobState, df: Any) -> np.ndarray:
    """Scores of the rows of ``df`` with this party's current copy of the model.

    The server scores with its master model, a predictor with its replica (as far as the
    updates it applied), a worker with the final model.

    Args:
        role: The party's role in the job.
        state: Its job state.
        df: The rows to score (a data frame with the model's feature columns).

    Returns:
        Probabilities of class 1, one per row.

    Raises:
        VflError: No model yet, or the rows lack a feature column.
    """
    typed = STATES.get(role, PredictorState).load(state)
    model = _current_model(role, typed)
    columns = list(typed.columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"the rows to score lack the model's column(s) {', '.join(missing[:5])}")
    X = typed.standardiser().transform(numeric_matrix(df, columns, what="the rows to score"))
    return model_predict(typed.spec, model, X)


def status(role: str, params: Mapping[str, Any], state: JobState) -> dict[str, Any]:
    """Where a party stands in an hfl job (for ``vfl hfl status``)."""
    out: dict[str, Any] = {
        "role": role,
        "phase": state.phase,
        "done": state.done,
        "rounds": params["rounds"],
    }
    typed = STATES.get(role, PredictorState).load(state)
    if isinstance(typed, ServerState):
        out["round"] = typed.t
        out["update_version"] = typed.publisher_version
        if typed.history:
            out["val_loss"] = typed.history[-1]["val_loss"]
        if typed.node_weights:
            out["last_node_weights"] = dict(zip(typed.nodes, typed.node_weights[-1], strict=False))
    elif isinstance(typed, WorkerState):
        out["round"] = typed.t
    elif isinstance(typed, PredictorState):
        out["update_version"] = typed.version
        out["round"] = typed.round
        out["applied"] = typed.applied[-5:]
    if "metrics" in state.results:
        out["metrics"] = state.results["metrics"]
    return out


def node_weights(state: JobState) -> dict[str, Any]:
    """The server's node weights per round and the policy (for ``vfl hfl show-weights``)."""
    typed = ServerState.load(state)
    return {"nodes": typed.nodes, "node_weights": typed.node_weights, "policy": typed.policy}
