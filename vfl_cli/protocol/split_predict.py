"""``split-nn-predict``: scoring aligned rows with a finished split neural network.

Parameters: ``model`` (a finished ``split-nn`` job whose parts both parties hold) and
``alignment`` (a finished ``psi`` job over the rows to score, possibly on new data files); for
a binary model also the public points scaling (``base_score``, ``pdo``, ``odds``), as ``predict``.

Who holds what (from the training job): the active party A its bottom network ``f_A``, ``W_A``,
``b``, the top network and its share ``U`` of ``W_P``; the passive party P its bottom network
``f_P`` and its share ``V`` (``W_P = U + V``, exact integers at 2^-64). Each party standardises
its aligned rows with its own training statistics (and the model job's columns).

Three hand-offs, the forward pass of training (:mod:`vfl_cli.protocol.split_nn`, whose helpers
and public slot layout this module imports; the masks are the same):

1. ``split/predict-forward`` P -> A: ``[[h]]_KP`` (``h = f_P(X_P)`` at 2^-32, row ``i`` shifted
   into slot ``i mod S``) and ``[[V]]_KP`` (at 2^-64).
2. ``split/predict-request`` A -> P: ``[[h U + R]]_KP``, ``S`` rows per ciphertext, ``R``
   uniform over 2^40 times the public bound of ``|h U|`` (A's secret, from ``secrets``); its
   long-exponent encryption re-randomises the products.
3. ``split/predict-activation`` P -> A: ``h U + R + h V`` (P decrypts, unslots, adds ``h V``).
   A removes ``R`` (``z_P = h W_P``), computes ``z = f_A(X_A) W_A + z_P + b``, the top network
   and the head, and keeps the scores.

What each party learns: A learns the scores and ``z_P = h W_P`` per row (as in training), and,
if its file holds the label for every row, the metrics. P learns ``h U + R`` per row, masked by
``R`` 2^40 times wider than ``|h U|`` (statistically hiding), and nothing else: no score, no
``z``, no layer of A. ``[[V]]`` goes to A under P's key (A never holds it in the clear).

Written on the kit (:mod:`vfl_cli.protocol.kit`): typed states and messages, pure steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member
from vfl_cli.crypto import encoding, paillier
from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.models import split_spec as ss
from vfl_cli.models.features import aligned_rows, numeric_matrix, transform_from_arrays
from vfl_cli.models.nn import make_head
from vfl_cli.protocol.base import Expect, JobRef, PartyContext, need
from vfl_cli.protocol.kit import (
    KitProtocol,
    Message,
    PartyState,
    Phase,
    Step,
    check_round,
    finished_job,
    nothing,
)
from vfl_cli.protocol.predict import SCORING_PARAMS
from vfl_cli.protocol.split_nn import (
    H_BOUND,
    E,
    add_fresh,
    enc_matmul_ints,
    enc_member_info,
    encrypt_ints,
    fixed_ints,
    ints_from_hex,
    ints_to_hex,
    layout,
    pack_slots,
    pad_rows,
    shift_slots,
    uniform_ints,
    unslot,
)
from vfl_cli.protocol.wire import ints_member, read_enc, read_ints, refuse_echo, sent_digests

__all__ = ["Activation", "Forward", "Request", "SplitModelPart", "SplitPredict"]

NAME = "split-nn-predict"
FORWARD = "split/predict-forward"
REQUEST = "split/predict-request"
ACTIVATION = "split/predict-activation"


@dataclass(frozen=True)
class ActiveState(PartyState):
    mask: np.ndarray | None = None  # R (hex text), A's secret, until the activation arrives
    scores: np.ndarray | None = None  # probabilities (binary: of class 1; multiclass: per class) or values
    raw: np.ndarray | None = None  # the network's outputs (binary: log-odds)
    points: np.ndarray | None = None  # binary models: each row's points


@dataclass(frozen=True)
class PassiveState(PartyState):
    sent: np.ndarray | None = None  # digests of the ciphertexts P sent under its own key


@dataclass(frozen=True)
class SplitModelPart:
    """This party's part of a finished ``split-nn`` job: its card and arrays."""

    job: str
    card: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def spec(self) -> ss.SplitSpec:
        return ss.parse_spec(self.card["params"]["model"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.card["params"])

    def net(self, part: str, in_dim: int) -> Any:
        """One of this party's plaintext networks with its trained weights (None if empty)."""
        net = ss.build_part(self.spec, part, in_dim, 0)  # the weights are replaced just below
        if net is not None:
            net.set_flat(self.arrays[f"net_{part}"])
        return net

    def share(self) -> np.ndarray:
        """This party's share of ``W_P``: exact integers at 2^-64."""
        return ints_from_hex(self.arrays["share"])


def model_part(ctx: PartyContext) -> SplitModelPart:
    """This party's part of the ``model`` job, checked to hold what scoring needs."""
    job = ctx.params["model"]
    card = finished_job(ctx, job, ("split-nn",))["results"].get("model")
    arrays = ctx.job_arrays(job)
    need = {"mean", "scale", "share", *(("W_A", "b") if ctx.is_active else ())}
    if not isinstance(card, dict) or card.get("party") != ctx.name or not need <= set(arrays):
        raise VflError(f"job {job} holds no split-nn model part of {ctx.name}")
    return SplitModelPart(job, card, dict(arrays))


def rows_of(ctx: PartyContext, model: SplitModelPart) -> tuple[np.ndarray, Any]:
    """This party's aligned rows standardised with its training statistics, and the rows."""
    alignment = ctx.params["alignment"]
    finished_job(ctx, alignment, ("psi",))
    df = aligned_rows(ctx.data(alignment), ctx.job_arrays(alignment), ctx.id_column, alignment)
    X = transform_from_arrays(model.arrays).transform(numeric_matrix(df, model.card["features"], what=ctx.name))
    return np.asarray(X, dtype=float), df


def fingerprint(ctx: PartyContext) -> str:
    return str(ctx.job_info(ctx.params["alignment"])["results"]["fingerprint"])


# ----- messages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Forward(Message):
    """P -> A: ``[[h]]`` shifted into its slots and ``[[V]]``, under P's key."""

    kind = FORWARD
    rows: int
    alignment: str
    h: Any  # paillier.EncryptedArray (groups * slots, k)
    v: Any  # paillier.EncryptedArray (k, m)

    def meta(self) -> dict[str, Any]:
        return {"rows": self.rows, "alignment": self.alignment}

    def members(self) -> list[Member]:
        return [enc_member_info("h", self.h), enc_member_info("v", self.v)]

    @classmethod
    def read(cls, art: Artifact, public: paillier.PublicKey, rows: int, alignment: str,
             share: np.ndarray, slots: int) -> Forward:
        """Checked against A's rows, alignment, share shape and the public slot count."""
        if art.kind != FORWARD:
            raise InvalidArtifact(f"expected {FORWARD} from {art.sender}, got {art.kind}")
        if art.meta.get("alignment") != alignment:
            raise InvalidArtifact(f"{FORWARD} from {art.sender} scores another alignment (mismatched rows)")
        if type(art.meta.get("rows")) is not int or art.meta["rows"] != rows:
            raise InvalidArtifact(f"{FORWARD} from {art.sender} is for {art.meta.get('rows')!r:.20} rows, "
                                  f"this party has {rows}")
        h, v = read_enc(art, "h", public), read_enc(art, "v", public)
        groups = -(-rows // slots)
        if h.shape != (groups * slots, share.shape[0]) or v.shape != share.shape:
            raise InvalidArtifact(f"{FORWARD} from {art.sender} holds {list(h.shape)} and {list(v.shape)} values, "
                                  f"expected {[groups * slots, share.shape[0]]} and {list(share.shape)}")
        if (h.exponent, v.exponent) != (E, 2 * E):
            raise InvalidArtifact(f"{FORWARD} from {art.sender} is not at exponents {E} and {2 * E}")
        return cls(rows, alignment, h, v)


@dataclass(frozen=True)
class Request(Message):
    """A -> P: ``[[h U + R]]``, ``slots`` rows per ciphertext."""

    kind = REQUEST
    act: Any  # paillier.EncryptedArray (groups, m)
    slots: int
    width: int

    def meta(self) -> dict[str, Any]:
        return {}

    def members(self) -> list[Member]:
        return [enc_member_info("act", self.act, slots=self.slots, slot_bits=self.width)]

    @classmethod
    def read(cls, art: Artifact, public: paillier.PublicKey, groups: int, units: int, slots: int,
             width: int) -> Request:
        if art.kind != REQUEST:
            raise InvalidArtifact(f"expected {REQUEST} from {art.sender}, got {art.kind}")
        act = read_enc(art, "act", public)
        if act.shape != (groups, units):
            raise InvalidArtifact(f"{REQUEST} from {art.sender} holds {list(act.shape)} ciphertexts, "
                                  f"expected {[groups, units]}")
        return cls(act, slots, width)


@dataclass(frozen=True)
class Activation(Message):
    """P -> A: ``h U + R + h V`` per row and unit, modulo P's ``n``."""

    kind = ACTIVATION
    z: list[int]
    modulus: int

    def meta(self) -> dict[str, Any]:
        return {"rows_units": len(self.z)}

    def members(self) -> list[Member]:
        return [ints_member("z", self.z, self.modulus)]

    @classmethod
    def read(cls, art: Artifact, count: int, modulus: int) -> Activation:
        if art.kind != ACTIVATION:
            raise InvalidArtifact(f"expected {ACTIVATION} from {art.sender}, got {art.kind}")
        z = read_ints(art, "z", count)
        if any(v >= modulus for v in z):
            raise InvalidArtifact(f"{ACTIVATION} from {art.sender}: a value is not below the key's modulus")
        return cls(z, modulus)


# ----- pure steps -------------------------------------------------------------------------------
def passive_forward(model: SplitModelPart, X: np.ndarray, public: paillier.PublicKey,
                    alignment: str) -> Forward:
    """P's bottom output on the rows (no dropout), encrypted into its slots, and ``[[V]]``."""
    h = _bottom(model, "passive", X)
    V = model.share()
    _, width, slots = layout(public.bits, V.shape[0], model.params)
    H = encrypt_ints(public, shift_slots(pad_rows(fixed_ints(h), slots), width, slots), E)
    return Forward(len(X), alignment, H, encrypt_ints(public, V, 2 * E))


def _bottom(model: SplitModelPart, part: str, X: np.ndarray) -> np.ndarray:
    h = ss.forward(model.net(part, X.shape[1]), X, train=False)
    if part == "passive" and (not np.all(np.isfinite(h)) or np.abs(h).max(initial=0.0) > H_BOUND):
        raise VflError(f"the passive bottom network's outputs exceed the protocol's bound {H_BOUND:g} on these rows")
    return np.asarray(h, dtype=float)


def active_request(model: SplitModelPart, fwd: Forward, public: paillier.PublicKey) -> tuple[Request, np.ndarray]:
    """``[[h U + R]]`` (the training forward's product and mask) and A's mask ``R``."""
    U = model.share()
    share_bits, width, slots = layout(public.bits, U.shape[0], model.params)
    if max((abs(int(u)) for u in U.flat), default=0) >= 1 << share_bits:
        raise VflError(f"the share of W_P in job {model.job} exceeds its public {share_bits}-bit bound")
    groups, units = fwd.h.shape[0] // slots, U.shape[1]
    hu = enc_matmul_ints(fwd.h.reshape(groups, slots * U.shape[0]), np.vstack([U] * slots), share_bits)
    R = uniform_ints((groups * slots, units), width - 2, signed=False)
    packed = pack_slots(R.reshape(groups, slots, -1).transpose(1, 0, 2), width)
    hu = add_fresh(hu, packed)  # the crypto layer's long-exponent re-randomiser: fresh
    return Request(hu, slots, width), R


def passive_activation(model: SplitModelPart, X: np.ndarray, req: Request,
                       private: paillier.PrivateKey) -> Activation:
    """``h U + R`` (decrypted and unslotted) plus ``h V``, exact integers modulo ``n``."""
    n, V = private.public.n, model.share()
    groups, units = req.act.shape
    cts = private.decrypt_raw(req.act)
    raw = np.empty((groups * req.slots, units), dtype=object)
    for g in range(groups):
        for j in range(units):
            raw[g * req.slots:(g + 1) * req.slots, j] = unslot(int(cts[g * units + j]), n, req.width, req.slots)
    masked = (raw[:len(X)] + fixed_ints(_bottom(model, "passive", X)).dot(V)) % n
    return Activation([int(v) for v in masked.ravel()], n)


def active_outputs(model: SplitModelPart, X: np.ndarray, act: Activation, R: np.ndarray) -> np.ndarray:
    """The network's outputs: ``top(f_A(X_A) W_A + h W_P + b)`` with ``h W_P`` unmasked."""
    units = model.share().shape[1]
    n = act.modulus
    flat = R[:len(X)].ravel()
    z_p = encoding.decode([encoding.signed((y - int(r)) % n, n) for y, r in zip(act.z, flat, strict=True)], 3 * E)
    z = _bottom(model, "active", X) @ model.arrays["W_A"] + np.reshape(z_p, (len(X), units)) + model.arrays["b"]
    return np.asarray(ss.forward(model.net("top", units), z, train=False), dtype=float)


def scored(ctx: PartyContext, model: SplitModelPart, df: Any, out: np.ndarray) -> dict[str, Any]:
    """The active party's results: rows, task and, when every row has a label, the metrics."""
    from vfl_cli.metrics import classification_metrics, multiclass_metrics, regression_metrics

    head = model.spec.head
    results: dict[str, Any] = {"rows": len(out), "model": model.job, "task": head}
    label = ctx.label_column
    if label and label in df.columns and len(df):
        y = numeric_matrix(df, [label], what=ctx.name)[:, 0]
        results["labelled_rows"] = int((~np.isnan(y)).sum())
        if results["labelled_rows"] == len(y):
            pred = make_head(head).predict(out)
            if head == "binary":
                results["metrics"] = {"test": classification_metrics(y, pred)}
            elif head == "multiclass":
                results["metrics"] = {"test": multiclass_metrics(y, pred)}
            else:
                results["metrics"] = {"test": regression_metrics(y, pred)}
    return results


# ----- handlers: decode -> step -> encode -------------------------------------------------------
def _active_check(ctx: PartyContext, state: ActiveState, received: Any) -> Step[ActiveState]:
    rows_of(ctx, model_part(ctx))  # checks the model and the alignment before any file arrives
    return Step(state, "wait-forward")


def _active_request(ctx: PartyContext, state: ActiveState, received: Mapping[str, Artifact]) -> Step[ActiveState]:
    model, p = model_part(ctx), ctx.passives[0]
    X, _ = rows_of(ctx, model)
    art = need(received, p, FORWARD)
    check_round(art, 0)
    public = ctx.public_key(p)
    _, _, slots = layout(public.bits, model.share().shape[0], model.params)
    fwd = Forward.read(art, public, len(X), fingerprint(ctx), model.share(), slots)
    req, R = active_request(model, fwd, public)
    return Step(state.but(mask=ints_to_hex(R)), "wait-activation", [req.to(p, "request", 1)])


def _active_score(ctx: PartyContext, state: ActiveState, received: Mapping[str, Artifact]) -> Step[ActiveState]:
    model, p = model_part(ctx), ctx.passives[0]
    X, df = rows_of(ctx, model)
    art = need(received, p, ACTIVATION)
    check_round(art, 2)
    if state.mask is None:
        raise VflError("this party holds no mask for the activation (its state is damaged)")
    act = Activation.read(art, len(X) * model.share().shape[1], ctx.public_key(p).n)
    out = active_outputs(model, X, act, ints_from_hex(state.mask))
    head = model.spec.head
    scores = make_head(head).predict(out)
    points = None
    if head == "binary":
        from vfl_cli.scorecard import Scaling

        points = Scaling(ctx.params["base_score"], ctx.params["pdo"], ctx.params["odds"]).score(out[:, 0])
    new = ActiveState(None, np.asarray(scores, dtype=float), out, points)
    return Step.finish(new, scored(ctx, model, df, out))


def _passive_send(ctx: PartyContext, state: PassiveState, received: Any) -> Step[PassiveState]:
    model = model_part(ctx)
    X, _ = rows_of(ctx, model)
    own = ctx.private_key().public
    fwd = passive_forward(model, X, own, fingerprint(ctx))
    members = fwd.members()
    sent = sent_digests([m.data for m in members], own.width)
    return Step(state.but(sent=sent), "wait-request", [fwd.to(ctx.active, "forward", 0)])


def _passive_answer(ctx: PartyContext, state: PassiveState, received: Mapping[str, Artifact]) -> Step[PassiveState]:
    model = model_part(ctx)
    X, _ = rows_of(ctx, model)
    priv = ctx.private_key()
    art = need(received, ctx.active, REQUEST)
    check_round(art, 1)
    V = model.share()
    _, width, slots = layout(priv.public.bits, V.shape[0], model.params)
    req = Request.read(art, priv.public, -(-len(X) // slots), V.shape[1], slots, width)
    # decrypt only A's products: none of the [[h]] or [[V]] ciphertexts P sent
    refuse_echo(state.sent, art.members["act"].data, priv.public.width, f"the {REQUEST}", ctx.active)
    act = passive_activation(model, X, req, priv)
    return Step.finish(PassiveState(), {"rows": len(X)}, [act.to(ctx.active, "activation", 2)])


def _from_passive(kind: str) -> Any:
    return lambda ctx, state: [Expect(ctx.passives[0], kind)]


class SplitPredict(KitProtocol[Any]):
    name = NAME
    states = {"active": ActiveState, "passive": PassiveState}
    params_spec = {"model": JobRef(note="the finished split-nn job"), **SCORING_PARAMS}

    def check_parties(self, parties: list[dict[str, str]]) -> None:
        super().check_parties(parties)
        if sum(p["role"] == "passive" for p in parties) != 1:
            raise VflError("split-nn-predict scores between the active party and exactly one passive party")

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _active_check),
            ("active", "wait-forward"): Phase(_from_passive(FORWARD), _active_request),
            ("active", "wait-activation"): Phase(_from_passive(ACTIVATION), _active_score),
            ("passive", "start"): Phase(nothing, _passive_send),
            ("passive", "wait-request"): Phase(lambda ctx, s: [Expect(ctx.active, REQUEST)], _passive_answer),
        }
