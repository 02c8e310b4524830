"""Hetero logistic and linear regression without a third party (``hetero-lr``, ``hetero-linear``).

Who holds what: the active party A holds the labels ``y`` and features ``X_A`` (plus the
intercept); passive parties P1..Pk hold features ``X_j``. Every party holds its own Paillier key
and its own weights; rows are those of a finished ``psi`` job, split into train and test by the
job's seed (every party derives the same split and mini-batches, nothing is sent for it).

Model: ``z = X_A w_A + b + sum_j X_j w_j``. Write ``a = X_A w_A + b`` (known to A only),
``u_j = X_j w_j`` (known to P_j only) and ``U = sum_j u_j``. Per mini-batch of ``m`` rows the
residual is linear in ``U``: ``d = slope * U + offset``, with

* linear regression (squared loss): ``slope = 1``, ``offset = a - y`` (exact);
* logistic regression, ``approximation = "centred"`` (default): the sigmoid expanded to first
  order around A's own score, ``slope = sigmoid'(a)`` and ``offset = sigmoid(a) - y``, per row;
* logistic regression, ``approximation = "taylor"``: the log-loss expanded at 0 (FATE's
  choice), ``slope = 1/4``, ``offset = a/4 + 1/2 - y``.

Party X's gradient is ``X_X^T d / m``.

Keys (this is the scheme of Yang et al. 2019 generalised to k passive parties): A's gradient is
computed under P1's key K1; every passive party's gradient under A's key KA.

One mini-batch, four hand-offs (t is the global batch counter, carried as the artifact round):

1. ``hetero/partial``  Pj -> A: ``[[u_j]]_K1``. With k > 1 and a public slope ``c``, also
   ``hetero/peer-partial`` Pj -> Pl (every other passive party, directly): ``[[c u_j]]_KA``.
2. ``hetero/residual``  A -> Pj: ``[[offset]]_KA`` and, for a per-row slope, ``[[slope]]_KA``.
   To P1 also A's gradient request ``pack(mask([[X_A^T d]]_K1))``, computed as
   ``(X_A * slope)^T [[U]]_K1 + X_A^T offset`` (the slope folds into the plaintext matrix, so
   the per-row products cost nothing extra); at the end of an epoch a loss request.
   (Per-row slope and k > 1: each Pj now sends every other passive party
   ``[[slope * u_j]]_KA``, one more hand-off.)
3. ``hetero/gradient``  Pj -> A: ``pack(mask([[X_j^T d]]_KA))`` with ``[[d]]_KA`` assembled by
   Pj from ``[[offset]]_KA``, its own ``slope * u_j`` and the other passive parties' parts.
   P1 also returns the decrypted slots of A's request (still masked) and its loss answer.
4. ``hetero/reply``  A -> Pj: the decrypted slots of Pj's request (still masked), and whether
   training goes on. Each party removes its own mask and updates its own weights. A passive
   party's next partial goes out in the same step.

Loss (for the history and early stopping), once per epoch (or after the first, every
``loss_every``-th and the last) on (a sample of) its last batch: A
sends P1 ``[[D_i + s_i]]_K1`` (``D`` the encoded residuals, ``s`` bounded random masks) and
``[[sum_i s_i D_i + rho]]_K1``; P1 returns ``Q = sum_i (D_i + s_i)^2`` and the masked cross
term, from which A gets ``sum_i D_i^2`` exactly, hence the loss: ``mean(d^2)`` is the squared
loss of linear regression and the Brier score of the centred logistic model; the Taylor loss is
``log 2 - 1/2 + 2 mean(d^2)``.

Evaluation at the end, on the test rows only: the passive parties send ``[[u_j]]_KA`` (with
k > 1 to P1, which sums them and sends one vector to A); A decrypts the sum of the passive
parties' partial scores, adds its own, and computes the metrics.

What each party learns (semi-honest parties, no collusion; "learns" = can compute from its job
state, its archive opened with its own key and the public parameters; figures and commands in
docs/protocols/hetero-linear.md, tests in tests/privacy/test_hetero_linear_attacks.py):

* A: its own exact gradient ``X_A^T (slope U + offset) / m`` per batch (``p_A + 1`` equations in
  the batch's ``m`` passive scores ``U``), the loss once per epoch, and at the end the model's
  scores on the test rows (with one passive party, that party's test-row partial scores).
* Every passive party: its own exact gradient ``X_j^T d / m`` (``p_j`` equations in the batch's
  residuals, which carry the labels): the projection of each batch's residuals on its columns.
  Its first full-batch gradient and its own weights rank the labels (inherent; measured).
* P1: values masked with 40-bit statistical masks (A's gradient, the loss sample), and sums.
* So that no per-row value is solvable, every batch holds at least ``max(MIN_BATCH_ROWS,
  ROWS_PER_COLUMN * p)`` rows for the widest party's ``p`` and keeps its rows across epochs;
  each party checks this at acceptance (``check_params``), on its own data before it sends
  anything, and on each peer's declared column count. Key holders decrypt only requests with
  one value per declared column and none of the ciphertexts they sent this round.
* Label noise (hetero-lr, on by default: ``label_bits``, sized so that a passive party's
  gradients over all epochs carry at most that fraction of a batch's label bits; opt-in formal
  label DP: ``label_epsilon``, zCDP-accounted; hetero-linear needs ``label_clip``): Gaussian
  noise from A's CSPRNG on the residual offsets the passive parties see, reported in the
  results. Without it the first batch's exact gradient is a subset-sum in the labels, which
  lattice reduction solves.
* Convergence (full batch, ``tol``): one bit per passive party per exchange, to A (whether its
  own block's Newton decrement, less the label noise's share, is below ``tol``).
* Everyone knows the row counts, batch sizes, each party's column count, the noise deviation
  and the number of exchanges run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member
from vfl_cli.crypto import paillier
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.models.features import split_rows
from vfl_cli.models.optim import SCHEDULES, EarlyStopping, make_optimizer, newton_decrement, own_curvature_step
from vfl_cli.models.reference import fixed_minibatches, initial_intercept, sigmoid
from vfl_cli.protocol.base import (
    Bool,
    Choice,
    Expect,
    Float,
    Int,
    JobRef,
    JobState,
    Outgoing,
    Param,
    PartyContext,
    Protocol,
    Seed,
    defaults,
    need,
    typed_params,
)
from vfl_cli.protocol.party_data import PartyData

# the round bookkeeping and ciphertext checks shared with the other protocols live in wire.py
from vfl_cli.protocol.wire import (
    advance_position,
    exact_unmask,
    expect_count,
    expect_members,
    expect_meta_count,
    ints_member,
    position,
    refuse_echo,
    remember_sent,
    send_scores,
    stash,
    unstash,
)

PARTIAL = "hetero/partial"
PEER_PARTIAL = "hetero/peer-partial"
RESIDUAL = "hetero/residual"
GRADIENT = "hetero/gradient"
REPLY = "hetero/reply"
SCORES = "hetero/scores"
PEER_SCORES = "hetero/peer-scores"
#: The members of A's loss request to P1 (only in a round where the loss is due).
LOSS_MEMBERS = ("loss_values", "loss_cross")

#: Public bounds of the protocol (the same for every job, so mask widths leak nothing).
PARTIAL_BOUND = 2.0**24  # |u_j| per row
GRADIENT_REAL_BITS = 36  # |X^T d| <= 2**36
RESIDUAL_REAL_BITS = 28  # |d| <= 2**28
STAT_BITS = 40

#: Every mini-batch (the full batch too) holds at least ``max(MIN_BATCH_ROWS, ROWS_PER_COLUMN * p)``
#: rows, ``p`` the column count of the widest party (the active party's intercept counts). A
#: party's gradient is ``p`` equations in the batch's ``m`` per-row unknowns: with ``m <= p`` it
#: solves every row (issue #14, finding 5); the margin keeps three quarters of each batch's
#: per-row vector unconstrained, and batches keep their rows across epochs
#: (:func:`fixed_minibatches`), so epochs never add equations over new rows.
MIN_BATCH_ROWS = 64
ROWS_PER_COLUMN = 4


def value_bits(real_bits: int, exponent: int) -> int:
    """Public mask width for values ``|v| <= 2**real_bits`` encoded with ``exponent`` (base 16)."""
    return real_bits + 4 * (-exponent)

#: Momentum of the default ``newton`` optimiser (each party's own-curvature step).
NEWTON_MOMENTUM = 0.3

#: Ridge on each party's own curvature (standardised columns: a thousandth of a unit variance).
NEWTON_RIDGE = 1e-3

#: Every training parameter, its default and allowed range (checked by proposer and acceptors).
PARAMS: dict[str, Param] = {
    "alignment": JobRef(note="the finished psi job whose rows to train on"),
    "epochs": Int(10, 1, 10_000, note="a cap: at full batch training stops on convergence (tol)"),
    "batch_size": Int(0, 0, 100_000_000,
                      note="0: full batch; every batch >= 64 rows and >= 4 per column of the widest party"),
    # auto: newton at full batch (converges in a few exchanges, no learning rate); adam with
    # mini-batches, where newton amplified the batches' noise (breast, batch 96: test AUC 0.61)
    "optimizer": Choice("auto", "auto", "adam", "sgd", "newton",
                        note="auto: newton at full batch, adam with mini-batches; newton: each party's "
                             "own-curvature step, learning_rate unused"),
    "learning_rate": Float(0.05, 0.0, 10.0, open_low=True),
    "momentum": Float(0.0, 0.0, 1.0, open_high=True, note="sgd only"),
    "l1": Float(0.0, 0.0, 100.0),
    "l2": Float(0.0, 0.0, 100.0),
    "schedule": Choice("constant", *SCHEDULES),
    "decay": Float(0.01, 0.0, 100.0, note="inverse_time schedule"),
    "early_stopping_patience": Int(0, 0, 10_000, note="0: off; full batch only"),
    "early_stopping_tol": Float(1e-4, 0.0, 1.0),
    "tol": Float(3e-4, 0.0, 1.0, note="full batch: stop when every party's Newton decrement is below this; 0: never"),
    "loss_sample": Int(256, 1, 1_000_000, note="rows in the encrypted loss"),
    "loss_every": Int(1, 1, 10_000),
    "approximation": Choice("centred", "centred", "taylor"),
    "whiten": Bool(False),
    "standardise_label": Bool(True, note="hetero-linear: A trains on its label standardised, maps scores back"),
    "test_fraction": Float(0.2, 0.0, 1.0, open_high=True),
    "seed": Seed(),
    "binning": JobRef("a finished woe-binning job: select columns by IV, encode as WOE", optional=True),
    "select_iv": Float(0.0, 0.0, 100.0, note="with binning: each party keeps its columns of IV >= this"),
    "select_top": Int(0, 0, 100_000, note="with binning: each party keeps its top k columns by IV; 0: all"),
    "woe": Bool(False, note="with binning: each party trains on its binned columns' WOE"),
    "label_bits": Float(0.5, 0.0, 1.0, open_high=True,
                        note="hetero-lr: noise such that a passive party's gradients carry at most this "
                             "fraction of a batch's label bits over all epochs; 0: off"),
    "label_epsilon": Float(0.0, 0.0, 1000.0,
                           note="formal label DP (zCDP) of the residuals passive parties see; 0: off"),
    "label_delta": Float(1e-5, 0.0, 0.1, open_low=True, note="delta of label_epsilon"),
    "label_clip": Float(0.0, 0.0, 1e9,
                        note="hetero-linear: residual offsets clipped to +-this for label noise; 0: no noise"),
}
DEFAULTS: dict[str, Any] = defaults(PARAMS)


# ----- parameters ------------------------------------------------------------------------------
def check_params(params: dict[str, Any]) -> dict[str, Any]:
    out = typed_params(params, PARAMS, what="training")
    if 0 < out["batch_size"] < MIN_BATCH_ROWS:
        raise VflError(
            f"batch_size {out['batch_size']} is too small: a party could solve each row's residual or "
            f"score from its gradient; use 0 (full batch) or at least {MIN_BATCH_ROWS} (and "
            f"{ROWS_PER_COLUMN} rows per column of the widest party)"
        )
    _optimizer(out)  # refuse unknown optimisers and bad values before anyone starts
    split_rows(10, out["test_fraction"], out["seed"])
    return out


def optimizer_name(p: Mapping[str, Any]) -> str:
    """The optimiser a job uses: ``auto`` is newton at full batch and adam with mini-batches."""
    name = str(p.get("optimizer", "adam")).lower()
    if name == "auto":
        return "newton" if not p.get("batch_size") else "adam"
    return name


def _optimizer(p: Mapping[str, Any]) -> Any:
    kw: dict[str, Any] = {"lr": p["learning_rate"], "l1": p["l1"], "l2": p["l2"],
                          "schedule": p["schedule"], "decay": p["decay"]}
    if optimizer_name(p) == "newton":  # the step is own_curvature_step's, already scaled
        # heavy-ball 0.3 on the preconditioned step: motor (3 parties, columns correlated across
        # parties) reaches 2.1% of least squares in 10 steps instead of 3.9% (numpy, train rows)
        return make_optimizer("sgd", lr=1.0, momentum=NEWTON_MOMENTUM, l1=p["l1"], l2=p["l2"])
    if optimizer_name(p) == "sgd":
        kw["momentum"] = p["momentum"]
    return make_optimizer(optimizer_name(p), **kw)


class LinearData(PartyData):
    """Hetero-lr / hetero-linear: batches keep their rows across epochs and are never too small.

    Refuses (before this party sends anything) batches that its own column count could solve.
    """

    def __init__(self, ctx: PartyContext, *, intercept: bool) -> None:
        super().__init__(ctx, intercept=intercept)
        self.columns = int(self.X.shape[1])
        check_batch_rows(self.smallest_batch, self.columns, ctx.name)

    def _batches(self, params: Mapping[str, Any], epoch: int) -> list[np.ndarray]:
        return fixed_minibatches(len(self.split.train), params["batch_size"] or None,
                                 seed=params["seed"], epoch=epoch)


def check_batch_rows(smallest: int, columns: int, party: str) -> None:
    """Refuse batches in which a party's ``columns`` gradient equations pin the rows down."""
    need = max(MIN_BATCH_ROWS, ROWS_PER_COLUMN * columns)
    if smallest < need:
        raise VflError(
            f"the smallest mini-batch holds {smallest} training rows, but {party} has {columns} "
            f"columns: every batch needs at least {need} (max({MIN_BATCH_ROWS}, {ROWS_PER_COLUMN} per "
            "column)) so that no party can solve per-row residuals or scores from its gradient; "
            "raise batch_size (0: full batch) or align more rows"
        )


def _zcdp_rho(epsilon: float, delta: float) -> float:
    """The zCDP budget ``rho`` whose (epsilon, delta) conversion ``rho + 2 sqrt(rho ln(1/delta))`` is epsilon."""
    log = math.log(1.0 / delta)
    return (math.sqrt(log + epsilon) - math.sqrt(log)) ** 2


def label_sensitivity(params: Mapping[str, Any], binary: bool) -> float:
    """How far one row's residual offset moves when its label changes (after clipping).

    A regression target has no natural range, so hetero-linear adds label noise only when the
    job sets ``label_clip`` (0, the default, means none).
    """
    return 1.0 if binary else 2.0 * float(params.get("label_clip", 0.0))


def label_noise_sigma(params: Mapping[str, Any], binary: bool, rows: int = 0, columns: int = 0) -> float:
    """Standard deviation of the Gaussian noise on each residual offset the passive parties see.

    The larger of two public rules (0 when both are off):

    * ``label_epsilon`` (formal label DP): each training row's offset is sent once per epoch;
      ``epochs`` Gaussian releases of sensitivity ``S`` with deviation ``sigma`` cost
      ``rho = epochs S^2 / (2 sigma^2)`` in zCDP, which is (label_epsilon, label_delta)-label-DP.
    * ``label_bits`` (hetero-lr, on by default): :func:`label_bits_sigma` for batches of ``rows``
      rows and a widest passive party of ``columns`` columns.
    """
    bits = label_bits_sigma(params, binary, rows, columns)
    eps = float(params.get("label_epsilon", 0.0))
    if eps <= 0 or label_sensitivity(params, binary) <= 0:
        return bits
    rho = _zcdp_rho(eps, float(params["label_delta"]))
    return max(bits, label_sensitivity(params, binary) * math.sqrt(int(params["epochs"]) / (2.0 * rho)))


def label_bits_sigma(params: Mapping[str, Any], binary: bool, rows: int, columns: int) -> float:
    """The noise that keeps what a passive party's gradients say about a batch's labels below
    ``label_bits`` times the batch's ``rows`` label bits, over ``epochs`` releases.

    A passive party with ``p`` columns sees per release ``X^T (d + e) / m``, ``e ~ N(0, sigma^2)``
    per row. Given everything but the labels (independent 0/1 values, variance at most 1/4), the
    labels enter ``d`` with coefficient -1, so the release is a Gaussian channel whose signal
    covariance is at most ``X^T X / 4`` against noise ``sigma^2 X^T X``: it carries at most
    ``p/2 log2(1 + 1/(4 sigma^2))`` bits about them, whatever ``X`` is. ``epochs`` releases carry
    at most ``epochs`` times that; setting it to ``label_bits * rows`` gives this sigma.
    """
    fraction = float(params.get("label_bits", 0.0))
    if not binary or fraction <= 0 or rows <= 0 or columns <= 0:
        return 0.0
    exponent = 2.0 * fraction * rows / (int(params["epochs"]) * columns)
    return 0.5 / math.sqrt(math.expm1(min(exponent, 600.0) * math.log(2.0)))


def label_information_bits(sigma: float, releases: int, columns: int) -> float:
    """Upper bound on the label bits ``releases`` noisy gradients of ``columns`` columns carry."""
    if sigma <= 0:
        return math.inf if releases > 0 else 0.0
    return releases * columns / 2.0 * math.log2(1.0 + 1.0 / (4.0 * sigma * sigma))


def label_epsilon_spent(params: Mapping[str, Any], binary: bool, releases: int,
                        sigma: float | None = None) -> float:
    """The (epsilon, label_delta) that ``releases`` epochs of noise ``sigma`` (default: the
    label_epsilon rule's) amount to (early stopping spends less)."""
    sigma = label_noise_sigma(params, binary) if sigma is None else sigma
    if sigma <= 0 or releases <= 0 or label_sensitivity(params, binary) <= 0:
        return 0.0
    rho = releases * label_sensitivity(params, binary) ** 2 / (2.0 * sigma**2)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / float(params["label_delta"])))


def loss_due(params: Mapping[str, Any], epoch: int, batch: int, batches_per_epoch: int) -> bool:
    """Whether this round's residual carries the loss request: on the last batch of the first
    epoch (so a curve measured every few epochs starts where training does), of every
    ``loss_every``-th and of the last. A and P1 both compute it; P1 refuses a residual with the
    loss members when it is not due, and one without them when it is."""
    if batch != batches_per_epoch - 1:
        return False
    every = max(1, int(params.get("loss_every", 1)))  # jobs proposed before it existed
    return epoch == 0 or (epoch + 1) % every == 0 or epoch + 1 == int(params["epochs"])


def peer_columns(state: JobState, art: Artifact, smallest_batch: int) -> int:
    """The column count ``art``'s sender declared, checked against the batch bound and kept.

    Every later gradient request from that party must hold exactly this many values.
    """
    cols = art.meta.get("columns")
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise InvalidArtifact(f"{art.kind} from {art.sender} does not declare its column count")
    known = state.data.setdefault("columns", {})
    if known.setdefault(art.sender, cols) != cols:
        raise InvalidArtifact(
            f"{art.sender} declared {cols} columns, but {known[art.sender]} before; refused"
        )
    check_batch_rows(smallest_batch, cols, art.sender)
    return cols


def received_sigma(art: Artifact) -> float:
    """The label noise deviation the active party declares in its residual message."""
    sigma = art.meta.get("label_sigma", 0.0)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0.0 <= float(sigma) < 1e6:
        raise InvalidArtifact(f"{art.kind} from {art.sender} declares label_sigma {sigma!r}; refused")
    return float(sigma)


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
    if m is None or m.type != "paillier" or "packed" not in m.info:
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks packed ciphertexts {name!r}")
    if m.info.get("key_id") != public.fingerprint:
        raise InvalidArtifact(f"{name!r} from {art.sender} is not under key {public.fingerprint[:16]}")
    return paillier.Packed.from_bytes(public, m.data, dict(m.info["packed"]))


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


# ----- training position (shared with split_nn) --------------------------------------------------
def check_round(art: Artifact, state: JobState) -> None:
    """Refuse an artifact for another round than the one this party is at."""
    t = int(state.data["t"])
    if art.round != t:
        raise InvalidArtifact(
            f"{art.kind} from {art.sender} is for round {art.round}, but this party is at round {t} "
            "(stale or replayed)"
        )


# ----- the protocol ----------------------------------------------------------------------------
class HeteroLinear(Protocol):
    """Shared state machine; subclasses fix the loss."""

    name = "hetero-linear"
    summary = "hetero linear regression (squared loss), no third party"
    task = "regression"
    loss_name = "mse"

    def constant_slope(self, params: Mapping[str, Any]) -> float | None:
        """The public slope ``c`` of ``d = c U + offset``, or None when A sets it per row."""
        return 1.0

    def residual_terms(self, params: Mapping[str, Any], a: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        """``(slope, offset)`` with ``d = slope * U + offset``, ``U`` the passive parties' scores."""
        return 1.0, a - y

    def loss_from_mean_square(self, msq: float, params: Mapping[str, Any]) -> float:
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
        early_peers = others if self.constant_slope(ctx.params) is not None else []
        return {
            "start": [],
            "wait-residual": [Expect(ctx.active, RESIDUAL)] + [Expect(p, PEER_PARTIAL) for p in early_peers],
            "wait-peers": [Expect(p, PEER_PARTIAL) for p in others],
            "wait-reply": [Expect(ctx.active, REPLY)],
            "collect-scores": [Expect(p, PEER_SCORES) for p in others],
        }[phase]

    def advance(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]) -> list[Outgoing]:
        data = LinearData(ctx, intercept=ctx.is_active)
        if ctx.is_active:
            handler = {"start": self._a_start, "wait-partials": self._a_residual,
                       "wait-gradients": self._a_update, "wait-scores": self._a_evaluate}[state.phase]
        else:
            handler = {"start": self._p_start, "wait-residual": self._p_gradient, "wait-peers": self._p_after_peers,
                       "wait-reply": self._p_update, "collect-scores": self._p_collect}[state.phase]
        return handler(ctx, state, received, data)

    # ----- helpers ------------------------------------------------------------------------------
    _position = staticmethod(position)
    _check_round = staticmethod(check_round)

    def _init_weights(self, state: JobState, ctx: PartyContext, width: int) -> None:
        state.arrays["weights"] = np.zeros(width)
        state.data.update(t=0, epoch=0, batch=0, optimizer=_optimizer(ctx.params).state_dict(), history=[])

    def _step_weights(self, ctx: PartyContext, state: JobState, grad: np.ndarray, intercept: bool,
                      data: LinearData | None = None, noise: float = 0.0) -> None:
        if data is not None:
            X, c = data.X[data.split.train], 0.25 if self.task == "binary" else 1.0
            # convergence on this party's own block, measured with its own columns only; a passive
            # party discounts what the label noise (public sigma) adds to its decrement
            dec, mean, sd = newton_decrement(X, grad, curvature=c, noise=noise, ridge=NEWTON_RIDGE)
            tol = float(ctx.params.get("tol", 0.0))
            state.data["decrement"] = dec
            state.data["converged_here"] = bool(tol > 0 and dec - mean < max(tol, 2.0 * sd))
            if optimizer_name(ctx.params) == "newton":
                # preconditioned by this party's own columns only: nothing more is sent or learnt
                grad = own_curvature_step(X, grad, parties=1 + len(ctx.passives), curvature=c, ridge=NEWTON_RIDGE)
        opt = _optimizer(ctx.params)
        opt.load_state_dict(state.data["optimizer"])
        w = state.arrays["weights"]
        penalised = np.ones(w.shape, dtype=bool)
        if intercept:
            penalised[-1] = False
        state.arrays["weights"] = opt.step(w, grad, mask=penalised)
        state.data["optimizer"] = _json_state(opt.state_dict())

    def _advance_position(self, state: JobState, data: LinearData) -> None:
        advance_position(state, data.batches_per_epoch)

    # ----- passive party ------------------------------------------------------------------------
    def _p_start(self, ctx: PartyContext, state: JobState, received: Any, data: LinearData) -> list[Outgoing]:
        if data.y is not None:
            raise DataError(f"{ctx.name} is passive but has labels")
        self._init_weights(state, ctx, data.X.shape[1])
        state.data["fingerprint"] = data.fingerprint
        return self._p_partials(ctx, state, data)

    def _p_partials(self, ctx: PartyContext, state: JobState, data: LinearData) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        u = data.X[rows] @ state.arrays["weights"]
        if np.abs(u).max(initial=0.0) > PARTIAL_BOUND:
            raise VflError("partial scores exploded (training diverged): lower learning_rate")
        meta = {"epoch": epoch, "batch": batch, "alignment": data.fingerprint, "rows": len(rows),
                "columns": data.columns, "converged": bool(state.data.get("converged_here", False))}
        tick = ctx.progress(f"round {t}: encrypting partial scores", None)
        k1 = ctx.public_key(ctx.passives[0])
        enc_u = paillier.encrypt(k1, u)
        if ctx.name == ctx.passives[0]:  # under P1's own key: P1 will refuse to decrypt them
            remember_sent(state, [enc_u.to_bytes()], k1.width)
        out = [Outgoing(ctx.active, PARTIAL, "partial", [enc_member("u", enc_u)], meta, t)]
        others = [p for p in ctx.passives if p != ctx.name]
        c = self.constant_slope(ctx.params)
        if others and c is not None:
            enc_a = paillier.encrypt(ctx.public_key(ctx.active), c * u)
            out += [Outgoing(p, PEER_PARTIAL, "peer-partial", [enc_member("su", enc_a)], meta, t) for p in others]
        tick(len(rows))
        state.phase = "wait-residual"
        return out

    def _p_gradient(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                    data: LinearData) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        res = need(received, ctx.active, RESIDUAL)
        self._check_round(res, state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        peer_columns(state, res, data.smallest_batch)
        state.data["label_sigma"] = received_sigma(res)
        ka = ctx.public_key(ctx.active)
        u = data.X[rows] @ state.arrays["weights"]
        d = read_enc(res, "a", ka, rows=len(rows))
        meta: dict[str, Any] = {"epoch": epoch, "batch": batch}
        if ctx.name == ctx.passives[0]:
            # the loss request comes exactly when it is due (and never to another passive party)
            expect_members(res, LOSS_MEMBERS, loss_due(ctx.params, epoch, batch, data.batches_per_epoch),
                           "the loss is due on the last batch of the first, every loss_every-th and the last epoch")
        else:
            expect_members(res, LOSS_MEMBERS + ("grad_request",), False, "P1 gets A's requests")
        p1_members = (self._p1_decrypt_for_active(ctx, state, res, meta, len(rows))
                      if ctx.name == ctx.passives[0] else [])
        c = self.constant_slope(ctx.params)
        if c is None:
            # A's slope differs per row: d = [[offset]] + [[slope]] * u_j + (the other passives' parts)
            mine = read_enc(res, "slope", ka, rows=len(rows)) * u
            others = [p for p in ctx.passives if p != ctx.name]
            if others:
                stash(state, "d", d + mine)
                stash_members(state, p1_members, meta)
                state.phase = "wait-peers"
                shared = paillier.rerandomize(mine)
                return [Outgoing(p, PEER_PARTIAL, "peer-partial", [enc_member("su", shared)],
                                 {"epoch": epoch, "batch": batch}, t) for p in others]
            d = d + mine
        else:
            for art in received.values():
                if art.kind == PEER_PARTIAL:
                    self._check_round(art, state)
                    expect_meta_count(art, "rows", len(rows))
                    d = d + read_enc(art, "su", ka, rows=len(rows))
            d = d + c * u
        return self._p_send_gradient(ctx, state, data, d, p1_members, meta)

    def _p_after_peers(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                       data: LinearData) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        ka = ctx.public_key(ctx.active)
        d = unstash(state, "d", ka)
        for art in received.values():
            self._check_round(art, state)
            d = d + read_enc(art, "su", ka, rows=len(rows))
        members, meta = unstash_members(state)
        return self._p_send_gradient(ctx, state, data, d, members, meta)

    def _p_send_gradient(self, ctx: PartyContext, state: JobState, data: LinearData, d: paillier.EncryptedArray,
                         p1_members: list[Member], meta: dict[str, Any]) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        grad = paillier.plain_matmul(data.X[rows].T, d)
        masked, m = paillier.mask(grad, value_bits=value_bits(GRADIENT_REAL_BITS, grad.exponent), stat_bits=STAT_BITS)
        state.data["grad_mask"] = save_mask(m)
        members = [packed_member("grad_request", paillier.pack(masked)), *p1_members]
        state.phase = "wait-reply"
        return [Outgoing(ctx.active, GRADIENT, "gradient", members, meta, t)]

    def _p1_decrypt_for_active(self, ctx: PartyContext, state: JobState, res: Artifact, meta: dict[str, Any],
                               rows: int) -> list[Member]:
        """P1 decrypts A's masked requests under its own key; the results stay masked.

        Before decrypting, P1 checks that the request holds one value per column A declared and
        none of the partial-score ciphertexts P1 itself sent (A must not use P1 as an oracle).
        """
        priv = ctx.private_key()
        own = priv.public
        request = read_packed(res, "grad_request", own)
        expect_count(request.count, state.data["columns"][ctx.active], "the gradient request", ctx.active)
        refuse_echo(state, request.to_bytes(), own.width, "the gradient request", ctx.active)
        members = [ints_member("grad_reply", paillier.decrypt_packed(priv, request), own.n)]
        meta["grad_count"] = request.count
        if "loss_values" in res.members:
            values = read_enc(res, "loss_values", own)
            # exactly the sample A draws (min(rows, loss_sample) values) and one cross term
            drawn = min(rows, int(ctx.params["loss_sample"]))
            if values.shape != (drawn,) or read_enc(res, "loss_cross", own).size != 1:
                raise InvalidArtifact(f"the loss request from {ctx.active} has the wrong size; refused")
            for name in ("loss_values", "loss_cross"):
                refuse_echo(state, res.members[name].data, own.width, "the loss request", ctx.active)
            raw = priv.decrypt_raw(values)
            q = sum(int(v) * int(v) for v in raw)
            if q >= own.n:
                raise VflError("loss_sample is too large for this key size; lower it")
            cross = priv.decrypt_raw(read_enc(res, "loss_cross", own))
            members.append(ints_member("loss_reply", [q, cross[0]], own.n))
        return members

    def _p_update(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                  data: LinearData) -> list[Outgoing]:
        reply = need(received, ctx.active, REPLY)
        self._check_round(reply, state)
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        m = load_mask(state.data.pop("grad_mask"))
        grad = paillier.unmask(read_ints(reply, "grad_reply", len(m.offsets)), m) / len(rows)
        noise = float(state.data.get("label_sigma", 0.0))
        self._step_weights(ctx, state, grad, intercept=False, data=data, noise=noise)
        self._advance_position(state, data)
        nxt = reply.meta.get("next")
        if nxt == "batch":
            return self._p_partials(ctx, state, data)
        if nxt != "evaluate":
            raise InvalidArtifact(f"reply from {ctx.active} says next={nxt!r}")
        return self._p_scores(ctx, state, data)

    def _p_scores(self, ctx: PartyContext, state: JobState, data: LinearData) -> list[Outgoing]:
        u = data.X[data.split.test] @ state.arrays["weights"]
        out = send_scores(ctx, u, int(state.data["t"]))
        if out is None:
            state.phase = "collect-scores"  # P1 first gathers the other passive parties' scores
            return []
        self._finish_passive(ctx, state, data)
        return out

    def _p_collect(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                   data: LinearData) -> list[Outgoing]:
        u = data.X[data.split.test] @ state.arrays["weights"]
        self._finish_passive(ctx, state, data)
        return collect_scores(ctx, u, received, int(state.data["t"]))

    def _finish_passive(self, ctx: PartyContext, state: JobState, data: LinearData) -> None:
        state.arrays.update(data.standardiser.to_arrays())
        state.phase = "done"
        state.done = True
        state.results = self._model_card(ctx, state, metrics={})

    # ----- active party -------------------------------------------------------------------------
    def _a_start(self, ctx: PartyContext, state: JobState, received: Any, data: LinearData) -> list[Outgoing]:
        if data.y is None:
            raise DataError(f"{ctx.name} is the active party but has no label column")
        if self.task == "binary" and not np.isin(data.y, (0.0, 1.0)).all():
            raise DataError(f"{ctx.label_column!r} must hold 0/1 labels for {self.name}")
        self._init_weights(state, ctx, data.X.shape[1])
        target, _, _ = self._target(ctx, data)
        state.arrays["weights"][-1] = initial_intercept(target[data.split.train], binary=self.task == "binary")
        state.data["fingerprint"] = data.fingerprint
        state.phase = "wait-partials"
        return []

    def _a_residual(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                    data: LinearData) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        k1 = ctx.public_key(ctx.passives[0])
        target, _, _ = self._target(ctx, data)
        slope, offset = self.residual_terms(ctx.params, data.X[rows] @ state.arrays["weights"], target[rows])
        passive_sum = None
        for p in ctx.passives:
            art = need(received, p, PARTIAL)
            self._check_round(art, state)
            if art.meta.get("alignment") != data.fingerprint:
                raise InvalidArtifact(f"{p} trains on another alignment than {ctx.name} (mismatched rows)")
            peer_columns(state, art, data.smallest_batch)
            # one bit per exchange: whether p's own block had converged at its last gradient
            state.data.setdefault("peer_converged", {})[p] = art.meta.get("converged") is True
            expect_meta_count(art, "rows", len(rows))
            # no declared bound: the masks' fixed widths are public, and an overflow is caught
            # exactly when the masked slots are decrypted and unmasked
            part = read_enc(art, "u", k1, rows=len(rows))
            passive_sum = part if passive_sum is None else passive_sum + part
        if passive_sum is None:
            raise VflError("training needs at least one passive party")
        # X^T (slope * U + offset) = (X * slope)^T U + X^T offset: the slope folds into the
        # plaintext matrix, so the per-row products cost nothing beyond the multi-exponentiation.
        Xb = data.X[rows]
        scaled = Xb * (slope if np.isscalar(slope) else np.asarray(slope)[:, None])
        grad = paillier.plain_matmul(scaled.T, passive_sum) + Xb.T @ offset
        masked, m = paillier.mask(grad, value_bits=value_bits(GRADIENT_REAL_BITS, grad.exponent), stat_bits=STAT_BITS)
        state.data["grad_mask"] = save_mask(m)
        p1_members = [packed_member("grad_request", paillier.pack(masked))]
        if loss_due(ctx.params, epoch, batch, data.batches_per_epoch):
            p1_members += self._loss_request(ctx, state, passive_sum, slope, offset)
        ka = ctx.public_key(ctx.name)
        shared = [enc_member("a", paillier.encrypt(ka, self._released_offset(ctx, state, data, offset)))]
        if self.constant_slope(ctx.params) is None:
            shared.append(enc_member("slope", paillier.encrypt(ka, slope)))
        # what A sends under its own key must never come back to it for decryption
        remember_sent(state, [m.data for m in shared], ka.width)
        meta = {"epoch": epoch, "batch": batch, "columns": data.columns,
                "label_sigma": float(state.data.get("label_sigma", 0.0))}
        out = []
        for p in ctx.passives:
            members = shared + (p1_members if p == ctx.passives[0] else [])
            out.append(Outgoing(p, RESIDUAL, "residual", members, meta, t))
        state.phase = "wait-gradients"
        return out

    def _released_offset(self, ctx: PartyContext, state: JobState, data: LinearData,
                         offset: np.ndarray) -> np.ndarray:
        """The offsets the passive parties compute with: with label noise (label_bits,
        label_epsilon), clipped (regression) and with Gaussian noise from A's own CSPRNG; A's
        own gradient keeps the exact ones. The deviation is public and sent along."""
        widest = max([int(v) for k, v in state.data.get("columns", {}).items() if k in ctx.passives] or [0])
        sigma = label_noise_sigma(ctx.params, self.task == "binary", data.smallest_batch, widest)
        state.data["label_sigma"] = sigma
        if sigma <= 0:
            return offset
        if self.task != "binary":
            clip = float(ctx.params["label_clip"])
            offset = np.clip(offset, -clip, clip)
        return np.asarray(offset + ctx.rng.normal(0.0, sigma, size=offset.shape))

    def _loss_request(self, ctx: PartyContext, state: JobState, passive_sum: paillier.EncryptedArray,
                      slope: Any, offset: np.ndarray) -> list[Member]:
        size = min(len(passive_sum), int(ctx.params["loss_sample"]))
        pick = np.sort(ctx.rng.choice(len(passive_sum), size=size, replace=False))
        row_slope = slope if np.isscalar(slope) else np.asarray(slope)[pick]
        sample = passive_sum[pick] * row_slope + offset[pick]
        masked, m = paillier.mask(sample, value_bits=value_bits(RESIDUAL_REAL_BITS, sample.exponent),
                                  stat_bits=STAT_BITS)
        s = [m.shift + r for r in m.offsets]
        cross = (sample * np.array(s, dtype=object)).sum()
        cross_masked, cm = paillier.mask(cross)
        state.data["loss_mask"] = {"s": [format(v, "x") for v in s], "cross": save_mask(cm),
                                   "exponent": sample.exponent, "count": size}
        return [enc_member("loss_values", masked), enc_member("loss_cross", cross_masked)]

    def _a_update(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                  data: LinearData) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        rows = data.batch_rows(ctx.params, epoch, batch)
        priv = ctx.private_key()
        replies: dict[str, list[int]] = {}
        for p in ctx.passives:
            art = need(received, p, GRADIENT)
            self._check_round(art, state)
            request = read_packed(art, "grad_request", priv.public)
            # decrypt only what this step expects: one value per column p declared, none of
            # the residual ciphertexts A sent (else p could read A's residuals, hence labels)
            expect_count(request.count, state.data["columns"][p], "the gradient", p)
            refuse_echo(state, request.to_bytes(), priv.public.width, "the gradient", p)
            replies[p] = paillier.decrypt_packed(priv, request)
        first = received[ctx.passives[0]]
        m = load_mask(state.data.pop("grad_mask"))
        expect_meta_count(first, "grad_count", len(m.offsets))
        expect_members(first, ("loss_reply",), "loss_mask" in state.data, "A asked for the loss this round")
        grad = paillier.unmask(read_ints(first, "grad_reply", len(m.offsets)), m) / len(rows)
        if "loss_mask" in state.data:
            loss = self._loss_from_reply(first, state.data.pop("loss_mask"), ctx.params)
            # each mini-batch round is four sequential hand-offs (partial, residual, gradient,
            # reply): the loss per hand-off is what a user waiting on carried files sees
            state.data["history"].append({"epoch": epoch, "loss": loss, "handoffs": 4 * (t + 1)})
        self._step_weights(ctx, state, grad, intercept=True, data=data)
        if state.data["history"] and state.data["history"][-1]["epoch"] == epoch:
            state.data["history"][-1]["decrement"] = float(state.data["decrement"])
        self._advance_position(state, data)
        nxt = "batch" if self._continue(ctx, state, data) else "evaluate"
        state.phase = "wait-partials" if nxt == "batch" else "wait-scores"
        if nxt == "evaluate" and len(data.split.test) == 0:
            state.phase = "wait-scores"
        n1 = priv.public.n
        return [Outgoing(p, REPLY, "reply", [ints_member("grad_reply", replies[p], n1)], {"next": nxt}, t)
                for p in ctx.passives]

    def _loss_from_reply(self, art: Artifact, lm: Mapping[str, Any], params: Mapping[str, Any]) -> float:
        q, cross_raw = read_ints(art, "loss_reply", 2)
        cross = exact_unmask(cross_raw, load_mask(lm["cross"]))
        s = [int(v, 16) for v in lm["s"]]
        sum_d2 = q - 2 * cross - sum(v * v for v in s)
        if sum_d2 < 0:
            raise InvalidArtifact("the loss reply is inconsistent (negative sum of squares)")
        scale = 16 ** (-2 * int(lm["exponent"]))
        msq = sum_d2 / scale / int(lm["count"])
        return float(self.loss_from_mean_square(msq, params))

    def _continue(self, ctx: PartyContext, state: JobState, data: LinearData) -> bool:
        d = state.data
        if d["epoch"] >= ctx.params["epochs"]:
            return False
        peers = d.get("peer_converged", {})
        if (data.batches_per_epoch == 1 and d.get("converged_here") and len(peers) == len(ctx.passives)
                and all(peers.values())):
            d["converged"] = True  # every party's own block: Newton decrement below tol
            return False
        patience = ctx.params["early_stopping_patience"]
        if patience and d["batch"] == 0:
            history = [h["loss"] for h in d["history"]]
            if EarlyStopping(ctx.params["early_stopping_tol"], patience).should_stop(history):
                d["stopped_early"] = True
                return False
        return True

    def _a_evaluate(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                    data: LinearData) -> list[Outgoing]:
        test = data.split.test
        art = need(received, ctx.passives[0], SCORES)
        expect_meta_count(art, "rows", len(test))
        passive_sum = ctx.private_key().decrypt(read_enc(art, "u", ctx.private_key().public, rows=len(test)))
        _, mean, scale = self._target(ctx, data)
        assert data.y is not None  # _target refuses an active party without labels
        z = mean + scale * (data.X[test] @ state.arrays["weights"] + passive_sum)  # in label units
        state.arrays["label_mean"], state.arrays["label_scale"] = np.array([mean]), np.array([scale])
        history = state.data["history"]
        metrics: dict[str, dict[str, Any]] = {"train": {"loss": history[-1]["loss"]} if history else {}}
        if len(test):
            metrics["test"] = self.evaluate(data.y[test], z)
            # A's own view, kept for its report (ROC, KS, residuals): never sent anywhere
            state.arrays["test_scores"] = z
            state.arrays["test_labels"] = data.y[test]
        state.arrays.update(data.standardiser.to_arrays())
        state.phase = "done"
        state.done = True
        card = self._model_card(ctx, state, metrics=metrics)
        card["split"] = {"test_ids": [str(i) for i in ctx.job_arrays(ctx.params["alignment"])["aligned_ids"][test]]}
        state.results = card
        return []

    def _target(self, ctx: PartyContext, data: LinearData) -> tuple[np.ndarray, float, float]:
        """What A trains on: ``(target, mean, scale)`` with ``label = mean + scale * target``.

        A regression label is standardised by A with its own training rows' mean and deviation
        (``standardise_label``, on by default), so the default step size suits any label's
        units; scores are mapped back before metrics and predictions. Neither statistic is
        sent: the passive parties' weights are in units of the standardised label.
        """
        if data.y is None:
            raise DataError(f"{ctx.name} is the active party but has no label column")
        if self.task == "binary" or not ctx.params.get("standardise_label"):
            return data.y, 0.0, 1.0  # jobs proposed before standardise_label existed: raw label
        train = data.y[data.split.train]
        mean, scale = float(train.mean()), float(train.std())
        scale = scale if scale > 0 else 1.0
        return (data.y - mean) / scale, mean, scale

    def evaluate(self, y: np.ndarray, z: np.ndarray) -> dict[str, Any]:
        from vfl_cli.metrics import regression_metrics  # scikit-learn: imported only when used

        return regression_metrics(y, z)

    def _model_card(self, ctx: PartyContext, state: JobState, *, metrics: dict[str, Any]) -> dict[str, Any]:
        w = state.arrays["weights"]
        if "whiten" in state.arrays:  # weights on whitened components -> on the standardised columns
            from vfl_cli.models.features import transform_from_arrays

            own = transform_from_arrays(state.arrays).to_standardised(w[: len(ctx.features)])
            w = np.concatenate([own, w[len(ctx.features):]])
        features = list(ctx.features) + (["(intercept)"] if ctx.is_active else [])
        return {
            "model": {
                "protocol": self.name,
                "job": ctx.job,
                "party": ctx.name,
                "alignment": ctx.params["alignment"],
                "params": dict(ctx.params),
                "features": features,
                "weights": {f: float(v) for f, v in zip(features, w, strict=True)},
                "epochs_run": int(state.data["epoch"]),
                "stopped_early": bool(state.data.get("stopped_early", False)),
                "converged": bool(state.data.get("converged", False)),
            },
            "metrics": metrics,
            "history": state.data.get("history", []),
            "privacy": self._privacy(ctx, state),
        }

    def _privacy(self, ctx: PartyContext, state: JobState) -> dict[str, Any]:
        """What this job spent on label privacy (public: every party can compute it)."""
        binary = self.task == "binary"
        sigma = float(state.data.get("label_sigma", label_noise_sigma(ctx.params, binary)))
        releases = int(state.data.get("epoch", 0)) if sigma > 0 else 0
        widest = max([len(ctx.features) + int(ctx.is_active)]
                     + [int(v) for v in state.data.get("columns", {}).values()])
        bits = label_information_bits(sigma, releases, widest) if sigma > 0 else None
        return {"label_noise_sigma": sigma, "releases_per_row": releases,
                # any Gaussian noise is some label DP: the epsilon this noise amounts to
                "label_epsilon": label_epsilon_spent(ctx.params, binary, releases, sigma),
                "label_delta": float(ctx.params["label_delta"]) if sigma > 0 else 0.0,
                "label_bits": float(ctx.params.get("label_bits", 0.0)),
                # upper bound on what the widest party's gradients carry about a batch's labels
                "label_information_bits": bits,
                "widest_columns": widest}


class HeteroLogistic(HeteroLinear):
    """Binary logistic regression. The sigmoid is linearised per mini-batch.

    ``approximation = "centred"`` (default): a first-order expansion of the sigmoid around the
    active party's own score ``a`` (its partial score plus intercept), which it knows per row:
    ``sigmoid(a + U) ~ sigmoid(a) + sigmoid'(a) U``. The error grows with the passive parties'
    share ``U`` of the score instead of with the whole score, which tracks exact logistic
    regression far more closely than the classic expansion at 0. The active party sends the
    per-row slope ``sigmoid'(a)`` encrypted under its own key, so the passive parties can
    assemble ``[[d]]`` without learning it. The loss reported per epoch is the Brier score
    ``mean((p - y)^2)`` of these approximated probabilities.

    ``approximation = "taylor"``: the second-order Taylor expansion of the log-loss at 0
    (``d = z/4 + 1/2 - y``, as FATE does); the loss reported is that Taylor loss.
    """

    name = "hetero-lr"
    summary = "hetero logistic regression (binary), no third party"
    task = "binary"

    def constant_slope(self, params: Mapping[str, Any]) -> float | None:
        return 0.25 if params.get("approximation") == "taylor" else None

    def residual_terms(self, params: Mapping[str, Any], a: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        if params.get("approximation") == "taylor":
            return 0.25, 0.25 * a + 0.5 - y
        p = sigmoid(a)
        return p * (1.0 - p), p - y

    def loss_from_mean_square(self, msq: float, params: Mapping[str, Any]) -> float:
        if params.get("approximation") == "taylor":
            return math.log(2.0) - 0.5 + 2.0 * msq
        return msq

    def evaluate(self, y: np.ndarray, z: np.ndarray) -> dict[str, Any]:
        from vfl_cli.metrics import classification_metrics  # scikit-learn: imported only when used

        return classification_metrics(y, sigmoid(z))


def stash_members(state: JobState, members: list[Member], meta: dict[str, Any]) -> None:
    for m in members:
        state.arrays[f"member_{m.name}"] = np.frombuffer(m.data, dtype=np.uint8)
    state.data["stashed_members"] = {"meta": meta, "members": [[m.name, m.type, dict(m.info)] for m in members]}


def unstash_members(state: JobState) -> tuple[list[Member], dict[str, Any]]:
    saved = state.data.pop("stashed_members")
    members = [Member(n, t, state.arrays.pop(f"member_{n}").tobytes(), info) for n, t, info in saved["members"]]
    return members, dict(saved["meta"])


def collect_scores(ctx: PartyContext, u: np.ndarray, received: Mapping[str, Artifact], t: int) -> list[Outgoing]:
    """P1 adds its own partial scores to the other passive parties' (all under A's key)."""
    ka = ctx.public_key(ctx.active)
    total = paillier.encrypt(ka, u)
    for art in received.values():
        expect_meta_count(art, "rows", len(u))
        total = total + read_enc(art, "u", ka, rows=len(u))
    total = paillier.rerandomize(total)
    return [Outgoing(ctx.active, SCORES, "scores", [enc_member("u", total)], {"rows": len(u)}, t)]


def _json_state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in state.items()}


__all__ = ["HeteroLinear", "HeteroLogistic"]
