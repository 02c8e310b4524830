"""Hetero logistic and linear regression without a third party (``hetero-lr``, ``hetero-linear``).

Who holds what: the active party A holds the labels ``y`` and features ``X_A`` (plus the
intercept); passive parties P1..Pk hold features ``X_j``. Every party holds its own Paillier key
and its own weights; rows are those of a finished ``psi`` job, split into train and test by the
job's seed (every party derives the same split and mini-batches, nothing is sent for it).

Model: ``z = X_A w_A + b + sum_j X_j w_j``. Per mini-batch of ``m`` rows the residual is
``d = c z + e`` with ``c = 1/4, e = 1/2 - y`` for logistic regression (gradient of the
second-order Taylor expansion of the log-loss at 0) and ``c = 1, e = -y`` for linear regression
(squared loss). Party X's gradient is ``X_X^T d / m``. Write ``a = c u_A + e`` (known to A only)
and ``u_j = X_j w_j`` (known to P_j only).

Keys (this is the scheme of Yang et al. 2019 generalised to k passive parties): A's gradient is
computed under P1's key K1; every passive party's gradient under A's key KA.

One mini-batch, four hand-offs (t is the global batch counter, carried as the artifact round):

1. ``hetero/partial``  Pj -> A: ``[[c u_j]]_K1``. With k > 1, also ``hetero/peer-partial``
   Pj -> Pl (every other passive party, directly): ``[[c u_j]]_KA``.
2. ``hetero/residual``  A -> Pj: ``[[a]]_KA``. To P1 also A's gradient request:
   ``pack(mask([[X_A^T d]]_K1))`` with ``[[d]]_K1 = a + sum_j [[c u_j]]_K1``; at the end of an
   epoch also a loss request (below).
3. ``hetero/gradient``  Pj -> A: ``pack(mask([[X_j^T d]]_KA))`` with
   ``[[d]]_KA = [[a]]_KA + sum_{l != j} [[c u_l]]_KA + c u_j``. P1 also returns the decrypted
   slots of A's request (still masked) and its answer to the loss request.
4. ``hetero/reply``  A -> Pj: the decrypted slots of Pj's request (still masked), and whether
   training goes on. Each party removes its own mask and updates its own weights. A passive
   party's next partial goes out in the same step.

Loss (for the history and early stopping), once per epoch on (a sample of) its last batch: A
sends P1 ``[[D_i + s_i]]_K1`` (``D`` the encoded residuals, ``s`` bounded random masks) and
``[[sum_i s_i D_i + rho]]_K1``; P1 returns ``Q = sum_i (D_i + s_i)^2`` and the masked cross
term, from which A gets ``sum_i D_i^2`` exactly, hence the loss (the Taylor loss is
``log 2 - 1/2 + 2 mean(d^2)``; the squared loss is ``mean(d^2)``).

Evaluation at the end, on the test rows only: the passive parties send ``[[u_j]]_KA`` (with
k > 1 to P1, which sums them and sends one vector to A); A decrypts the sum of the passive
parties' partial scores, adds its own, and computes the metrics.

What each party learns (semi-honest parties, no collusion):

* A: its own gradients, the loss once per epoch, and at the end the model's scores on the test
  rows. With one passive party these scores let A compute that party's partial scores on the
  test rows (as any prediction would); with several, only their sum.
* P1: values masked with 40-bit statistical masks (A's gradient, the loss sample), and sums of
  them: nothing about A's data or the labels.
* Every passive party: its own gradients. Ciphertexts under a key it does not hold otherwise.
* Nobody sees another party's features, labels, partial scores, residuals or gradients.
  Everyone knows the row counts, batch sizes and the number of features of each party (sizes
  of the messages).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member, ndarray_member
from vfl_cli.crypto import paillier
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.metrics import classification_metrics, regression_metrics
from vfl_cli.models.features import Split, numeric_matrix, prepare, split_rows
from vfl_cli.models.optim import EarlyStopping, make_optimizer
from vfl_cli.models.reference import minibatches
from vfl_cli.protocol.base import Expect, JobState, Outgoing, PartyContext, Protocol, need

PARTIAL = "hetero/partial"
PEER_PARTIAL = "hetero/peer-partial"
RESIDUAL = "hetero/residual"
GRADIENT = "hetero/gradient"
REPLY = "hetero/reply"
SCORES = "hetero/scores"
PEER_SCORES = "hetero/peer-scores"

#: Public bounds of the protocol (the same for every job, so mask widths leak nothing).
PARTIAL_BOUND = 2.0**24  # |c u_j| per row
GRADIENT_VALUE_BITS = 100  # |X^T d| encoded (exponent -16): |X^T d| <= 2**36
RESIDUAL_VALUE_BITS = 60  # |d| encoded (exponent -8): |d| <= 2**28
STAT_BITS = 40

DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 0,
    "optimizer": "adam",
    "learning_rate": 0.05,
    "momentum": 0.0,
    "l1": 0.0,
    "l2": 0.0,
    "schedule": "constant",
    "decay": 0.01,
    "early_stopping_patience": 0,
    "early_stopping_tol": 1e-4,
    "loss_sample": 2048,
    "test_fraction": 0.2,
    "seed": 42,
}


# ----- parameters ------------------------------------------------------------------------------
def check_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(DEFAULTS) - {"alignment"}
    if unknown:
        raise VflError(
            f"unknown training parameter(s) {sorted(unknown)}; allowed: alignment, {', '.join(DEFAULTS)}"
        )
    if not params.get("alignment"):
        raise VflError("training needs alignment=<psi job id>: align the parties first (vfl align start)")
    out: dict[str, Any] = {"alignment": str(params["alignment"])}
    for key, default in DEFAULTS.items():
        value = params.get(key, default)
        try:
            out[key] = type(default)(value)
        except (TypeError, ValueError):
            raise VflError(f"{key} must be a {type(default).__name__}, not {value!r}") from None
    if out["epochs"] < 1 or out["batch_size"] < 0 or out["loss_sample"] < 1:
        raise VflError("epochs and loss_sample must be >= 1 and batch_size >= 0 (0: full batch)")
    _optimizer(out)  # refuse unknown optimisers and bad values before anyone starts
    split_rows(10, out["test_fraction"], out["seed"])
    return out


def _optimizer(p: Mapping[str, Any]) -> Any:
    kw: dict[str, Any] = {"lr": p["learning_rate"], "l1": p["l1"], "l2": p["l2"],
                          "schedule": p["schedule"], "decay": p["decay"]}
    if p["optimizer"].lower() == "sgd":
        kw["momentum"] = p["momentum"]
    return make_optimizer(p["optimizer"], **kw)


# ----- the party's data ------------------------------------------------------------------------
class PartyData:
    """This party's aligned, split, standardised features (and labels for A)."""

    def __init__(self, ctx: PartyContext, *, intercept: bool) -> None:
        alignment = ctx.params["alignment"]
        info = ctx.job_info(alignment)
        if info["protocol"] != "psi" or not info["done"]:
            raise VflError(f"job {alignment} is not a finished alignment (psi) job on {ctx.name}")
        self.fingerprint = str(info["results"]["fingerprint"])
        rows = ctx.job_arrays(alignment)["aligned_rows"]
        df = ctx.data(alignment).iloc[rows]
        self.n = len(rows)
        self.split: Split = split_rows(self.n, ctx.params["test_fraction"], ctx.params["seed"])
        raw = numeric_matrix(df, ctx.features, what=ctx.name)
        self.X, self.standardiser = prepare(raw, self.split)
        if intercept:
            self.X = np.hstack([self.X, np.ones((self.n, 1))])
        self.y: np.ndarray | None = None
        if ctx.label_column:
            y = numeric_matrix(df, [ctx.label_column], what=ctx.name)[:, 0]
            if np.isnan(y).any():
                raise DataError(f"{ctx.name}: the label column {ctx.label_column!r} has missing values")
            self.y = y
        batch = ctx.params["batch_size"] or None
        self.batches_per_epoch = len(minibatches(len(self.split.train), batch, seed=0, epoch=0))

    def batch_rows(self, params: Mapping[str, Any], epoch: int, batch: int) -> np.ndarray:
        idx = minibatches(len(self.split.train), params["batch_size"] or None,
                          seed=params["seed"], epoch=epoch)[batch]
        return self.split.train[idx]


# ----- artifact members ------------------------------------------------------------------------
def enc_member(name: str, x: paillier.EncryptedArray) -> Member:
    return Member(name, "paillier", x.to_bytes(),
                  {"key_id": x.public.fingerprint, "shape": list(x.shape), "exponent": x.exponent})


def read_enc(art: Artifact, name: str, public: paillier.PublicKey, *, rows: int | None = None,
             max_abs: float | None = None) -> paillier.EncryptedArray:
    m = art.members.get(name)
    if m is None or m.type != "paillier":
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks ciphertexts {name!r}")
    if m.info.get("key_id") != public.fingerprint:
        raise InvalidArtifact(
            f"{name!r} from {art.sender} was encrypted under key {str(m.info.get('key_id'))[:16]}, "
            f"expected {public.fingerprint[:16]}"
        )
    shape = [int(s) for s in m.info.get("shape", [])]
    if rows is not None and shape != [rows]:
        raise InvalidArtifact(f"{name!r} from {art.sender} holds {shape} values, expected {rows} (mismatched rows)")
    return paillier.EncryptedArray.from_bytes(public, m.data, shape, int(m.info["exponent"]), max_abs=max_abs)


def packed_member(name: str, p: paillier.Packed) -> Member:
    return Member(name, "paillier", p.to_bytes(),
                  {"key_id": p.public.fingerprint, "shape": [p.ciphertexts.size], "exponent": p.exponent,
                   "packed": p.meta()})


def read_packed(art: Artifact, name: str, public: paillier.PublicKey) -> paillier.Packed:
    m = art.members.get(name)
    if m is None or "packed" not in m.info:
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks packed ciphertexts {name!r}")
    if m.info.get("key_id") != public.fingerprint:
        raise InvalidArtifact(f"{name!r} from {art.sender} is not under key {public.fingerprint[:16]}")
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
    return [int.from_bytes(m.data[i * width:(i + 1) * width], "big") for i in range(count)]


def save_mask(m: paillier.Mask) -> dict[str, Any]:
    return {"exponent": m.exponent, "shape": list(m.shape), "offsets": [format(o, "x") for o in m.offsets],
            "shift": format(m.shift, "x"), "bound": None if m.bound is None else format(m.bound, "x"),
            "fingerprint": m.fingerprint, "n": format(m.n, "x")}


def load_mask(d: Mapping[str, Any]) -> paillier.Mask:
    return paillier.Mask(d["fingerprint"], int(d["n"], 16), int(d["exponent"]), tuple(d["shape"]),
                         tuple(int(o, 16) for o in d["offsets"]), int(d["shift"], 16),
                         None if d["bound"] is None else int(d["bound"], 16))


def exact_unmask(raw: int, m: paillier.Mask, index: int = 0) -> int:
    """The exact signed integer under a mask (no decoding to floats)."""
    v = (int(raw) - m.offsets[index] - m.shift) % m.n
    return v - m.n if v > m.n // 2 else v


# ----- the protocol ----------------------------------------------------------------------------
class HeteroLinear(Protocol):
    """Shared state machine; subclasses fix the loss."""

    name = "hetero-linear"
    summary = "hetero linear regression (squared loss), no third party"
    task = "regression"
    c = 1.0

    def e(self, y: np.ndarray) -> np.ndarray:
        return -y

    def loss_from_mean_square(self, msq: float) -> float:
        return msq

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
        return check_params(params)

    # ----- what each party waits for ----------------------------------------------------------
    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        phase = state.phase
        if ctx.is_active:
            return {
                "start": [],
                "wait-partials": [Expect(p, PARTIAL) for p in ctx.passives],
                "wait-gradients": [Expect(p, GRADIENT) for p in ctx.passives],
                "wait-scores": [Expect(ctx.passives[0], SCORES)],
            }[phase]
        others = [p for p in ctx.passives if p != ctx.name]
        return {
            "start": [],
            "wait-residual": [Expect(ctx.active, RESIDUAL)] + [Expect(p, PEER_PARTIAL) for p in others],
            "wait-reply": [Expect(ctx.active, REPLY)],
            "collect-scores": [Expect(p, PEER_SCORES) for p in others],
        }[phase]

    def advance(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]) -> list[Outgoing]:
        data = PartyData(ctx, intercept=ctx.is_active)
        if ctx.is_active:
            handler = {"start": self._a_start, "wait-partials": self._a_residual,
                       "wait-gradients": self._a_update, "wait-scores": self._a_evaluate}[state.phase]
        else:
            handler = {"start": self._p_start, "wait-residual": self._p_gradient,
                       "wait-reply": self._p_update, "collect-scores": self._p_collect}[state.phase]
        return handler(ctx, state, received, data)

    # ----- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _position(state: JobState) -> tuple[int, int, int]:
        d = state.data
        return int(d["t"]), int(d["epoch"]), int(d["batch"])

    def _check_round(self, art: Artifact, state: JobState) -> None:
        t = int(state.data["t"])
        if art.round != t:
            raise InvalidArtifact(
                f"{art.kind} from {art.sender} is for round {art.round}, but this party is at round {t} "
                "(stale or replayed)"
            )

    def _init_weights(self, state: JobState, ctx: PartyContext, width: int) -> None:
        state.arrays["weights"] = np.zeros(width)
        state.data.update(t=0, epoch=0, batch=0, optimizer=_optimizer(ctx.params).state_dict(), history=[])

    def _step_weights(self, ctx: PartyContext, state: JobState, grad: np.ndarray, intercept: bool) -> None:
        opt = _optimizer(ctx.params)
        opt.load_state_dict(state.data["optimizer"])
        w = state.arrays["weights"]
        penalised = np.ones(w.shape, dtype=bool)
        if intercept:
            penalised[-1] = False
        state.arrays["weights"] = opt.step(w, grad, mask=penalised)
        state.data["optimizer"] = _json_state(opt.state_dict())

    def _advance_position(self, state: JobState, data: PartyData) -> None:
        d = state.data
        d["t"] += 1
        d["batch"] += 1
        if d["batch"] >= data.batches_per_epoch:
            d["batch"] = 0
            d["epoch"] += 1

    # ----- passive party ------------------------------------------------------------------------
    def _p_start(self, ctx: PartyContext, state: JobState, received: Any, data: PartyData) -> list[Outgoing]:
        if data.y is not None:
            raise DataError(f"{ctx.name} is passive but has labels")
        self._init_weights(state, ctx, data.X.shape[1])
        state.data["fingerprint"] = data.fingerprint
        return self._p_partials(ctx, state, data)

    def _p_partials(self, ctx: PartyContext, state: JobState, data: PartyData) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        cu = self.c * (data.X[rows] @ state.arrays["weights"])
        if np.abs(cu).max(initial=0.0) > PARTIAL_BOUND:
            raise VflError("partial scores exploded (training diverged): lower learning_rate")
        meta = {"epoch": epoch, "batch": batch, "alignment": data.fingerprint, "rows": len(rows)}
        tick = ctx.progress(f"round {t}: encrypting partial scores", None)
        k1 = ctx.public_key(ctx.passives[0])
        out = [Outgoing(ctx.active, PARTIAL, "partial", [enc_member("cu", paillier.encrypt(k1, cu))], meta, t)]
        others = [p for p in ctx.passives if p != ctx.name]
        if others:
            enc_a = paillier.encrypt(ctx.public_key(ctx.active), cu)
            out += [Outgoing(p, PEER_PARTIAL, "peer-partial", [enc_member("cu", enc_a)], meta, t) for p in others]
        tick(len(rows))
        state.phase = "wait-residual"
        return out

    def _p_gradient(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                    data: PartyData) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        res = need(received, ctx.active, RESIDUAL)
        self._check_round(res, state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        ka = ctx.public_key(ctx.active)
        d = read_enc(res, "a", ka, rows=len(rows))
        for p, art in received.items():
            if art.kind == PEER_PARTIAL:
                self._check_round(art, state)
                d = d + read_enc(art, "cu", ka, rows=len(rows))
        d = d + self.c * (data.X[rows] @ state.arrays["weights"])
        grad = paillier.plain_matmul(data.X[rows].T, d)
        masked, m = paillier.mask(grad, value_bits=GRADIENT_VALUE_BITS, stat_bits=STAT_BITS)
        packed = paillier.pack(masked)
        state.data["grad_mask"] = save_mask(m)
        members = [packed_member("grad_request", packed)]
        meta: dict[str, Any] = {"epoch": epoch, "batch": batch}
        if ctx.name == ctx.passives[0]:
            members += self._p1_decrypt_for_active(ctx, res, meta)
        state.phase = "wait-reply"
        return [Outgoing(ctx.active, GRADIENT, "gradient", members, meta, t)]

    def _p1_decrypt_for_active(self, ctx: PartyContext, res: Artifact, meta: dict[str, Any]) -> list[Member]:
        """P1 decrypts A's masked requests under its own key; the results stay masked."""
        priv = ctx.private_key()
        own = priv.public
        request = read_packed(res, "grad_request", own)
        members = [ints_member("grad_reply", paillier.decrypt_packed(priv, request), own.n)]
        meta["grad_count"] = request.count
        if "loss_values" in res.members:
            values = read_enc(res, "loss_values", own)
            raw = priv.decrypt_raw(values)
            q = sum(int(v) * int(v) for v in raw)
            if q >= own.n:
                raise VflError("loss_sample is too large for this key size; lower it")
            cross = priv.decrypt_raw(read_enc(res, "loss_cross", own))
            members.append(ints_member("loss_reply", [q, cross[0]], own.n))
        return members

    def _p_update(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                  data: PartyData) -> list[Outgoing]:
        reply = need(received, ctx.active, REPLY)
        self._check_round(reply, state)
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        m = load_mask(state.data.pop("grad_mask"))
        grad = paillier.unmask(read_ints(reply, "grad_reply", len(m.offsets)), m) / len(rows)
        self._step_weights(ctx, state, grad, intercept=False)
        self._advance_position(state, data)
        nxt = reply.meta.get("next")
        if nxt == "batch":
            return self._p_partials(ctx, state, data)
        if nxt != "evaluate":
            raise InvalidArtifact(f"reply from {ctx.active} says next={nxt!r}")
        return self._p_scores(ctx, state, data)

    def _p_scores(self, ctx: PartyContext, state: JobState, data: PartyData) -> list[Outgoing]:
        u = data.X[data.split.test] @ state.arrays["weights"]
        out = send_scores(ctx, u, int(state.data["t"]))
        if out is None:
            state.phase = "collect-scores"  # P1 first gathers the other passive parties' scores
            return []
        self._finish_passive(ctx, state, data)
        return out

    def _p_collect(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                   data: PartyData) -> list[Outgoing]:
        u = data.X[data.split.test] @ state.arrays["weights"]
        self._finish_passive(ctx, state, data)
        return collect_scores(ctx, u, received, int(state.data["t"]))

    def _finish_passive(self, ctx: PartyContext, state: JobState, data: PartyData) -> None:
        state.arrays["mean"] = data.standardiser.mean
        state.arrays["scale"] = data.standardiser.scale
        state.phase = "done"
        state.done = True
        state.results = self._model_card(ctx, state, metrics={})

    # ----- active party -------------------------------------------------------------------------
    def _a_start(self, ctx: PartyContext, state: JobState, received: Any, data: PartyData) -> list[Outgoing]:
        if data.y is None:
            raise DataError(f"{ctx.name} is the active party but has no label column")
        if self.task == "binary" and not np.isin(data.y, (0.0, 1.0)).all():
            raise DataError(f"{ctx.label_column!r} must hold 0/1 labels for {self.name}")
        self._init_weights(state, ctx, data.X.shape[1])
        state.data["fingerprint"] = data.fingerprint
        state.phase = "wait-partials"
        return []

    def _a_residual(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                    data: PartyData) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        k1 = ctx.public_key(ctx.passives[0])
        a = self.c * (data.X[rows] @ state.arrays["weights"]) + self.e(data.y[rows])
        d = None
        for p in ctx.passives:
            art = need(received, p, PARTIAL)
            self._check_round(art, state)
            if art.meta.get("alignment") != data.fingerprint:
                raise InvalidArtifact(f"{p} trains on another alignment than {ctx.name} (mismatched rows)")
            # no declared bound: the masks' fixed widths are public, and an overflow is caught
            # exactly when the masked slots are decrypted and unmasked
            part = read_enc(art, "cu", k1, rows=len(rows))
            d = part if d is None else d + part
        d = d + a
        grad = paillier.plain_matmul(data.X[rows].T, d)
        masked, m = paillier.mask(grad, value_bits=GRADIENT_VALUE_BITS, stat_bits=STAT_BITS)
        state.data["grad_mask"] = save_mask(m)
        p1_members = [packed_member("grad_request", paillier.pack(masked))]
        last = batch == data.batches_per_epoch - 1
        if last:
            p1_members += self._loss_request(ctx, state, d)
        enc_a = paillier.encrypt(ctx.public_key(ctx.name), a)
        meta = {"epoch": epoch, "batch": batch}
        out = []
        for p in ctx.passives:
            members = [enc_member("a", enc_a)] + (p1_members if p == ctx.passives[0] else [])
            out.append(Outgoing(p, RESIDUAL, "residual", members, meta, t))
        state.phase = "wait-gradients"
        return out

    def _loss_request(self, ctx: PartyContext, state: JobState, d: paillier.EncryptedArray) -> list[Member]:
        size = min(len(d), int(ctx.params["loss_sample"]))
        pick = np.sort(ctx.rng.choice(len(d), size=size, replace=False))
        sample = d[pick]
        masked, m = paillier.mask(sample, value_bits=RESIDUAL_VALUE_BITS, stat_bits=STAT_BITS)
        s = [m.shift + r for r in m.offsets]
        cross = (sample * np.array(s, dtype=object)).sum()
        cross_masked, cm = paillier.mask(cross)
        state.data["loss_mask"] = {"s": [format(v, "x") for v in s], "cross": save_mask(cm),
                                   "exponent": sample.exponent, "count": size}
        return [enc_member("loss_values", masked), enc_member("loss_cross", cross_masked)]

    def _a_update(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                  data: PartyData) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        priv = ctx.private_key()
        replies: dict[str, list[int]] = {}
        for p in ctx.passives:
            art = need(received, p, GRADIENT)
            self._check_round(art, state)
            replies[p] = paillier.decrypt_packed(priv, read_packed(art, "grad_request", priv.public))
        first = received[ctx.passives[0]]
        m = load_mask(state.data.pop("grad_mask"))
        grad = paillier.unmask(read_ints(first, "grad_reply", len(m.offsets)), m) / len(rows)
        if "loss_mask" in state.data:
            loss = self._loss_from_reply(first, state.data.pop("loss_mask"))
            state.data["history"].append({"epoch": epoch, "loss": loss})
        self._step_weights(ctx, state, grad, intercept=True)
        self._advance_position(state, data)
        nxt = "batch" if self._continue(ctx, state) else "evaluate"
        state.phase = "wait-partials" if nxt == "batch" else "wait-scores"
        if nxt == "evaluate" and len(data.split.test) == 0:
            state.phase = "wait-scores"
        n1 = priv.public.n
        return [Outgoing(p, REPLY, "reply", [ints_member("grad_reply", replies[p], n1)], {"next": nxt}, t)
                for p in ctx.passives]

    def _loss_from_reply(self, art: Artifact, lm: Mapping[str, Any]) -> float:
        q, cross_raw = read_ints(art, "loss_reply", 2)
        cross = exact_unmask(cross_raw, load_mask(lm["cross"]))
        s = [int(v, 16) for v in lm["s"]]
        sum_d2 = q - 2 * cross - sum(v * v for v in s)
        if sum_d2 < 0:
            raise InvalidArtifact("the loss reply is inconsistent (negative sum of squares)")
        scale = 16 ** (-2 * int(lm["exponent"]))
        msq = sum_d2 / scale / int(lm["count"])
        return float(self.loss_from_mean_square(msq))

    def _continue(self, ctx: PartyContext, state: JobState) -> bool:
        d = state.data
        if d["epoch"] >= ctx.params["epochs"]:
            return False
        patience = ctx.params["early_stopping_patience"]
        if patience and d["batch"] == 0:
            history = [h["loss"] for h in d["history"]]
            if EarlyStopping(ctx.params["early_stopping_tol"], patience).should_stop(history):
                d["stopped_early"] = True
                return False
        return True

    def _a_evaluate(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                    data: PartyData) -> list[Outgoing]:
        test = data.split.test
        art = need(received, ctx.passives[0], SCORES)
        passive_sum = ctx.private_key().decrypt(read_enc(art, "u", ctx.private_key().public, rows=len(test)))
        z = data.X[test] @ state.arrays["weights"] + passive_sum
        history = state.data["history"]
        metrics: dict[str, dict[str, Any]] = {"train": {"loss": history[-1]["loss"]} if history else {}}
        if len(test):
            metrics["test"] = self.evaluate(data.y[test], z)
        state.arrays["mean"] = data.standardiser.mean
        state.arrays["scale"] = data.standardiser.scale
        state.phase = "done"
        state.done = True
        card = self._model_card(ctx, state, metrics=metrics)
        card["split"] = {"test_ids": [str(i) for i in ctx.job_arrays(ctx.params["alignment"])["aligned_ids"][test]]}
        state.results = card
        return []

    def evaluate(self, y: np.ndarray, z: np.ndarray) -> dict[str, Any]:
        return regression_metrics(y, z)

    def _model_card(self, ctx: PartyContext, state: JobState, *, metrics: dict[str, Any]) -> dict[str, Any]:
        w = state.arrays["weights"]
        features = list(ctx.features) + (["(intercept)"] if ctx.is_active else [])
        return {
            "model": {
                "protocol": self.name,
                "job": ctx.job,
                "party": ctx.name,
                "alignment": ctx.params["alignment"],
                "params": dict(ctx.params),
                "features": features,
                "weights": {f: float(v) for f, v in zip(features, w)},
                "epochs_run": int(state.data["epoch"]),
                "stopped_early": bool(state.data.get("stopped_early", False)),
            },
            "metrics": metrics,
            "history": state.data.get("history", []),
        }


class HeteroLogistic(HeteroLinear):
    name = "hetero-lr"
    summary = "hetero logistic regression (binary), no third party"
    task = "binary"
    c = 0.25

    def e(self, y: np.ndarray) -> np.ndarray:
        return 0.5 - y

    def loss_from_mean_square(self, msq: float) -> float:
        return math.log(2.0) - 0.5 + 2.0 * msq

    def evaluate(self, y: np.ndarray, z: np.ndarray) -> dict[str, Any]:
        return classification_metrics(y, 1.0 / (1.0 + np.exp(-z)))


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


def collect_scores(ctx: PartyContext, u: np.ndarray, received: Mapping[str, Artifact], t: int) -> list[Outgoing]:
    """P1 adds its own partial scores to the other passive parties' (all under A's key)."""
    ka = ctx.public_key(ctx.active)
    total = paillier.encrypt(ka, u)
    for art in received.values():
        total = total + read_enc(art, "u", ka, rows=len(u))
    total = paillier.rerandomize(total)
    return [Outgoing(ctx.active, SCORES, "scores", [enc_member("u", total)], {"rows": len(u)}, t)]


def _json_state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in state.items()}


__all__ = ["HeteroLinear", "HeteroLogistic"]
