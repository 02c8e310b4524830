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
* Block CG (``optimizer = "cg"``, hetero-linear's default at full batch without label noise or
  penalty; :class:`~vfl_cli.models.optim.BlockCG`): the same four hand-offs per exchange, and per
  exchange after the first three scalars more: A learns each passive party's own-block
  decrement ``rz_j = g_j^T D_j^-1 g_j`` (a real, no longer one bit) and the joint direction's
  curvature ``||X p||^2 / n``; every passive party learns ``beta = RZ / RZ_prev`` (in the
  residual) and ``alpha = RZ / (||X p||^2 / n)`` (in the reply). Pj's partial becomes
  ``[[X_j (w_j - z_j)]]_K1`` with ``[[X_j z_j]]_K1`` and ``[[X_j p_j]]_K1`` (members ``z``,
  ``p``; to the peers ``[[X_j p_j]]_KA`` as ``sp``): A forms the trial scores
  ``sum_j X_j (w_j - z_j + beta p_j)`` and the direction's ``X_A p_A + sum_j X_j (-z_j + beta p_j)``,
  which P1 squares under masks as it does the loss (every row; members ``curv_*``). Every party
  then moves to ``w + alpha p`` and takes its gradient there as ``g + alpha (g_T - g)`` from the
  one it unmasked at the trial point ``w + p``: no new gradient equation for anyone. Training
  stops when the last two steps' ``alpha RZ`` sum below ``tol``.
* Everyone knows the row counts, batch sizes, each party's column count, the noise deviation
  and the number of exchanges run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member
from vfl_cli.checks import whole
from vfl_cli.crypto import paillier
from vfl_cli.crypto.encoding import rescale_factor
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.models.features import split_rows, transform_from_arrays
from vfl_cli.models.optim import (
    SCHEDULES,
    BlockCG,
    EarlyStopping,
    cg_converged,
    cg_scalars,
    make_optimizer,
    newton_decrement,
    own_curvature_step,
)
from vfl_cli.models.reference import fixed_minibatches, initial_intercept, sigmoid
from vfl_cli.protocol.base import (
    Bool,
    Choice,
    Expect,
    Float,
    Int,
    JobRef,
    JobState,
    Param,
    PartyContext,
    Seed,
    defaults,
    need,
    typed_params,
)
from vfl_cli.protocol.kit import KitProtocol, Message, PartyState, Phase, Step, check_round, from_active, nothing
from vfl_cli.protocol.party_data import PartyData

# ciphertext members, masks, the echo check and the partial scores are shared with the other
# protocols: they live in wire.py
from vfl_cli.protocol.wire import (
    PEER_SCORES,
    SCORES,
    collect_scores,
    enc_member,
    exact_unmask,
    expect_count,
    expect_members,
    expect_meta_count,
    ints_member,
    json_state,
    load_mask,
    packed_member,
    read_enc,
    read_ints,
    read_packed,
    refuse_echo,
    save_mask,
    send_scores,
    sent_digests,
)

PARTIAL = "hetero/partial"
PEER_PARTIAL = "hetero/peer-partial"
RESIDUAL = "hetero/residual"
GRADIENT = "hetero/gradient"
REPLY = "hetero/reply"
#: The members of A's loss request to P1 (only in a round where the loss is due).
LOSS_MEMBERS = ("loss_values", "loss_cross")
#: Block CG (hetero-linear's default at full batch): A's request to P1 for the joint direction's
#: squared scores ``||X p||^2``, masked as the loss request is, on every row of the batch.
CURV_MEMBERS = ("curv_values", "curv_cross")

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
    # auto: at full batch block CG for hetero-linear (exact on the quadratic: motor, columns
    # correlated across three parties, +0.1% of least squares in 10 exchanges where newton was
    # +3.3%) and newton for hetero-lr; adam with mini-batches, where newton amplified the
    # batches' noise (breast, batch 96: test AUC 0.61)
    "optimizer": Choice("auto", "auto", "adam", "sgd", "newton", "cg",
                        note="auto: at full batch cg (hetero-linear without label noise or penalty) or "
                             "newton, adam with mini-batches; newton: each party's own-curvature step; "
                             "cg: block-preconditioned conjugate gradients (hetero-linear, full batch); "
                             "learning_rate unused by both"),
    "learning_rate": Float(0.05, 0.0, 10.0, open_low=True),
    "momentum": Float(0.0, 0.0, 1.0, open_high=True, note="sgd only"),
    "l1": Float(0.0, 0.0, 100.0),
    "l2": Float(0.0, 0.0, 100.0),
    "schedule": Choice("constant", *SCHEDULES),
    "decay": Float(0.01, 0.0, 100.0, note="inverse_time schedule"),
    "early_stopping_patience": Int(0, 0, 10_000, note="0: off; full batch only"),
    "early_stopping_tol": Float(1e-4, 0.0, 1.0),
    "tol": Float(3e-4, 0.0, 1.0, note="full batch: stop when every party's Newton decrement (cg: the last two "
                                      "steps' joint decrements together) is below this; 0: never"),
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


def optimizer_name(p: Mapping[str, Any], *, linear: bool = False) -> str:
    """The optimiser a job uses: ``auto`` is adam with mini-batches; at full batch block CG for
    hetero-linear (``linear``) when :func:`cg_refused` has nothing against it, else newton."""
    name = str(p.get("optimizer", "adam")).lower()
    if name == "auto":
        if p.get("batch_size"):
            return "adam"
        return "cg" if linear and cg_refused(p, linear=True) is None else "newton"
    return name


def cg_refused(p: Mapping[str, Any], *, linear: bool) -> str | None:
    """Why block CG cannot run this job (None: it can). It minimises the squared loss exactly,
    on the full batch: no logistic loss, mini-batches, penalties, or label noise (which would
    enter every step's curvature through the trial gradient)."""
    if not linear:
        return "optimizer cg is for hetero-linear (the squared loss) only"
    if p.get("batch_size"):
        return "optimizer cg needs the full batch (batch_size 0)"
    if p.get("l1") or p.get("l2"):
        return "optimizer cg has no l1 or l2 penalty; use newton"
    if label_noise_sigma(p, False) > 0:
        return "optimizer cg cannot run with label noise (label_epsilon with label_clip); use newton"
    return None


def _optimizer(p: Mapping[str, Any]) -> Any:
    kw: dict[str, Any] = {"lr": p["learning_rate"], "l1": p["l1"], "l2": p["l2"],
                          "schedule": p["schedule"], "decay": p["decay"]}
    if optimizer_name(p) in ("newton", "cg"):  # the step is own_curvature_step's, already scaled (cg: unused)
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


def peer_columns(known: Mapping[str, int], art: Artifact, smallest_batch: int) -> dict[str, int]:
    """The column counts known so far with the one ``art``'s sender declared, checked against
    the batch bound and against what it declared before.

    Every later gradient request from that party must hold exactly this many values.
    """
    cols = art.meta.get("columns")
    if not whole(cols, 1):
        raise InvalidArtifact(f"{art.kind} from {art.sender} does not declare its column count")
    if known.get(art.sender, cols) != cols:
        raise InvalidArtifact(
            f"{art.sender} declared {cols} columns, but {known[art.sender]} before; refused"
        )
    check_batch_rows(smallest_batch, cols, art.sender)
    return {**known, art.sender: cols}


def received_sigma(art: Artifact) -> float:
    """The label noise deviation the active party declares in its residual message."""
    sigma = art.meta.get("label_sigma", 0.0)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0.0 <= float(sigma) < 1e6:
        raise InvalidArtifact(f"{art.kind} from {art.sender} declares label_sigma {sigma!r}; refused")
    return float(sigma)



# ----- states -----------------------------------------------------------------------------------
L = TypeVar("L", bound="LinearState")


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    """Write ``value`` under ``key``, or remove the key for None (absent: nothing held)."""
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value


@dataclass(frozen=True)
class LossMask:
    """What A keeps to read P1's loss answer: the shifts ``s_i`` it added to the sampled
    residuals, the mask of the cross term, their exponent and how many were sampled."""

    s: tuple[int, ...]
    cross: paillier.Mask
    exponent: int
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"s": [format(v, "x") for v in self.s], "cross": save_mask(self.cross),
                "exponent": self.exponent, "count": self.count}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LossMask:
        return cls(tuple(int(v, 16) for v in d["s"]), load_mask(d["cross"]), int(d["exponent"]),
                   int(d["count"]))


@dataclass(frozen=True)
class Held:
    """A passive party's ``[[d]]`` so far and the parts of its gradient message, held while the
    other passive parties' ``[[slope u_l]]`` come (per-row slope, several passive parties)."""

    d: bytes
    shape: tuple[int, ...]
    exponent: int
    answer: tuple[Member, ...] = ()  # P1's answers to A's requests
    grad_count: int | None = None

    def encrypted(self, public: paillier.PublicKey) -> paillier.EncryptedArray:
        return paillier.EncryptedArray.from_bytes(public, self.d, self.shape, self.exponent)


@dataclass(frozen=True)
class LinearState(PartyState):
    """What every party keeps between its steps (private to it)."""

    t: int = 0  # the global mini-batch counter: the artifact round
    epoch: int = 0
    batch: int = 0
    weights: np.ndarray | None = None
    optimizer: dict[str, Any] = field(default_factory=dict)  # the optimiser's state_dict (JSON)
    history: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""  # the alignment's
    columns: dict[str, int] = field(default_factory=dict)  # each peer's declared column count
    label_sigma: float | None = None  # the label noise deviation of this job (public)
    decrement: float | None = None  # this party's own block's Newton decrement, last step
    converged_here: bool = False
    converged: bool = False  # A: every party's block converged (tol)
    stopped_early: bool = False  # A: early stopping
    grad_mask: paillier.Mask | None = None  # this party's mask on its gradient request
    sent_digests: np.ndarray | None = None  # ciphertexts under this party's key sent this round
    # the feature transform, kept with the model part at the end
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    whiten: np.ndarray | None = None

    @classmethod
    def load(cls: type[L], job: JobState) -> L:
        st = super().load(job)
        mask = job.data.get("grad_mask")
        return st.but(grad_mask=None if mask is None else load_mask(mask))

    def store(self, job: JobState) -> None:
        super().store(job)
        _put(job.data, "grad_mask", None if self.grad_mask is None else save_mask(self.grad_mask))

    @property
    def w(self) -> np.ndarray:
        if self.weights is None:
            raise VflError("this party holds no weights yet")
        return self.weights

    def advanced(self: L, batches_per_epoch: int) -> L:
        """At the next mini-batch, and at the next epoch after the last one."""
        if self.batch + 1 >= batches_per_epoch:
            return self.but(t=self.t + 1, epoch=self.epoch + 1, batch=0)
        return self.but(t=self.t + 1, batch=self.batch + 1)


@dataclass(frozen=True)
class ActiveState(LinearState):
    peer_converged: dict[str, bool] = field(default_factory=dict)  # one bit per passive party
    loss_mask: LossMask | None = None  # set in a round where A asked for the loss
    curv_mask: LossMask | None = None  # block CG: set in a round where A asked for the curvature
    label_mean: np.ndarray | None = None  # hetero-linear: label = mean + scale * score
    label_scale: np.ndarray | None = None
    test_scores: np.ndarray | None = None  # A's own view, for its report; never sent
    test_labels: np.ndarray | None = None

    @classmethod
    def load(cls, job: JobState) -> ActiveState:
        st = super().load(job)
        lm, cm = job.data.get("loss_mask"), job.data.get("curv_mask")
        return st.but(loss_mask=None if lm is None else LossMask.from_json(lm),
                      curv_mask=None if cm is None else LossMask.from_json(cm))

    def store(self, job: JobState) -> None:
        super().store(job)
        _put(job.data, "loss_mask", None if self.loss_mask is None else self.loss_mask.to_json())
        _put(job.data, "curv_mask", None if self.curv_mask is None else self.curv_mask.to_json())


@dataclass(frozen=True)
class PassiveState(LinearState):
    held: Held | None = None

    @classmethod
    def load(cls, job: JobState) -> PassiveState:
        st = super().load(job)
        if "stash_d" not in job.arrays:
            return st
        info, saved = job.data["stash_d"], job.data["stashed_members"]
        answer = tuple(Member(n, t, job.arrays[f"member_{n}"].tobytes(), i) for n, t, i in saved["members"])
        held = Held(job.arrays["stash_d"].tobytes(), tuple(info["shape"]), int(info["exponent"]), answer,
                    saved["meta"].get("grad_count"))
        return st.but(held=held)

    def store(self, job: JobState) -> None:
        super().store(job)
        job.data.pop("held", None)
        for n, _, _ in job.data.pop("stashed_members", {}).get("members", []):
            job.arrays.pop(f"member_{n}", None)
        job.data.pop("stash_d", None)
        job.arrays.pop("stash_d", None)
        if self.held is None:
            return
        h = self.held
        job.arrays["stash_d"] = np.frombuffer(h.d, dtype=np.uint8)
        job.data["stash_d"] = {"shape": list(h.shape), "exponent": h.exponent}
        for m in h.answer:
            job.arrays[f"member_{m.name}"] = np.frombuffer(m.data, dtype=np.uint8)
        meta = Gradient.position_meta(self.epoch, self.batch, h.grad_count)
        job.data["stashed_members"] = {"meta": meta, "members": [[m.name, m.type, dict(m.info)] for m in h.answer]}


# ----- messages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Partial(Message):
    """Pj -> A: ``[[u_j]]`` under P1's key, with what A checks: the alignment, the row count and
    Pj's column count, and one bit (Pj's own block converged at its last step)."""

    kind = PARTIAL
    epoch: int
    batch: int
    alignment: str
    rows: int
    columns: int
    converged: bool
    u: paillier.EncryptedArray
    cg: CGPart | None = None  # block CG after the first exchange

    def meta(self) -> dict[str, Any]:
        meta = {"epoch": self.epoch, "batch": self.batch, "alignment": self.alignment, "rows": self.rows,
                "columns": self.columns, "converged": self.converged}
        return meta if self.cg is None else {**meta, "decrement": self.cg.rz}

    def members(self) -> list[Member]:
        return [enc_member("u", self.u), *([] if self.cg is None else self.cg.members())]

    @classmethod
    def read(cls, art: Artifact, rows: int, k1: paillier.PublicKey, columns: int,
             position: tuple[int, int], cg: tuple[bool, bool] | None = None) -> Partial:
        """The partial scores (the round, alignment and columns checked by the caller, so the
        epoch and batch are the receiver's ``position``); ``cg``: block CG's parts are due
        (and whether the previous direction's scores are)."""
        expect_meta_count(art, "rows", rows)
        # no declared bound: the masks' fixed widths are public, and an overflow is caught
        # exactly when the masked slots are decrypted and unmasked
        u = read_enc(art, "u", k1, rows=rows)
        converged = art.meta.get("converged") is True
        part = CGPart.read(art, k1, rows, cg[1]) if cg is not None and cg[0] else None
        if part is None:
            expect_members(art, ("z", "p"), False, "block CG's parts come after the first exchange")
        return cls(*position, str(art.meta["alignment"]), rows, columns, converged, u, part)


@dataclass(frozen=True)
class CGPart:
    """Block CG: what a passive party adds to its partial scores ``[[X_j (w_j - z_j)]]`` (member
    ``u``): its share ``rz_j`` of the joint decrement (meta ``decrement``), ``[[X_j z_j]]`` and
    the previous direction's scores ``[[X_j p_j]]`` (none at the first step)."""

    rz: float
    z: paillier.EncryptedArray
    p: paillier.EncryptedArray | None

    def members(self) -> list[Member]:
        return [enc_member("z", self.z), *([] if self.p is None else [enc_member("p", self.p)])]

    @classmethod
    def read(cls, art: Artifact, public: paillier.PublicKey, rows: int, with_p: bool) -> CGPart:
        expect_members(art, ("p",), with_p, "the previous direction's scores come from the second step on")
        p = read_enc(art, "p", public, rows=rows) if with_p else None
        return cls(read_scalar(art, "decrement", low=0.0), read_enc(art, "z", public, rows=rows), p)


def read_scalar(art: Artifact, key: str, *, low: float = -1e300) -> float:
    """A finite real in ``art``'s manifest (block CG's scalars), at least ``low``."""
    v = art.meta.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
        raise InvalidArtifact(f"{art.kind} from {art.sender} declares {key} {v!r}; refused")
    return float(v)


@dataclass(frozen=True)
class PeerPartial(Message):
    """Pj -> Pl, under A's key: ``[[c u_j]]`` with Pj's partial's manifest (public slope ``c``),
    or ``[[slope * u_j]]`` with the position only (per-row slope)."""

    kind = PEER_PARTIAL
    epoch: int
    batch: int
    su: paillier.EncryptedArray
    alignment: str | None = None
    rows: int | None = None
    columns: int | None = None
    converged: bool | None = None
    sp: paillier.EncryptedArray | None = None  # block CG: the previous direction's scores

    def members(self) -> list[Member]:
        return [enc_member("su", self.su), *([] if self.sp is None else [enc_member("sp", self.sp)])]

    def meta(self) -> dict[str, Any]:
        full = {"epoch": self.epoch, "batch": self.batch, "alignment": self.alignment, "rows": self.rows,
                "columns": self.columns, "converged": self.converged}
        return {k: v for k, v in full.items() if v is not None}

    @staticmethod
    def read_su(art: Artifact, t: int, ka: paillier.PublicKey, rows: int, *, counted: bool,
                beta: float | None = None, with_p: bool = False) -> paillier.EncryptedArray:
        """The peer's part of ``[[d]]``; ``counted``: its manifest declares the row count too.
        Block CG: ``with_p``, the previous direction's scores ``sp`` are due (from the second
        step on), and the part at the trial point is ``su + beta sp``."""
        check_round(art, t)
        if counted:
            expect_meta_count(art, "rows", rows)
        su = read_enc(art, "su", ka, rows=rows)
        expect_members(art, ("sp",), with_p, "block CG sends the previous direction's scores from the second step")
        return su + read_enc(art, "sp", ka, rows=rows) * beta if with_p and beta else su


@dataclass(frozen=True)
class Residual(Message):
    """A -> Pj: ``[[offset]]_KA`` (member ``a``), for a per-row slope ``[[slope]]_KA``; to P1
    also A's masked gradient request under K1 and, when due, the loss request."""

    kind = RESIDUAL
    epoch: int
    batch: int
    columns: int
    label_sigma: float
    offset: paillier.EncryptedArray
    slope: paillier.EncryptedArray | None = None
    request: paillier.Packed | None = None
    loss: tuple[paillier.EncryptedArray, paillier.EncryptedArray] | None = None
    beta: float | None = None  # block CG, after the first exchange
    curvature: tuple[paillier.EncryptedArray, paillier.EncryptedArray] | None = None  # to P1, with beta

    def meta(self) -> dict[str, Any]:
        meta = {"epoch": self.epoch, "batch": self.batch, "columns": self.columns, "label_sigma": self.label_sigma}
        return meta if self.beta is None else {**meta, "beta": self.beta}

    def members(self) -> list[Member]:
        out = [enc_member("a", self.offset)]
        if self.slope is not None:
            out.append(enc_member("slope", self.slope))
        if self.request is not None:
            out.append(packed_member("grad_request", self.request))
        if self.loss is not None:
            out += [enc_member(n, x) for n, x in zip(LOSS_MEMBERS, self.loss, strict=True)]
        if self.curvature is not None:
            out += [enc_member(n, x) for n, x in zip(CURV_MEMBERS, self.curvature, strict=True)]
        return out

    @classmethod
    def read(cls, art: Artifact, ka: paillier.PublicKey, rows: int, position: tuple[int, int], *,
             per_row: bool, own: paillier.PublicKey | None, due: bool, cg: bool = False) -> Residual:
        """What a passive party takes (round and columns checked by the caller, so the epoch and
        batch are the receiver's ``position``); ``own``: P1's key, under which A's requests come
        (None for the other passive parties); ``cg``: a block-CG step (beta, and P1's curvature
        request, are due)."""
        sigma = received_sigma(art)
        offset = read_enc(art, "a", ka, rows=rows)
        if own is None:
            expect_members(art, (*LOSS_MEMBERS, *CURV_MEMBERS, "grad_request"), False, "P1 gets A's requests")
            request, loss, curv = None, None, None
        else:
            # the loss request comes exactly when it is due (and never to another passive party)
            expect_members(art, LOSS_MEMBERS, due,
                           "the loss is due on the last batch of the first, every loss_every-th and the last epoch")
            expect_members(art, CURV_MEMBERS, cg, "block CG asks for the curvature from its first step on")
            request = read_packed(art, "grad_request", own)
            loss = (read_enc(art, "loss_values", own), read_enc(art, "loss_cross", own)) if due else None
            curv = (read_enc(art, "curv_values", own), read_enc(art, "curv_cross", own)) if cg else None
        slope = read_enc(art, "slope", ka, rows=rows) if per_row else None
        beta = read_scalar(art, "beta") if cg else None
        return cls(*position, int(art.meta["columns"]), sigma, offset, slope, request, loss, beta, curv)


@dataclass(frozen=True)
class Gradient(Message):
    """Pj -> A: ``pack(mask([[X_j^T d]]_KA))``; from P1 also its answers to A's requests
    (``grad_reply`` and, when asked, ``loss_reply``: decrypted, still masked)."""

    kind = GRADIENT
    epoch: int
    batch: int
    request: paillier.Packed
    answer: tuple[Member, ...] = ()
    grad_count: int | None = None

    @staticmethod
    def position_meta(epoch: int, batch: int, grad_count: int | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"epoch": epoch, "batch": batch}
        if grad_count is not None:
            meta["grad_count"] = grad_count
        return meta

    def meta(self) -> dict[str, Any]:
        return self.position_meta(self.epoch, self.batch, self.grad_count)

    def members(self) -> list[Member]:
        return [packed_member("grad_request", self.request), *self.answer]

    @staticmethod
    def read_request(art: Artifact, t: int, public: paillier.PublicKey) -> paillier.Packed:
        check_round(art, t)
        return read_packed(art, "grad_request", public)

    @staticmethod
    def read_answer(art: Artifact, count: int, loss_asked: bool) -> tuple[list[int], list[int] | None]:
        """P1's answers: A's gradient slots (``count``) and, when A asked, ``[Q, cross]``."""
        expect_meta_count(art, "grad_count", count)
        expect_members(art, ("loss_reply",), loss_asked, "A asked for the loss this round")
        reply = read_ints(art, "grad_reply", count)
        return reply, read_ints(art, "loss_reply", 2) if loss_asked else None

    @staticmethod
    def read_curvature(art: Artifact, asked: bool) -> list[int] | None:
        """P1's answer to block CG's curvature request, ``[Q, cross]``, when A asked."""
        expect_members(art, ("curv_reply",), asked, "A asked for the curvature this round")
        return read_ints(art, "curv_reply", 2) if asked else None


@dataclass(frozen=True)
class Reply(Message):
    """A -> Pj: the decrypted slots of Pj's request (still masked), and whether training goes on."""

    kind = REPLY
    next: str  # "batch" or "evaluate"
    values: list[int]
    modulus: int
    alpha: float | None = None  # block CG: the step, after the first exchange

    def meta(self) -> dict[str, Any]:
        return {"next": self.next} if self.alpha is None else {"next": self.next, "alpha": self.alpha}

    def members(self) -> list[Member]:
        return [ints_member("grad_reply", self.values, self.modulus)]

    @classmethod
    def read(cls, art: Artifact, t: int, count: int, *, cg: bool = False) -> Reply:
        check_round(art, t)
        values = read_ints(art, "grad_reply", count)
        nxt = art.meta.get("next")
        if nxt not in ("batch", "evaluate"):
            raise InvalidArtifact(f"reply from {art.sender} says next={nxt!r}")
        return cls(str(nxt), values, 0, read_scalar(art, "alpha", low=0.0) if cg else None)


@dataclass(frozen=True)
class Scores(Message):
    """P1 -> A: the passive parties' summed partial scores on the test rows, under A's key
    (written by :func:`~vfl_cli.protocol.wire.send_scores` / ``collect_scores``)."""

    kind = SCORES
    rows: int
    u: paillier.EncryptedArray

    def meta(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def members(self) -> list[Member]:
        return [enc_member("u", self.u)]

    @classmethod
    def read(cls, art: Artifact, public: paillier.PublicKey, rows: int) -> Scores:
        expect_meta_count(art, "rows", rows)
        return cls(rows, read_enc(art, "u", public, rows=rows))


# ----- pure steps -------------------------------------------------------------------------------
def sum_enc(parts: list[paillier.EncryptedArray]) -> paillier.EncryptedArray:
    """The homomorphic sum of one or more encrypted vectors."""
    total = parts[0]
    for x in parts[1:]:
        total = total + x
    return total


@dataclass(frozen=True)
class CGTrial:
    """A's view of one block-CG exchange (:meth:`HeteroLinear._a_cg_trial`)."""

    weights: np.ndarray  # A's trial weights w_A + p_A
    passive: paillier.EncryptedArray  # the passive parties' scores at the trial point
    current: paillier.EncryptedArray  # ... and at their current weights (for the loss)
    rz: float  # the joint decrement RZ
    beta: float
    request: tuple[paillier.EncryptedArray, paillier.EncryptedArray]  # to P1: the curvature
    mask: LossMask


def masked_request(grad: paillier.EncryptedArray) -> tuple[paillier.Packed, paillier.Mask]:
    """A gradient under the peer's key, masked for it to decrypt (its bounds public), packed."""
    masked, m = paillier.mask(grad, value_bits=value_bits(GRADIENT_REAL_BITS, grad.exponent), stat_bits=STAT_BITS)
    return paillier.pack(masked), m


def active_request(X: np.ndarray, slope: Any, offset: np.ndarray,
                   passive_sum: paillier.EncryptedArray) -> tuple[paillier.Packed, paillier.Mask]:
    """A's gradient request ``[[X_A^T (slope U + offset)]]_K1``, masked.

    ``X^T (slope * U + offset) = (X * slope)^T U + X^T offset``: the slope folds into the
    plaintext matrix, so the per-row products cost nothing beyond the multi-exponentiation.
    """
    scaled = X * (slope if np.isscalar(slope) else np.asarray(slope)[:, None])
    return masked_request(paillier.plain_matmul(scaled.T, passive_sum) + X.T @ offset)


def loss_request(rng: np.random.Generator, passive_sum: paillier.EncryptedArray, slope: Any,
                 offset: np.ndarray, sample: int
                 ) -> tuple[tuple[paillier.EncryptedArray, paillier.EncryptedArray], LossMask]:
    """A's loss request to P1 on (a sample of) the batch: ``[[D_i + s_i]]`` and
    ``[[sum_i s_i D_i + rho]]``, and what A keeps to read the answer."""
    size = min(len(passive_sum), sample)
    pick = np.sort(rng.choice(len(passive_sum), size=size, replace=False))
    row_slope = slope if np.isscalar(slope) else np.asarray(slope)[pick]
    values = passive_sum[pick] * row_slope + offset[pick]
    masked, m = paillier.mask(values, value_bits=value_bits(RESIDUAL_REAL_BITS, values.exponent),
                              stat_bits=STAT_BITS)
    s = [m.shift + r for r in m.offsets]
    cross = (values * np.array(s, dtype=object)).sum()
    cross_masked, cm = paillier.mask(cross)
    return (masked, cross_masked), LossMask(tuple(s), cm, values.exponent, size)


def mean_square_from_reply(reply: list[int], lm: LossMask) -> float:
    """``mean(D_i^2)`` from P1's ``[Q, masked cross term]`` (exact integers until the end)."""
    q, cross_raw = reply
    cross = exact_unmask(cross_raw, lm.cross)
    sum_d2 = q - 2 * cross - sum(v * v for v in lm.s)
    if sum_d2 < 0:
        raise InvalidArtifact("the loss reply is inconsistent (negative sum of squares)")
    return float(sum_d2 / rescale_factor(0, 2 * lm.exponent) / lm.count)  # 16^(-2e): the square's scale


def released_offset(offset: np.ndarray, sigma: float, params: Mapping[str, Any], binary: bool,
                    rng: np.random.Generator) -> np.ndarray:
    """The offsets the passive parties compute with: with label noise (label_bits,
    label_epsilon), clipped (regression) and with Gaussian noise from A's own CSPRNG; A's
    own gradient keeps the exact ones. The deviation is public and sent along."""
    if sigma <= 0:
        return offset
    if not binary:
        clip = float(params["label_clip"])
        offset = np.clip(offset, -clip, clip)
    return np.asarray(offset + rng.normal(0.0, sigma, size=offset.shape))


def answer_active(priv: paillier.PrivateKey, res: Residual, active_columns: int, sent: np.ndarray | None,
                  rows: int, params: Mapping[str, Any], active: str) -> list[Member]:
    """P1 decrypts A's masked requests under its own key; the results stay masked.

    Before decrypting, P1 checks that the request holds one value per column A declared and
    none of the partial-score ciphertexts P1 itself sent (A must not use P1 as an oracle).
    """
    own = priv.public
    request = res.request
    if request is None:
        raise InvalidArtifact(f"the residual from {active} lacks the gradient request")
    expect_count(request.count, active_columns, "the gradient request", active)
    refuse_echo(sent, request.to_bytes(), own.width, "the gradient request", active)
    members = [ints_member("grad_reply", paillier.decrypt_packed(priv, request), own.n)]
    if res.loss is not None:
        # exactly the sample A draws (min(rows, loss_sample) values) and one cross term
        drawn = min(rows, int(params["loss_sample"]))
        members.append(ints_member("loss_reply", answer_squares(priv, res.loss, drawn, sent, "the loss request",
                                                                active), own.n))
    if res.curvature is not None:  # block CG: every row of the batch
        members.append(ints_member("curv_reply", answer_squares(priv, res.curvature, rows, sent,
                                                                "the curvature request", active), own.n))
    return members


def answer_squares(priv: paillier.PrivateKey, request: tuple[paillier.EncryptedArray, paillier.EncryptedArray],
                   size: int, sent: np.ndarray | None, what: str, active: str) -> list[int]:
    """P1's ``[Q, cross]`` for A's masked request ``([[D_i + s_i]], [[sum_i s_i D_i + rho]])``:
    ``Q = sum_i (D_i + s_i)^2`` and the masked cross term, after checking the request's size
    (``size`` values and one cross term) and that it echoes none of P1's own ciphertexts."""
    own = priv.public
    values, cross_enc = request
    if values.shape != (size,) or cross_enc.size != 1:
        raise InvalidArtifact(f"{what} from {active} has the wrong size; refused")
    for x in request:
        refuse_echo(sent, x.to_bytes(), own.width, what, active)
    q = sum(int(v) * int(v) for v in priv.decrypt_raw(values))
    if q >= own.n:
        raise VflError(f"{what} is too large for this key size (loss_sample or rows); use a larger key")
    return [q, priv.decrypt_raw(cross_enc)[0]]


def decrypt_request(priv: paillier.PrivateKey, request: paillier.Packed, columns: int,
                    sent: np.ndarray | None, sender: str) -> list[int]:
    """A decrypts a passive party's masked gradient request: only what this step expects, one
    value per column ``sender`` declared and none of the residual ciphertexts A sent (else the
    sender could read A's residuals, hence labels)."""
    expect_count(request.count, columns, "the gradient", sender)
    refuse_echo(sent, request.to_bytes(), priv.public.width, "the gradient", sender)
    return paillier.decrypt_packed(priv, request)


def partial_from(art: Artifact, st: ActiveState, data: LinearData, rows: int, k1: paillier.PublicKey,
                 me: str, cg: tuple[bool, bool] | None = None) -> tuple[ActiveState, Partial]:
    """A takes a passive party's partial scores: its round, alignment and columns checked, its
    one bit (own block converged) kept; ``cg``: see :meth:`Partial.read`."""
    check_round(art, st.t)
    if art.meta.get("alignment") != data.fingerprint:
        raise InvalidArtifact(f"{art.sender} trains on another alignment than {me} (mismatched rows)")
    columns = peer_columns(st.columns, art, data.smallest_batch)
    part = Partial.read(art, rows, k1, columns[art.sender], (st.epoch, st.batch), cg)
    converged = {**st.peer_converged, art.sender: part.converged}
    return st.but(columns=columns, peer_converged=converged), part


def widest_passive(columns: Mapping[str, int], passives: list[str]) -> int:
    return max([int(v) for k, v in columns.items() if k in passives] or [0])


# ----- the protocol ----------------------------------------------------------------------------
def _from_passives(kind: str) -> Callable[[PartyContext, Any], list[Expect]]:
    """``waits`` of an active phase that takes one ``kind`` artifact from every passive party."""
    return lambda ctx, st: [Expect(p, kind) for p in ctx.passives]


def _from_peers(kind: str) -> Callable[[PartyContext, Any], list[Expect]]:
    """``waits`` of a passive phase that takes one ``kind`` artifact from every other passive party."""
    return lambda ctx, st: [Expect(p, kind) for p in ctx.passives if p != ctx.name]


class HeteroLinear(KitProtocol[Any]):
    """Shared state machine; subclasses fix the loss."""

    name = "hetero-linear"
    summary = "hetero linear regression (squared loss), no third party"
    task = "regression"
    states: ClassVar[Mapping[str, type[PartyState]]] = {"active": ActiveState, "passive": PassiveState}

    def constant_slope(self, params: Mapping[str, Any]) -> float | None:
        """The public slope ``c`` of ``d = c U + offset``, or None when A sets it per row."""
        return 1.0

    def residual_terms(self, params: Mapping[str, Any], a: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        """``(slope, offset)`` with ``d = slope * U + offset``, ``U`` the passive parties' scores."""
        return 1.0, a - y

    def loss_from_mean_square(self, msq: float, params: Mapping[str, Any]) -> float:
        return msq

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
        out = check_params(params)
        why = cg_refused(out, linear=self.task != "binary")
        if str(out["optimizer"]).lower() == "cg" and why is not None:
            raise VflError(why)
        return out

    def cg(self, params: Mapping[str, Any]) -> bool:
        """Whether this job trains by block CG."""
        return optimizer_name(params, linear=self.task != "binary") == "cg"

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, self._a_start),
            ("active", "wait-partials"): Phase(_from_passives(PARTIAL), self._a_residual),
            ("active", "wait-gradients"): Phase(_from_passives(GRADIENT), self._a_update),
            ("active", "wait-scores"): Phase(lambda ctx, st: [Expect(ctx.passives[0], SCORES)], self._a_evaluate),
            ("passive", "start"): Phase(nothing, self._p_start),
            ("passive", "wait-residual"): Phase(self._residual_waits, self._p_gradient),
            ("passive", "wait-peers"): Phase(_from_peers(PEER_PARTIAL), self._p_after_peers),
            ("passive", "wait-reply"): Phase(from_active(REPLY), self._p_update),
            ("passive", "collect-scores"): Phase(_from_peers(PEER_SCORES), self._p_collect),
        }

    def _residual_waits(self, ctx: PartyContext, st: Any) -> list[Expect]:
        """A's residual and, with a public slope, the other passive parties' ``[[c u_l]]``."""
        peers = _from_peers(PEER_PARTIAL)(ctx, st) if self.constant_slope(ctx.params) is not None else []
        return [Expect(ctx.active, RESIDUAL), *peers]

    # ----- both roles ------------------------------------------------------------------------------
    def _initial(self, ctx: PartyContext, st: L, weights: np.ndarray, data: LinearData) -> L:
        return st.but(weights=weights, optimizer=json_state(_optimizer(ctx.params).state_dict()),
                      history=[], fingerprint=data.fingerprint)

    def step_weights(self, ctx: PartyContext, st: L, grad: np.ndarray, data: LinearData, *,
                     intercept: bool, noise: float = 0.0) -> L:
        """This party's own update: its block's Newton decrement, then its optimiser's step."""
        X, c = data.X[data.split.train], 0.25 if self.task == "binary" else 1.0
        # convergence on this party's own block, measured with its own columns only; a passive
        # party discounts what the label noise (public sigma) adds to its decrement
        dec, mean, sd = newton_decrement(X, grad, curvature=c, noise=noise, ridge=NEWTON_RIDGE)
        tol = float(ctx.params.get("tol", 0.0))
        converged = bool(tol > 0 and dec - mean < max(tol, 2.0 * sd))
        if optimizer_name(ctx.params) == "newton":
            # preconditioned by this party's own columns only: nothing more is sent or learnt
            grad = own_curvature_step(X, grad, parties=1 + len(ctx.passives), curvature=c, ridge=NEWTON_RIDGE)
        opt = _optimizer(ctx.params)
        opt.load_state_dict(st.optimizer)
        penalised = np.ones(st.w.shape, dtype=bool)
        if intercept:
            penalised[-1] = False
        return st.but(weights=opt.step(st.w, grad, mask=penalised), optimizer=json_state(opt.state_dict()),
                      decrement=dec, converged_here=converged)

    def cg_step(self, st: L, cg: BlockCG, data: LinearData, trial_grad: np.ndarray, alpha: float | None) -> L:
        """Block CG: the first exchange's gradient starts it; each later one's (at the trial point)
        with the joint step ``alpha`` moves this party's weights to ``w + alpha p``."""
        X = data.X[data.split.train]
        if not cg.started or alpha is None:
            return st.but(optimizer={**st.optimizer, **cg.start(X, trial_grad, NEWTON_RIDGE).state_dict()})
        beta = float(st.optimizer.get("beta", 0.0))
        w, cg = cg.advance(X, st.w, trial_grad, alpha, beta, NEWTON_RIDGE)
        return st.but(weights=w, optimizer={**st.optimizer, **cg.state_dict()})

    # ----- passive party ------------------------------------------------------------------------
    def _p_start(self, ctx: PartyContext, st: PassiveState, received: Any) -> Step[PassiveState]:
        data = LinearData(ctx, intercept=False)
        if data.y is not None:
            raise DataError(f"{ctx.name} is passive but has labels")
        return self._p_partials(ctx, self._initial(ctx, st, np.zeros(data.X.shape[1]), data), data)

    def _p_partials(self, ctx: PartyContext, st: PassiveState, data: LinearData) -> Step[PassiveState]:
        """``[[u_j]]_K1`` to A and, with a public slope ``c``, ``[[c u_j]]_KA`` to the peers.

        Block CG after its first exchange: ``u_j = X_j (w_j - z_j)`` with the parts of
        :class:`CGPart` to A, and to the peers also ``[[X_j p_j]]_KA`` (the previous direction)."""
        rows = data.batch_rows(ctx.params, st.epoch, st.batch)
        u = data.X[rows] @ st.w
        if np.abs(u).max(initial=0.0) > PARTIAL_BOUND:
            raise VflError("partial scores exploded (training diverged): lower learning_rate")
        tick = ctx.progress(f"round {st.t}: encrypting partial scores", None)
        k1 = ctx.public_key(ctx.passives[0])
        cg = self._cg_state(ctx, st)
        z = data.X[rows] @ np.asarray(cg.z) if cg is not None and cg.started else None
        dp = data.X[rows] @ np.asarray(cg.p) if cg is not None and cg.p is not None else None
        u = u if z is None else u - z
        enc_u = paillier.encrypt(k1, u)
        part = None if cg is None or z is None else CGPart(cg.rz, paillier.encrypt(k1, z),
                                                           None if dp is None else paillier.encrypt(k1, dp))
        if ctx.name == ctx.passives[0]:  # under P1's own key: P1 will refuse to decrypt them
            mine = [enc_u] if part is None else [enc_u, part.z, *([] if part.p is None else [part.p])]
            st = st.but(sent_digests=sent_digests([x.to_bytes() for x in mine], k1.width))
        declared = (data.fingerprint, len(rows), data.columns, st.converged_here)
        out = [Partial(st.epoch, st.batch, *declared, enc_u, part).to(ctx.active, "partial", st.t)]
        others = [p for p in ctx.passives if p != ctx.name]
        c = self.constant_slope(ctx.params)
        if others and c is not None:
            ka = ctx.public_key(ctx.active)
            sp = None if dp is None else paillier.encrypt(ka, c * dp)
            peer = PeerPartial(st.epoch, st.batch, paillier.encrypt(ka, c * u), *declared, sp=sp)
            out += [peer.to(p, "peer-partial", st.t) for p in others]
        tick(len(rows))
        return Step(st, "wait-residual", out)

    def _cg_state(self, ctx: PartyContext, st: LinearState) -> BlockCG | None:
        """This party's block-CG state (None when the job does not train by block CG)."""
        return BlockCG.from_state(st.optimizer) if self.cg(ctx.params) else None

    def _p_gradient(self, ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]) -> Step[PassiveState]:
        data = LinearData(ctx, intercept=False)
        rows = data.batch_rows(ctx.params, st.epoch, st.batch)
        art = need(received, ctx.active, RESIDUAL)
        check_round(art, st.t)
        st = st.but(columns=peer_columns(st.columns, art, data.smallest_batch))
        ka, p1, c = ctx.public_key(ctx.active), ctx.name == ctx.passives[0], self.constant_slope(ctx.params)
        cg = self._cg_state(ctx, st)
        res = Residual.read(art, ka, len(rows), (st.epoch, st.batch), per_row=c is None,
                            own=ctx.private_key().public if p1 else None,
                            due=loss_due(ctx.params, st.epoch, st.batch, data.batches_per_epoch),
                            cg=cg is not None and cg.started)
        st = st.but(label_sigma=res.label_sigma)
        answer: list[Member] = []
        if p1:
            answer = answer_active(ctx.private_key(), res, st.columns[ctx.active], st.sent_digests, len(rows),
                                   ctx.params, ctx.active)
        count = res.request.count if res.request is not None else None
        if res.beta is not None and cg is not None:  # block CG: at the trial point w + p
            u = data.X[rows] @ (st.w + cg.direction(res.beta))
            st = st.but(optimizer={**st.optimizer, "beta": res.beta})
        else:
            u = data.X[rows] @ st.w
        if c is not None:
            d = res.offset
            for part in (a for a in received.values() if a.kind == PEER_PARTIAL):
                d = d + PeerPartial.read_su(part, st.t, ka, len(rows), counted=True, beta=res.beta,
                                            with_p=cg is not None and cg.p is not None)
            return self._p_send_gradient(ctx, st, data, d + c * u, answer, count)
        # A's slope differs per row: d = [[offset]] + [[slope]] * u_j + (the other passives' parts)
        if res.slope is None:  # Residual.read refuses a per-row residual without it
            raise InvalidArtifact(f"the residual from {ctx.active} lacks the per-row slope")
        mine = res.slope * u
        others = [p for p in ctx.passives if p != ctx.name]
        if not others:
            return self._p_send_gradient(ctx, st, data, res.offset + mine, answer, count)
        d = res.offset + mine
        held = Held(d.to_bytes(), d.shape, d.exponent, tuple(answer), count)
        peer = PeerPartial(st.epoch, st.batch, paillier.rerandomize(mine))
        return Step(st.but(held=held), "wait-peers", [peer.to(p, "peer-partial", st.t) for p in others])

    def _p_after_peers(self, ctx: PartyContext, st: PassiveState,
                       received: Mapping[str, Artifact]) -> Step[PassiveState]:
        data = LinearData(ctx, intercept=False)
        rows = data.batch_rows(ctx.params, st.epoch, st.batch)
        ka = ctx.public_key(ctx.active)
        if st.held is None:
            raise VflError(f"{ctx.name} holds no residual to complete")
        d = st.held.encrypted(ka)
        for art in received.values():
            d = d + PeerPartial.read_su(art, st.t, ka, len(rows), counted=False)
        answer, count = list(st.held.answer), st.held.grad_count
        return self._p_send_gradient(ctx, st.but(held=None), data, d, answer, count)

    def _p_send_gradient(self, ctx: PartyContext, st: PassiveState, data: LinearData, d: paillier.EncryptedArray,
                         answer: list[Member], grad_count: int | None) -> Step[PassiveState]:
        rows = data.batch_rows(ctx.params, st.epoch, st.batch)
        request, m = masked_request(paillier.plain_matmul(data.X[rows].T, d))
        msg = Gradient(st.epoch, st.batch, request, tuple(answer), grad_count)
        return Step(st.but(grad_mask=m), "wait-reply", [msg.to(ctx.active, "gradient", st.t)])

    def _p_update(self, ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]) -> Step[PassiveState]:
        data = LinearData(ctx, intercept=False)
        if st.grad_mask is None:
            raise VflError(f"{ctx.name} has no gradient request outstanding")
        m = st.grad_mask
        cg = self._cg_state(ctx, st)
        reply = Reply.read(need(received, ctx.active, REPLY), st.t, len(m.offsets), cg=cg is not None and cg.started)
        rows = data.batch_rows(ctx.params, st.epoch, st.batch)
        grad = paillier.unmask(reply.values, m) / len(rows)
        noise = st.label_sigma or 0.0
        if cg is not None:
            st = self.cg_step(st.but(grad_mask=None), cg, data, grad, reply.alpha)
        else:
            st = self.step_weights(ctx, st.but(grad_mask=None), grad, data, intercept=False, noise=noise)
        st = st.advanced(data.batches_per_epoch)
        if reply.next == "batch":
            return self._p_partials(ctx, st, data)
        return self._p_scores(ctx, st, data)

    def _p_scores(self, ctx: PartyContext, st: PassiveState, data: LinearData) -> Step[PassiveState]:
        out = send_scores(ctx, data.X[data.split.test] @ st.w, st.t)
        if out is None:
            return Step(st, "collect-scores")  # P1 first gathers the other passive parties' scores
        return self._p_finish(ctx, st, data, out)

    def _p_collect(self, ctx: PartyContext, st: PassiveState, received: Mapping[str, Artifact]) -> Step[PassiveState]:
        data = LinearData(ctx, intercept=False)
        out = collect_scores(ctx, data.X[data.split.test] @ st.w, received, st.t)
        return self._p_finish(ctx, st, data, out)

    def _p_finish(self, ctx: PartyContext, st: PassiveState, data: LinearData, out: Any) -> Step[PassiveState]:
        st = st.but(**data.standardiser.to_arrays())
        return Step.finish(st, self._model_card(ctx, st, metrics={}), out)

    # ----- active party -------------------------------------------------------------------------
    def _a_start(self, ctx: PartyContext, st: ActiveState, received: Any) -> Step[ActiveState]:
        data = LinearData(ctx, intercept=True)
        if data.y is None:
            raise DataError(f"{ctx.name} is the active party but has no label column")
        if self.task == "binary" and not np.isin(data.y, (0.0, 1.0)).all():
            raise DataError(f"{ctx.label_column!r} must hold 0/1 labels for {self.name}")
        target, _, _ = self._target(ctx, data)
        weights = np.zeros(data.X.shape[1])
        weights[-1] = initial_intercept(target[data.split.train], binary=self.task == "binary")
        return Step(self._initial(ctx, st, weights, data), "wait-partials")

    def _a_residual(self, ctx: PartyContext, st: ActiveState, received: Mapping[str, Artifact]) -> Step[ActiveState]:
        data = LinearData(ctx, intercept=True)
        rows = data.batch_rows(ctx.params, st.epoch, st.batch)
        k1 = ctx.public_key(ctx.passives[0])
        target, _, _ = self._target(ctx, data)
        cg = self._cg_state(ctx, st)
        due = None if cg is None else (cg.started, cg.p is not None)
        parts = []
        for p in ctx.passives:
            st, part = partial_from(need(received, p, PARTIAL), st, data, len(rows), k1, ctx.name, due)
            parts.append(part)
        if not parts:
            raise VflError("training needs at least one passive party")
        passive_sum = sum_enc([part.u for part in parts])
        trial = None if cg is None or not cg.started else self._a_cg_trial(ctx, st, data, target, parts, cg)
        w = st.w if trial is None else trial.weights
        slope, offset = self.residual_terms(ctx.params, data.X[rows] @ w, target[rows])
        request, m = active_request(data.X[rows], slope, offset, passive_sum if trial is None else trial.passive)
        loss, lm = None, None
        if loss_due(ctx.params, st.epoch, st.batch, data.batches_per_epoch):  # at this party's weights
            base = (slope, offset) if trial is None else self.residual_terms(ctx.params, data.X[rows] @ st.w,
                                                                              target[rows])
            loss, lm = loss_request(ctx.rng, passive_sum if trial is None else trial.current, *base,
                                    int(ctx.params["loss_sample"]))
        binary = self.task == "binary"
        sigma = label_noise_sigma(ctx.params, binary, data.smallest_batch, widest_passive(st.columns, ctx.passives))
        ka = ctx.public_key(ctx.name)
        enc_offset = paillier.encrypt(ka, released_offset(offset, sigma, ctx.params, binary, ctx.rng))
        enc_slope = paillier.encrypt(ka, slope) if self.constant_slope(ctx.params) is None else None
        # what A sends under its own key must never come back to it for decryption
        sent = sent_digests([x.to_bytes() for x in (enc_offset, enc_slope) if x is not None], ka.width)
        beta = None if trial is None else trial.beta
        shared = Residual(st.epoch, st.batch, data.columns, float(sigma), enc_offset, enc_slope, beta=beta)
        to_p1 = Residual(st.epoch, st.batch, data.columns, float(sigma), enc_offset, enc_slope, request, loss,
                         beta, None if trial is None else trial.request)
        out = [(to_p1 if p == ctx.passives[0] else shared).to(p, "residual", st.t) for p in ctx.passives]
        new = st.but(grad_mask=m, loss_mask=lm, label_sigma=sigma, sent_digests=sent)
        if trial is not None:
            new = new.but(curv_mask=trial.mask, optimizer={**st.optimizer, "beta": trial.beta, "rz_sum": trial.rz})
        return Step(new, "wait-gradients", out)

    def _a_cg_trial(self, ctx: PartyContext, st: ActiveState, data: LinearData, target: np.ndarray,
                    parts: list[Partial], cg: BlockCG) -> CGTrial:
        """A's block-CG step from the passive parties' parts: the joint decrement
        ``RZ = rz_A + sum_j rz_j``, ``beta = RZ / RZ_prev``, the passive scores at the trial point
        ``sum_j X_j (w_j - z_j + beta p_j)`` and at the current weights ``sum_j X_j w_j``, and
        the curvature request: the joint direction's scores
        ``X_A p_A + sum_j X_j (-z_j + beta p_j)``, masked for P1 to square (every row)."""
        rows = data.batch_rows(ctx.params, st.epoch, st.batch)
        cgs = [part.cg for part in parts if part.cg is not None]
        rz = cg.rz + sum(c.rz for c in cgs)
        prev = st.optimizer.get("rz_sum")
        beta, _ = cg_scalars(rz, None if prev is None else float(prev), None)
        z_sum = sum_enc([c.z for c in cgs])
        v0 = sum_enc([part.u for part in parts])
        ps = [c.p for c in cgs if c.p is not None]
        if beta and len(ps) != len(cgs):
            raise InvalidArtifact("a passive party left out its previous direction's scores")
        turned = sum_enc(ps) * beta if beta else None
        direction = cg.direction(beta)
        own = data.X[rows] @ direction  # A's own share of the direction's scores
        scores = -z_sum if turned is None else turned - z_sum
        request, mask = loss_request(ctx.rng, scores, 1, own, len(rows))
        return CGTrial(st.w + direction, v0 if turned is None else v0 + turned, v0 + z_sum, rz, beta, request, mask)

    def _a_update(self, ctx: PartyContext, st: ActiveState, received: Mapping[str, Artifact]) -> Step[ActiveState]:
        data = LinearData(ctx, intercept=True)
        rows = data.batch_rows(ctx.params, st.epoch, st.batch)
        priv = ctx.private_key()
        replies: dict[str, list[int]] = {}
        for p in ctx.passives:
            request = Gradient.read_request(need(received, p, GRADIENT), st.t, priv.public)
            replies[p] = decrypt_request(priv, request, st.columns[p], st.sent_digests, p)
        if st.grad_mask is None:
            raise VflError(f"{ctx.name} has no gradient request outstanding")
        m = st.grad_mask
        first = received[ctx.passives[0]]
        reply, loss_reply = Gradient.read_answer(first, len(m.offsets), st.loss_mask is not None)
        curv_reply = Gradient.read_curvature(first, st.curv_mask is not None)
        grad = paillier.unmask(reply, m) / len(rows)
        history = list(st.history)
        if st.loss_mask is not None and loss_reply is not None:
            loss = self.loss_from_mean_square(mean_square_from_reply(loss_reply, st.loss_mask), ctx.params)
            # each mini-batch round is four sequential hand-offs (partial, residual, gradient,
            # reply): the loss per hand-off is what a user waiting on carried files sees
            history.append({"epoch": st.epoch, "loss": float(loss), "handoffs": 4 * (st.t + 1)})
        alpha = None
        cg = self._cg_state(ctx, st)
        if cg is None:
            st = self.step_weights(ctx, st, grad, data, intercept=True)
        else:
            st, alpha = self._a_cg_step(st, cg, data, grad, curv_reply)
        if history and history[-1]["epoch"] == st.epoch:
            history[-1] = {**history[-1], "decrement": float(st.decrement or 0.0)}
        t = st.t
        st = st.but(history=history, grad_mask=None, loss_mask=None, curv_mask=None).advanced(data.batches_per_epoch)
        go, st = self._continue(ctx, st, data)
        nxt = "batch" if go else "evaluate"
        out = [Reply(nxt, replies[p], priv.public.n, alpha).to(p, "reply", t) for p in ctx.passives]
        return Step(st, "wait-partials" if go else "wait-scores", out)

    def _a_cg_step(self, st: ActiveState, cg: BlockCG, data: LinearData, grad: np.ndarray,
                   curv_reply: list[int] | None) -> tuple[ActiveState, float | None]:
        """A's block-CG step: the joint step ``alpha = RZ / (||X p||^2 / n)`` from P1's answer, its
        own move, and the step's joint decrement ``alpha RZ`` (twice the loss it removed) kept for
        the stop test (:func:`~vfl_cli.models.optim.cg_converged`)."""
        if curv_reply is None or st.curv_mask is None:  # the first exchange: the gradient only
            return self.cg_step(st, cg, data, grad, None), None
        rz = float(st.optimizer["rz_sum"])
        _, alpha = cg_scalars(rz, None, mean_square_from_reply(curv_reply, st.curv_mask))
        st = self.cg_step(st, cg, data, grad, alpha)
        decreases = [*st.optimizer.get("decreases", []), alpha * rz]
        return st.but(decrement=alpha * rz, optimizer={**st.optimizer, "decreases": decreases}), alpha

    def _continue(self, ctx: PartyContext, st: ActiveState, data: LinearData) -> tuple[bool, ActiveState]:
        """Whether another mini-batch runs (and, if not, why: the state says)."""
        if st.epoch >= ctx.params["epochs"]:
            return False, st
        if self.cg(ctx.params):  # block CG: the joint test (the parties' own blocks do not tell)
            if cg_converged(st.optimizer.get("decreases", []), float(ctx.params.get("tol", 0.0))):
                return False, st.but(converged=True)
        else:
            peers = st.peer_converged
            if (data.batches_per_epoch == 1 and st.converged_here and len(peers) == len(ctx.passives)
                    and all(peers.values())):
                return False, st.but(converged=True)  # every party's own block: Newton decrement below tol
        patience = ctx.params["early_stopping_patience"]
        if patience and st.batch == 0:
            history = [h["loss"] for h in st.history]
            if EarlyStopping(ctx.params["early_stopping_tol"], patience).should_stop(history):
                return False, st.but(stopped_early=True)
        return True, st

    def _a_evaluate(self, ctx: PartyContext, st: ActiveState, received: Mapping[str, Artifact]) -> Step[ActiveState]:
        data = LinearData(ctx, intercept=True)
        test = data.split.test
        priv = ctx.private_key()
        scores = Scores.read(need(received, ctx.passives[0], SCORES), priv.public, len(test))
        passive_sum = priv.decrypt(scores.u)
        _, mean, scale = self._target(ctx, data)
        if data.y is None:  # _target refuses an active party without labels
            raise DataError(f"{ctx.name} is the active party but has no label column")
        z = mean + scale * (data.X[test] @ st.w + passive_sum)  # in label units
        st = st.but(label_mean=np.array([mean]), label_scale=np.array([scale]))
        metrics: dict[str, dict[str, Any]] = {"train": {"loss": st.history[-1]["loss"]} if st.history else {}}
        if len(test):
            metrics["test"] = self.evaluate(data.y[test], z)
            # A's own view, kept for its report (ROC, KS, residuals): never sent anywhere
            st = st.but(test_scores=z, test_labels=data.y[test])
        st = st.but(**data.standardiser.to_arrays())
        card = self._model_card(ctx, st, metrics=metrics)
        card["split"] = {"test_ids": [str(i) for i in ctx.job_arrays(ctx.params["alignment"])["aligned_ids"][test]]}
        return Step.finish(st, card)

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

    def _model_card(self, ctx: PartyContext, st: LinearState, *, metrics: dict[str, Any]) -> dict[str, Any]:
        w = st.w
        if st.whiten is not None:  # weights on whitened components -> on the standardised columns
            saved = {"mean": st.mean, "scale": st.scale, "whiten": st.whiten}
            transform = transform_from_arrays({k: v for k, v in saved.items() if v is not None})
            w = np.concatenate([transform.to_standardised(w[: len(ctx.features)]), w[len(ctx.features):]])
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
                "epochs_run": st.epoch,
                "stopped_early": st.stopped_early,
                "converged": st.converged,
            },
            "metrics": metrics,
            "history": st.history,
            "privacy": self._privacy(ctx, st),
        }

    def _privacy(self, ctx: PartyContext, st: LinearState) -> dict[str, Any]:
        """What this job spent on label privacy (public: every party can compute it)."""
        binary = self.task == "binary"
        sigma = float(label_noise_sigma(ctx.params, binary) if st.label_sigma is None else st.label_sigma)
        releases = st.epoch if sigma > 0 else 0
        widest = max([len(ctx.features) + int(ctx.is_active)] + [int(v) for v in st.columns.values()])
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


__all__ = [
    "GRADIENT",
    "LOSS_MEMBERS",
    "PARTIAL",
    "PEER_PARTIAL",
    "REPLY",
    "RESIDUAL",
    "ActiveState",
    "Gradient",
    "HeteroLinear",
    "HeteroLogistic",
    "Partial",
    "PassiveState",
    "PeerPartial",
    "Reply",
    "Residual",
    "Scores",
    "loss_due",
]
