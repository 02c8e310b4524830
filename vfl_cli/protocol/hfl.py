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
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member, ndarray_member
from vfl_cli.crypto import encoding, paillier
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.hfl.aggregation import ActorCritic, apply_sum, fedavg_weights, weighted_sum
from vfl_cli.hfl.model import LOGISTIC_SPEC, init_model, model_loss, model_predict
from vfl_cli.hfl.privacy import (
    RDP_ORDERS,
    effective_multiplier,
    epsilon,
    gaussian_rdp,
    private_delta,
)
from vfl_cli.hfl.simulation import WEIGHTINGS
from vfl_cli.hfl.updates import (
    FullUpdate,
    PredictionReplica,
    SparseUpdate,
    UpdatePublisher,
    update_from_bytes,
)
from vfl_cli.hfl.worker import STAT_NAMES, local_train
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
    Protocol,
    Seed,
    defaults,
    meta_int,
    meta_list,
    need,
    typed_params,
    unique_parties,
)
from vfl_cli.protocol.hetero_linear import (
    enc_member,
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
_FRACTION_BITS = -4 * paillier.EXPONENT  # 32: bits below the point of an encoded value

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


def node_seed(seed: int, round_: int, node: int) -> int:
    """Local training seed of node ``node`` in round ``round_`` (as in :func:`vfl_cli.hfl.simulate`)."""
    return (seed * 1000 + round_) * 100 + node


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
            f"{who} and {me} do not hold the same feature columns ({detail}); multi-node training needs "
            "the same columns at every node: fix the data files (or the label column) and start a new job"
        )


def _standardiser(state: JobState) -> Standardiser:
    return Standardiser(mean=state.arrays["mean"], scale=state.arrays["scale"])


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


def _json(value: Any) -> Any:
    """Actor-Critic state as JSON: arrays to nested lists, numpy scalars to Python numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ----- the protocol ----------------------------------------------------------------------------
class HFL(Protocol):
    """Multi-node (horizontal) training: one server, workers holding rows, optional predictors."""

    name = "hfl"
    summary = (
        "multi-node training: parameter server, delta updates, FedAvg or Actor-Critic weighting"
    )
    roles = ("server", "worker", "predictor")

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

    # ----- roles -----------------------------------------------------------------------------
    @staticmethod
    def server(ctx: PartyContext) -> str:
        return next(p["name"] for p in ctx.parties if p["role"] == "server")

    @staticmethod
    def workers(ctx: PartyContext) -> list[str]:
        return [p["name"] for p in ctx.parties if p["role"] == "worker"]

    @staticmethod
    def predictors(ctx: PartyContext) -> list[str]:
        return [p["name"] for p in ctx.parties if p["role"] == "predictor"]

    # ----- what each party waits for -----------------------------------------------------------
    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        if ctx.role == "server":
            if state.phase == "start":
                return []
            if state.phase == "wait-deltas":
                return [Expect(w, DELTA) for w in self.workers(ctx)]
            if state.phase == "wait-sum":
                return [Expect(self.workers(ctx)[0], SUM_REPLY)]
            raise VflError(f"hfl server in unknown phase {state.phase!r}")
        server = self.server(ctx)
        if ctx.role == "worker":
            return [Expect(server, SUM_REQUEST if state.phase == "wait-request" else MODEL)]
        return [Expect(server, UPDATE)]

    def advance(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        if ctx.role == "server":
            handler = {
                "start": self._s_start,
                "wait-deltas": self._s_deltas,
                "wait-sum": self._s_sum,
            }[state.phase]
            return handler(ctx, state, received)
        if ctx.role == "worker":
            if state.phase == "wait-request":
                return self._w_decrypt(ctx, state, received)
            return self._w_round(ctx, state, received)
        return self._p_update(ctx, state, received)

    @staticmethod
    def _check_round(art: Artifact, expected: int) -> None:
        if art.round != expected:
            raise InvalidArtifact(
                f"{art.kind} from {art.sender} is for round {art.round}, but this party is at round "
                f"{expected} (stale, replayed or out of order)"
            )

    # ----- server -------------------------------------------------------------------------------
    def _s_data(self, ctx: PartyContext, state: JobState) -> tuple[np.ndarray, np.ndarray, Split]:
        X, y = _labelled(ctx, state.data.get("columns", ctx.features))
        split = server_split(len(y), ctx.params)
        return _standardiser(state).transform(X) if "mean" in state.arrays else X, y, split

    def _s_start(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        params = ctx.params
        columns = list(ctx.features)
        state.data["columns"] = columns
        X_raw, y, split = self._s_data(ctx, state)
        if len(split.train) < 2 or len(split.test) < 2:
            raise DataError(
                f"{ctx.name} holds {len(y)} rows: too few for {len(split.train)} validation and "
                f"{len(split.test)} test rows; lower test_fraction or add rows"
            )
        std = Standardiser.fit(X_raw[split.train])
        state.arrays["mean"], state.arrays["scale"] = std.mean, std.scale
        spec = model_spec(params)
        master = init_model(spec, len(columns), seed=params["seed"])
        state.arrays["master"] = master
        X_val = std.transform(X_raw[split.train])
        workers = self.workers(ctx)
        state.data.update(
            t=0,
            spec=spec,
            nodes=workers,
            node_weights=[],
            policy=[],
            history=[{"round": 0, "val_loss": model_loss(spec, master, X_val, y[split.train])}],
            secure_rounds=0,
        )
        if params["weighting"] == "actor-critic":
            ac = ActorCritic(len(workers), seed=params["seed"])
            state.data["actor_critic"] = {"config": ac.config(), "state": _json(ac.state_dict())}
        setup = [
            ndarray_member("model", master),
            ndarray_member("mean", std.mean),
            ndarray_member("scale", std.scale),
        ]
        meta = {"columns": columns, "spec": spec, "n_params": int(master.size), "final": False}
        out = [Outgoing(w, MODEL, "model", setup, meta, 0) for w in workers]
        publisher = UpdatePublisher()
        out += self._publish(
            ctx,
            state,
            publisher,
            publisher.full(master),
            setup[1:],
            {"columns": columns, "spec": spec},
        )
        state.phase = "wait-deltas"
        return out

    def _publish(
        self,
        ctx: PartyContext,
        state: JobState,
        publisher: UpdatePublisher,
        update: SparseUpdate | FullUpdate,
        extra: list[Member] | None = None,
        meta: dict[str, Any] | None = None,
        *,
        final: bool = False,
    ) -> list[Outgoing]:
        """Send ``update`` to every predictor and remember the publisher's state."""
        state.data["publisher_version"] = publisher.version
        if publisher.last_sent is not None:
            state.arrays["last_sent"] = publisher.last_sent
        body = np.frombuffer(update.to_bytes(), dtype=np.uint8)
        members = [ndarray_member("update", body), *(extra or [])]
        info = {
            "update": update.kind,
            "version": update.version,
            "n_params": update.n_params,
            "entries": int(update.indices.size)
            if isinstance(update, SparseUpdate)
            else update.n_params,
            "final": final,
            **(meta or {}),
        }
        t = int(state.data.get("t", 0))
        return [Outgoing(p, UPDATE, "update", members, info, t) for p in self.predictors(ctx)]

    def _publisher(self, state: JobState) -> UpdatePublisher:
        publisher = UpdatePublisher()
        version = int(state.data.get("publisher_version", 0))
        publisher.load_state_dict(
            {"version": version, "last_sent": state.arrays.get("last_sent") if version else None}
        )
        return publisher

    def _actor_critic(self, state: JobState) -> ActorCritic | None:
        saved = state.data.get("actor_critic")
        if saved is None:
            return None
        ac = ActorCritic(**saved["config"])
        ac.load_state_dict(saved["state"])
        return ac

    def _s_deltas(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        t = int(state.data["t"])
        workers = self.workers(ctx)
        n_params = int(state.arrays["master"].size)
        secure = bool(ctx.params["secure_aggregation"])
        needs_stats = ctx.params["weighting"] == "actor-critic"
        counts: list[int] = []
        stats: list[dict[str, float]] = []
        arts = []
        for w in workers:
            art = need(received, w, DELTA)
            self._check_round(art, t)
            if t == 0:
                _check_columns(meta_list(art, "columns"), state.data["columns"], ctx.name, w)
            counts.append(meta_int(art, "n_samples", low=1, high=MAX_SAMPLES))
            if needs_stats:
                s = art.meta.get("stats")
                if not isinstance(s, Mapping) or any(
                    not isinstance(s.get(k), (int, float)) for k in STAT_NAMES
                ):
                    raise InvalidArtifact(
                        f"the delta from {w} lacks the statistics {', '.join(STAT_NAMES)}"
                    )
                stats.append({k: float(s[k]) for k in STAT_NAMES})
            arts.append(art)
        ac = self._actor_critic(state)
        weights = fedavg_weights(counts) if ac is None else ac.act(counts, stats)
        if ac is not None:
            state.data["actor_critic"]["state"] = _json(ac.state_dict())
        state.data["pending_weights"] = weights.tolist()
        if not secure:
            deltas = [_array(a, "delta", size=n_params) for a in arts]
            return self._s_finish_round(ctx, state, weighted_sum(deltas, weights))
        # Secure aggregation: the deltas stay encrypted under the key holder's key; the server
        # computes the weighted sum on ciphertexts (its weights are plaintext to it).
        holder = workers[0]
        kh = ctx.public_key(holder)
        total: paillier.EncryptedArray | None = None
        for art, w in zip(arts, weights):
            enc = read_enc(art, "delta", kh, rows=n_params, max_abs=float(2**DELTA_BITS))
            term = enc * float(w)
            total = term if total is None else total + term
        if total is None:
            raise VflError("hfl needs at least one worker")
        packed = paillier.pack(total, value_bits=_sum_value_bits(len(workers)))
        # A mask uniform modulo n (not a bounded one): the key holder sees uniformly random
        # residues, whatever the sum; packing first keeps it to one decryption per few values.
        masked, mask = paillier.mask(packed.ciphertexts)
        state.data["sum_mask"] = save_mask(mask)
        state.data["sum_layout"] = packed.meta()
        state.phase = "wait-sum"
        request = enc_member("sum", masked)
        return [Outgoing(holder, SUM_REQUEST, "sum-request", [request], {"values": n_params}, t)]

    def _s_sum(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        t = int(state.data["t"])
        holder = self.workers(ctx)[0]
        art = need(received, holder, SUM_REPLY)
        self._check_round(art, t)
        mask = load_mask(state.data.pop("sum_mask"))
        layout = state.data.pop("sum_layout")
        raw = read_ints(art, "sum", len(mask.offsets))
        total = unpack_sum(raw, mask, layout)
        if total.size != state.arrays["master"].size:
            raise InvalidArtifact(
                f"the sum from {holder} holds {total.size} values, expected {state.arrays['master'].size}"
            )
        state.data["secure_rounds"] = int(state.data.get("secure_rounds", 0)) + 1
        return self._s_finish_round(ctx, state, total)

    def _s_finish_round(
        self, ctx: PartyContext, state: JobState, total: np.ndarray
    ) -> list[Outgoing]:
        params = ctx.params
        t = int(state.data["t"])
        spec = state.data["spec"]
        X, y, split = self._s_data(ctx, state)
        before = state.arrays["master"]
        master = apply_sum(before, total, params["server_learning_rate"])
        val_loss = model_loss(spec, master, X[split.train], y[split.train])
        weights = state.data.pop("pending_weights")
        state.data["node_weights"].append(weights)
        if params["dp_clip"] > 0:
            _account(state, params, weights)
        ac = self._actor_critic(state)
        record: dict[str, Any] = {"round": t + 1, "val_loss": val_loss}
        if ac is not None:
            learned = ac.learn(state.data["history"][-1]["val_loss"] - val_loss)
            record["reward"] = learned["reward"]
            policy = ac.prev_probs if ac.prev_probs is not None else np.asarray(weights)
            state.data["policy"].append(policy.tolist())
            state.data["actor_critic"]["state"] = _json(ac.state_dict())
        else:
            state.data["policy"].append(weights)
        state.data["history"].append(record)
        state.arrays["master"] = master
        t += 1
        state.data["t"] = t
        final = t >= params["rounds"]
        publisher = self._publisher(state)
        if final or t % params["full_every"] == 0:
            update: SparseUpdate | FullUpdate = publisher.full(master)
        else:
            update = publisher.realtime(master, k_fraction=params["realtime_k"])
        out = self._publish(ctx, state, publisher, update, final=final)
        meta = {"n_params": int(master.size), "final": final}
        out += [
            Outgoing(w, MODEL, "model", [ndarray_member("model", master)], meta, t)
            for w in self.workers(ctx)
        ]
        if not final:
            state.phase = "wait-deltas"
            return out
        from vfl_cli.metrics import classification_metrics  # scikit-learn: slow to import

        scores = model_predict(spec, master, X[split.test])
        metrics = {"test": classification_metrics(y[split.test], scores)}
        state.phase = "done"
        state.done = True
        state.results = {
            "metrics": metrics,
            "node_weights": state.data["node_weights"],
            "policy": state.data["policy"],
            "nodes": state.data["nodes"],
            "round_history": state.data["history"],
            "privacy": privacy_summary(params, state),
            "model": model_card(ctx, state),
        }
        return out

    # ----- worker -------------------------------------------------------------------------------
    def _w_round(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        server = self.server(ctx)
        art = need(received, server, MODEL)
        t = int(state.data.get("t", 0))
        self._check_round(art, t)
        if t == 0:
            columns = meta_list(art, "columns")
            _check_columns(ctx.features, columns, server, ctx.name)
            spec = art.meta.get("spec")
            if not isinstance(spec, list) or spec != model_spec(ctx.params):
                raise InvalidArtifact(
                    f"the model from {server} has another spec than the job's parameters name"
                )
            state.data.update(columns=columns, spec=spec)
            state.arrays["mean"] = _array(art, "mean", size=len(columns))
            state.arrays["scale"] = _array(art, "scale", size=len(columns))
            if np.any(state.arrays["scale"] <= 0):
                raise InvalidArtifact(f"the standardisation from {server} has a scale <= 0")
        spec = state.data["spec"]
        n_params = art.meta.get("n_params")
        master = _array(art, "model", size=n_params if isinstance(n_params, int) else None)
        state.data["n_params"] = int(master.size)
        if art.meta.get("final"):
            state.arrays["model"] = master
            state.phase = "done"
            state.done = True
            state.results = {"model": model_card(ctx, state, master=master)}
            return []
        X, y = _labelled(ctx, state.data["columns"])
        X = _standardiser(state).transform(X)
        params = ctx.params
        node = self.workers(ctx).index(ctx.name)
        delta = local_train(
            master,
            spec,
            X,
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
            meta["columns"] = state.data["columns"]
        member = self._delta_member(ctx, delta.values)
        state.data["t"] = t + 1
        is_holder = params["secure_aggregation"] and node == 0
        state.phase = "wait-request" if is_holder else "wait-model"
        return [Outgoing(server, DELTA, "delta", [member], meta, t)]

    def _delta_member(self, ctx: PartyContext, values: np.ndarray) -> Member:
        """What leaves the worker: its delta, DP-noised if the job says so, then encrypted under
        the key holder's key (secure aggregation, the default) or, if the job turned that off,
        as a plain array."""
        params = ctx.params
        if params["dp_clip"] > 0:
            values = private_delta(
                values, params["dp_clip"], params["dp_noise_multiplier"], len(self.workers(ctx))
            )
        if not params["secure_aggregation"]:
            return ndarray_member("delta", values)
        if np.abs(values).max(initial=0.0) > 2.0**DELTA_BITS:
            raise VflError(
                f"the delta exceeds 2**{DELTA_BITS} (training diverged): lower learning_rate"
            )
        holder = ctx.public_key(self.workers(ctx)[0])
        return enc_member("delta", paillier.encrypt(holder, values))

    def _w_decrypt(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        """The key holder decrypts the server's masked sum: uniformly random residues to it."""
        server = self.server(ctx)
        art = need(received, server, SUM_REQUEST)
        t = int(state.data["t"]) - 1
        self._check_round(art, t)
        priv = ctx.private_key()
        request = read_enc(art, "sum", priv.public)
        # Only as many ciphertexts as one packed weighted sum of the model needs: a bound on
        # what a request can ask to have decrypted (see the protocol doc's limits).
        n_params = int(state.data["n_params"])
        slot_bits = _sum_value_bits(len(self.workers(ctx))) + 2 + paillier.GUARD_BITS
        expected = -(-n_params // ((priv.public.bits - 1) // slot_bits))
        if request.size != expected:
            raise InvalidArtifact(
                f"the sum request from {server} holds {request.size} ciphertexts, a packed sum of "
                f"{n_params} values needs {expected}"
            )
        raw = priv.decrypt_raw(request)
        state.phase = "wait-model"
        return [
            Outgoing(
                server, SUM_REPLY, "sum-reply", [ints_member("sum", raw, priv.public.n)], {}, t
            )
        ]

    # ----- predictor ----------------------------------------------------------------------------
    def _p_update(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        server = self.server(ctx)
        art = need(received, server, UPDATE)
        m = art.members.get("update")
        if m is None or m.type != "ndarray":
            raise InvalidArtifact(f"{art.kind} from {server} lacks the update member")
        body = art.array("update")
        if body.dtype != np.uint8 or body.ndim != 1:
            raise InvalidArtifact(f"the update from {server} is {body.dtype}, expected uint8 bytes")
        update = update_from_bytes(body.tobytes())
        if art.meta.get("version") != update.version or art.meta.get("update") != update.kind:
            raise InvalidArtifact(
                f"the update from {server} says version {art.meta.get('version')!r} "
                f"({art.meta.get('update')!r}) in its manifest but holds {update.kind} version {update.version}"
            )
        first = state.phase == "start"
        if first:
            columns = meta_list(art, "columns")
            _check_columns(ctx.features, columns, server, ctx.name, subset=True)
            spec = art.meta.get("spec")
            if not isinstance(spec, list) or spec != model_spec(ctx.params):
                raise InvalidArtifact(
                    f"the update from {server} has another spec than the job's parameters name"
                )
            mean = _array(art, "mean", size=len(columns))
            scale = _array(art, "scale", size=len(columns))
        else:
            columns, spec = state.data["columns"], state.data["spec"]
        replica = PredictionReplica(spec, len(columns))
        replica.version = int(state.data.get("version", 0))
        replica.params = state.arrays.get("replica")
        try:
            replica.apply(update)
        except VflError as exc:
            raise InvalidArtifact(f"{art.kind} {art.seq} from {server}: {exc}") from None
        # Everything is checked: only now change the state.
        if first:
            state.data.update(columns=columns, spec=spec)
            state.arrays["mean"], state.arrays["scale"] = mean, scale
        state.arrays["replica"] = replica.params if replica.params is not None else np.zeros(0)
        state.data["version"] = replica.version
        state.data["round"] = art.round
        state.data.setdefault("applied", []).append(
            {"version": update.version, "kind": update.kind, "round": art.round}
        )
        state.phase = "serving"
        if art.meta.get("final"):
            state.phase = "done"
            state.done = True
            state.results = {
                "model": model_card(ctx, state, master=replica.params),
                "update_version": replica.version,
            }
        return []


# ----- privacy accounting --------------------------------------------------------------------------
def _account(state: JobState, params: Mapping[str, Any], weights: Sequence[float]) -> None:
    """Add one round's Renyi DP to the server's running totals (see :mod:`vfl_cli.hfl.privacy`).

    ``dp_rdp``: what the round's weighted sum (the master model, seen by everyone) costs the
    node it depends on most. ``dp_rdp_each``: what one node's own noised delta costs it, for a
    server that sees deltas one by one (secure aggregation off): its noise share alone, ``z /
    sqrt(N)``.
    """
    z = float(params["dp_noise_multiplier"])
    n = len(weights)
    rounds = [
        ("dp_rdp", effective_multiplier(weights, z)),
        ("dp_rdp_each", z / math.sqrt(n)),
    ]
    for key, multiplier in rounds:
        previous = np.asarray(state.data.get(key, [0.0] * len(RDP_ORDERS)), dtype=np.float64)
        state.data[key] = (previous + gaussian_rdp(multiplier)).tolist()
    state.data.setdefault("dp_multipliers", []).append(effective_multiplier(weights, z))


def privacy_summary(params: Mapping[str, Any], state: JobState) -> dict[str, Any]:
    """What the job's results say about its privacy: aggregation mode and DP-FedAvg's epsilon."""
    secure = bool(params["secure_aggregation"])
    out: dict[str, Any] = {
        "secure_aggregation": secure,
        "min_nodes": int(params["min_nodes"]),
        "server_sees": "each round's weighted sum" if secure else "every node's delta",
        "dp": None,
    }
    if params["dp_clip"] <= 0 or "dp_rdp" not in state.data:
        return out
    delta = float(params["dp_delta"])
    eps, order = epsilon(state.data["dp_rdp"], delta)
    dp: dict[str, Any] = {
        "clip": float(params["dp_clip"]),
        "noise_multiplier": float(params["dp_noise_multiplier"]),
        "round_multipliers": state.data.get("dp_multipliers", []),
        "delta": delta,
        "epsilon": eps,
        "rdp_order": order,
        "accountant": "RDP of the Gaussian mechanism, node level, no sampling (Mironov 2017; "
        "Balle et al. 2020 conversion)",
    }
    if not secure:
        dp["epsilon_each_delta"] = epsilon(state.data["dp_rdp_each"], delta)[0]
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
    n = mask.n
    slot_bits, slots, count = int(layout["slot_bits"]), int(layout["slots"]), int(layout["count"])
    offset = int(str(layout["offset"]), 16)
    width = (1 << slot_bits) - 1
    values: list[int] = []
    for k, (y, r) in enumerate(zip(raw, mask.offsets)):
        plain = (int(y) - r - mask.shift) % n
        used = min(slots, count - k * slots)
        if plain >> (slot_bits * used):
            raise InvalidArtifact(
                "the decrypted sum does not unmask to a packed value (wrong key or tampered reply)"
            )
        for j in range(used):
            s = (plain >> (slot_bits * j)) & width
            if s > 2 * offset:
                raise InvalidArtifact(
                    "a slot of the decrypted sum exceeds its bound (overflow or tampered reply)"
                )
            values.append(s - offset)
    if len(values) != count:
        raise InvalidArtifact(f"the decrypted sum holds {len(values)} values, expected {count}")
    return encoding.decode(values, int(layout["exponent"]))


# ----- model cards, scoring, status ---------------------------------------------------------------
def model_card(
    ctx: PartyContext, state: JobState, *, master: np.ndarray | None = None
) -> dict[str, Any]:
    """The model card every party keeps: spec, columns, parameters, rounds.

    A logistic model lists its weights per feature; an MLP lists its layers (every party holds
    the whole model, in plaintext).
    """
    flat = state.arrays["master"] if master is None else master
    columns = list(state.data["columns"])
    card: dict[str, Any] = {
        "protocol": "hfl",
        "job": ctx.job,
        "party": ctx.name,
        "role": ctx.role,
        "alignment": None,  # multi-node training: same columns everywhere, nothing to align
        "params": dict(ctx.params),
        "features": columns,
        "spec": state.data["spec"],
        "n_params": int(flat.size),
        "rounds": int(ctx.params["rounds"]),
        "rounds_run": int(ctx.params["rounds"]),
        "local_epochs": int(ctx.params["local_epochs"]),
        "weights": {},
    }
    if ctx.params["model"] == "logistic":
        card["weights"] = {c: float(v) for c, v in zip([*columns, "(intercept)"], flat)}
        return card
    layers, width = [], len(columns)
    for layer in state.data["spec"]:
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
    card["layers"] = layers
    return card


def _current_model(role: str, state: JobState) -> np.ndarray:
    key = {"server": "master", "worker": "model", "predictor": "replica"}.get(role, "")
    model = state.arrays.get(key)
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
    model = _current_model(role, state)
    columns = list(state.data["columns"])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"the rows to score lack the model's column(s) {', '.join(missing[:5])}")
    X = _standardiser(state).transform(numeric_matrix(df, columns, what="the rows to score"))
    return model_predict(state.data["spec"], model, X)


def status(role: str, params: Mapping[str, Any], state: JobState) -> dict[str, Any]:
    """Where a party stands in an hfl job (for ``vfl hfl status``)."""
    out: dict[str, Any] = {
        "role": role,
        "phase": state.phase,
        "done": state.done,
        "rounds": params["rounds"],
    }
    if role == "server":
        out["round"] = int(state.data.get("t", 0))
        out["update_version"] = int(state.data.get("publisher_version", 0))
        history = state.data.get("history", [])
        if history:
            out["val_loss"] = history[-1]["val_loss"]
        if state.data.get("node_weights"):
            out["last_node_weights"] = dict(
                zip(state.data["nodes"], state.data["node_weights"][-1])
            )
    elif role == "worker":
        out["round"] = int(state.data.get("t", 0))
    else:
        out["update_version"] = int(state.data.get("version", 0))
        out["round"] = int(state.data.get("round", 0))
        out["applied"] = state.data.get("applied", [])[-5:]
    if "metrics" in state.results:
        out["metrics"] = state.results["metrics"]
    return out
