"""Split neural networks with plaintext and ciphertext layers (``split-nn``).

Who holds what: the active party A holds the labels, its features ``X_A``, its bottom network
``f_A``, its part ``W_A`` and bias ``b`` of the interactive layer and the top network; the
passive party P holds its features ``X_P`` and its bottom network ``f_P``. The passive part of
the interactive layer, ``W_P``, is *additively shared*: A holds ``U``, P holds ``V``, and
``W_P = U + V``; neither party ever knows ``W_P``. Each party has its own Paillier key (KA, KP).
Bottom and top layers are plaintext layers (one party, its own data); the interactive layer
``z = h_A W_A + h_P W_P + b`` is the only ciphertext layer. Rows are those of a finished ``psi``
job, split and batched by the job's public seed (nothing is sent for that). Everything secret a
party initialises (its layers, its share of ``W_P``, its dropout masks, A's label-protection
noise) comes from its own private seed (:func:`private_seed`), never from the job's seed.

The shares of ``W_P`` (and of its optimiser's velocity) are exact integers at 2^-64, the
resolution of the gradient; the widths below are public (:func:`layout`: key size, ``k`` and the
params). One mini-batch of ``n`` rows (``h = f_P(X_P)``, ``n x k``; ``z`` is ``n x m``), four hand-offs:

1. ``split/forward``  P -> A: ``[[h]]_KP`` (integers at 2^-32), row ``i`` encrypted already
   shifted by ``2^(w (i mod S))`` into its slot (``w`` about 218 bits, ``S = 9`` at 2048 bits),
   and ``[[V]]_KP`` (integers at 2^-64).
2. ``split/activation-request``  A -> P: ``[[h U + R]]_KP``, ``S`` rows per ciphertext (one
   product of the ``S`` shifted rows with ``S`` stacked copies of ``U``, in 52-bit limbs), ``R``
   uniform over ``2^40`` times the public bound of ``|h U|`` (at 2^-96), A's secret; the fresh
   encryption of ``R`` (long DJN exponent) re-randomises the products.
3. ``split/activation``  P -> A: ``hU + R + hV`` (P decrypts, splits the slots and adds ``hV``,
   exact integers). A removes ``R``: ``z_P = h W_P``. A then runs the interactive layer, the
   top network and the loss in plaintext, gets ``delta = dL/dz`` and steps its own layers.
4. ``split/backward``  A -> P: ``delta^T [[h]]`` (the gradient of ``W_P`` as one partial sum per
   slot at 2^-64, public bound ``2^GRAD_BITS`` checked by A, each noised with its own
   ``eps_s = rho_s,t - rho_s,t-1``, ``rho`` uniform over ``[-2^124, 2^124)``: 2^40 times the
   bound, at the sum's own resolution, fresh per batch, A's secret) and ``[[W_P]] delta'^T``
   with ``[[W_P]] = [[V]] + U`` shifted by ``2^(115 s)`` (the error of P's bottom output,
   ``dL/dh = delta' W_P^T``, 17 rows per ciphertext; ``delta'`` is ``delta`` with the label
   protection of :func:`vfl_cli.privacy.protect_labels`, metered every epoch). Both
   re-randomised. P decrypts, steps its share ``V`` with ``grad + eps`` and back-propagates
   ``dL/dh`` through its bottom network; A steps its share ``U`` with ``-eps``. The optimiser
   of ``W_P`` is SGD with momentum in integers (linear, so the two shares' steps sum to the
   step of ``W_P``, each product rounded at 2^-64); the telescoping noise keeps each share
   within ``lr S 2^124 / (1 - momentum)`` of its start. P's next forward goes out in the same step.

After the last epoch P sends the test rows' ``[[h]]`` and steps 1-3 give A the test outputs,
from which A computes the metrics.

What each party learns (semi-honest, no collusion; details in docs/protocols/split-nn.md):

* A: ``z_P = h W_P`` per row (the passive party's contribution to the interactive layer, as in
  every split network), its own gradients, the loss, the test metrics. Not ``h``, not ``W_P``
  (only its share ``U``; ``V0`` is P's own draw), not the gradient of ``W_P``.
* P: the protected ``dL/dh`` per row (needed to train its bottom network in plaintext; the label
  attacks on it are measured in the doc). Every other value it decrypts (``h U + R``, the
  gradient of ``W_P`` plus ``eps``) is masked by noise 2^40 times the value's public bound, at
  the value's own resolution. Not ``delta``, ``z``, ``W_P`` (only its share) or any of A's layers.

Written on the kit (:mod:`vfl_cli.protocol.kit`): each role's state is a frozen dataclass
(:class:`ActiveState`, :class:`PassiveState`; only their ``load``/``store`` touch the engine's job
state: the shares, velocities and masks as hex text, the networks as ``net_<part>``, the stashed
ciphertexts), each artifact kind a :class:`~vfl_cli.protocol.kit.Message`, and each handler
decodes what arrived, calls a pure step (:func:`passive_forward`, :func:`activation_request`,
:func:`passive_activation`, :func:`train_batch`, :func:`passive_backward`) and encodes what it
returns. Slots are the crypto layer's :class:`~vfl_cli.crypto.paillier.SlotLayout` (signed), and
every ciphertext that leaves a party is a fresh encryption or went through
:func:`~vfl_cli.crypto.paillier.rerandomize` (the messages refuse any other).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member
from vfl_cli.crypto import encoding, paillier
from vfl_cli.errors import DataError, EncodingOverflow, InvalidArtifact, VflError
from vfl_cli.models import split_spec as ss
from vfl_cli.models.features import split_rows
from vfl_cli.models.nn import Sequential, make_head
from vfl_cli.models.optim import Optimizer
from vfl_cli.protocol.base import (
    Choice,
    Expect,
    Float,
    Int,
    JobRef,
    JobState,
    Outgoing,
    Param,
    PartyContext,
    Seed,
    defaults,
    need,
    typed_params,
)
from vfl_cli.protocol.kit import KitProtocol, Message, PartyState, Phase, Step, check_round, from_active, nothing
from vfl_cli.protocol.party_data import PartyData
from vfl_cli.protocol.wire import (
    enc_member,
    expect_meta_count,
    ints_member,
    json_state,
    read_enc,
    read_ints,
    refuse_echo,
    sent_digests,
)

__all__ = ["ActiveState", "Activation", "Backward", "Forward", "PassiveState", "Request", "SplitNN"]

FORWARD = "split/forward"
ACT_REQUEST = "split/activation-request"
ACTIVATION = "split/activation"
BACKWARD = "split/backward"

#: Public constants of the protocol (the same for every job, so widths leak nothing).
E = paillier.EXPONENT  # the transmitted exponent: h at 2^-32
SHARE_E = 2 * E  # the shares of W_P (and their velocities): integers at 2^-64, the gradient's resolution
STAT_BITS = 40  # every value a key holder decrypts is masked by noise 2^40 times its public bound
FRAC_BITS = encoding.fraction_bits(SHARE_E)  # 64: the shares' resolution in bits
GRAD_BITS = 20  # |one slot of the gradient of W_P| < 2^20: A refuses a batch whose bound exceeds it
RHO_BITS = GRAD_BITS + FRAC_BITS + STAT_BITS  # rho uniform in [-2^124, 2^124) units of 2^-64
H_BOUND = 2.0**12  # |h| per value (P's bottom output)
H_UNIT_BITS = 12 + encoding.fraction_bits(E)  # 44: |h| < 2^12 at the encoding's 2^-32
LIMB_BITS = 52  # a share enters the engine's products as exact float64 limbs of 52 bits
ERR_SLOT_BITS = 115  # a slot of dL/dh: |dL/dh| <= 2^16 at 2^-96 (W_P at 2^-64 times delta at 2^-32)

#: Every split-nn parameter but ``model`` (checked by ``split_spec.parse_spec``): default and range.
PARAMS: dict[str, Param] = {
    "alignment": JobRef(note="the finished psi job whose rows to train on"),
    "epochs": Int(200, 1, 10_000, note="the cap: training stops earlier on the validation rows"),
    "batch_size": Int(0, 0, 100_000_000, note="0: full batch"),
    "optimizer": Choice("adam", "adam", "sgd"),
    "learning_rate": Float(0.1, 0.0, 10.0, open_low=True),
    "lr_decay": Float(0.1, 0.0, 100.0, note="step t's learning rate is learning_rate / (1 + lr_decay t) "
                      "for every layer but W_P's shares; 0: constant", legacy=0.0),
    "momentum": Float(0.0, 0.0, 1.0, open_high=True, note="sgd only"),
    "l2": Float(0.0, 0.0, 100.0),
    "interactive_lr": Float(0.5, 0.0, 10.0, open_low=True),
    "interactive_momentum": Float(0.9, 0.0, 1.0, open_high=True),
    "test_fraction": Float(0.2, 0.0, 1.0, open_low=True, open_high=True),
    "seed": Seed(),
    "label_protection": Float(3.0, 0.0, 100.0,
                              note="noise on dL/dh, sized per batch to hold label attacks to AUC 0.5 + 0.25/L; 0: off"),
    "pooled_protection": Float(3.0, 0.0, 100.0,
                               note="also hold the attacks on each row's dL/dh summed over the epochs so far "
                               "to 0.5 + 0.25/L; 0: not held (each epoch still is)"),
    "max_leak_auc": Float(1.0, 0.5, 1.0, note="refuse to send when a label attack's AUC exceeds it; 1: never"),
    "validation_fraction": Float(0.1, 0.0, 0.5, note="training rows held out; A scores them every epoch, stops "
                                 "on them and keeps the model keep_model says; 0: train every epoch, keep the last"),
    "patience": Int(30, 1, 10_000, note="epochs without a better validation loss before training stops"),
    "local_steps": Int(2, 1, 100, note="A's own layers step this many times per exchange, on the z_P it "
                       "already holds (FedBCD's local updates); 1: once", legacy=1),
    "keep_model": Choice("last", "last", "best", note="with validation rows, the model kept when training "
                         "stops: the one at the last validation check, or the one scored best there",
                         legacy="best"),
}
DEFAULTS: dict[str, Any] = defaults(PARAMS)

T = TypeVar("T")
P = TypeVar("P", bound="_Party")


def check_params(params: Mapping[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
    if sum(p["role"] == "passive" for p in parties) != 1:
        raise VflError("split-nn trains between the active party and exactly one passive party")
    rest = {k: v for k, v in params.items() if k != "model"} if isinstance(params, Mapping) else params
    out = typed_params(rest, PARAMS, what="split-nn")
    ss.optimizer_factory(out)()  # refuse unknown optimisers and bad values before anyone starts
    ss.interactive_optimizer(out)
    out["model"] = ss.parse_spec(params.get("model")).to_dict()
    split_rows(10, out["test_fraction"], out["seed"])
    return out


def private_seed(role: str) -> int:
    """A party's private seed: its own layers, its share of ``W_P``, its dropout masks and A's
    label-protection noise all derive from it, never from the job's public ``seed``.

    Drawn from the OS's CSPRNG and kept in the party's job state. Tests of the plaintext
    reference replace this function to know the seeds; production never does.
    """
    del role  # the same source for both roles; tests tell them apart
    return secrets.randbits(128)


def layout(bits: int, kp: int, params: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(share_bits, slot_bits, slots)``: public, from the key size, P's output width and the params.

    A's input to its share's optimiser is ``-eps_t = -(r_t - r_(t-1))`` (``r`` the sum of the
    ``S`` slots' ``rho``), so ``U_T - U_0 = lr sum_t mom^(T-t) r_t`` (SGD with momentum, telescoped):
    ``|U - U0| <= lr S 2^RHO_BITS / (1 - mom)``; two bits of margin cover ``U0``, ``W_P`` and the
    ``l2`` decay, and every step checks it. A slot of the activation holds ``h U + R`` with
    ``R`` 2^40 times wider than ``|h U|``; the gradient's slots (``grad + eps``) are narrower.
    """
    most = max(1, (bits - 2) // (RHO_BITS + 3))  # no more slots than the narrowest possible slot allows
    growth = float(params["interactive_lr"]) / (1.0 - float(params["interactive_momentum"]))
    share = RHO_BITS + (most - 1).bit_length() + max(0, math.ceil(math.log2(growth))) + 2
    width = H_UNIT_BITS + share + (max(kp, 1) - 1).bit_length() + STAT_BITS + 2
    if width > bits - 2:
        raise VflError(f"a {bits}-bit key cannot hold one {width}-bit masked activation: use key_bits >= "
                       f"{-(-(width + 2) // 256) * 256}")
    return share, width, (bits - 2) // width


# ----- exact integers ---------------------------------------------------------------------------
def ints_from_hex(x: np.ndarray) -> np.ndarray:
    """Integers kept as hex text in a job state (whose arrays hold no Python objects) -> ints."""
    return np.array([int(str(v), 16) for v in x.flat], dtype=object).reshape(x.shape)


def ints_to_hex(x: np.ndarray) -> np.ndarray:
    """Integers (object array) as hex text, exact at any size."""
    return np.array([hex(int(v)) for v in x.flat], dtype=str).reshape(x.shape)


def _hex_json(x: np.ndarray | None) -> list[Any] | None:
    """Exact integers as nested lists of hex text (JSON, shape kept): :func:`_from_hex_json` reads them."""
    return None if x is None else list(ints_to_hex(x).tolist())


def _from_hex_json(x: list[Any] | None) -> np.ndarray | None:
    return None if x is None else ints_from_hex(np.array(x, dtype=str))


def fixed_ints(x: np.ndarray, exponent: int = E) -> np.ndarray:
    """Fixed-point integers of ``x`` at ``exponent`` (as Python ints, exact): the crypto layer's encoding."""
    return np.array(encoding.encode_signed(x, exponent), dtype=object).reshape(np.shape(x))


def _times(x: np.ndarray, c: float) -> np.ndarray:
    """``round(c x)`` for integers ``x``, exactly: a float ``c`` is a dyadic rational."""
    num, den = float(c).as_integer_ratio()
    return (2 * num * x + den) // (2 * den)


def uniform_ints(shape: tuple[int, ...], bits: int, *, signed: bool) -> np.ndarray:
    """Uniform integers from the OS's CSPRNG: in ``[0, 2^bits)``, or ``[-2^bits, 2^bits)`` if signed."""
    width, offset = (bits + 1, 1 << bits) if signed else (bits, 0)
    out = np.empty(int(np.prod(shape)), dtype=object)
    out[:] = [secrets.randbits(width) - offset for _ in range(out.size)]
    return out.reshape(shape)


def pad_rows(x: np.ndarray, slots: int) -> np.ndarray:
    extra = -len(x) % slots
    return np.vstack([x, np.zeros((extra, x.shape[1]), dtype=x.dtype)]) if extra else x


def _need(x: T | None, what: str) -> T:
    if x is None:
        raise VflError(f"this party's split-nn state holds no {what} (its state is damaged)")
    return x


# ----- slots and ciphertexts: the crypto layer's layout, encoder and re-randomiser --------------
def _slots(width: int, count: int) -> paillier.SlotLayout:
    """``count`` signed slots of ``width`` bits (the values borrow from their neighbours)."""
    return paillier.SlotLayout(width, count, 0, signed=True)


def slot_count(bits: int, width: int, limit: int | None = None) -> int:
    """Signed slots of ``width`` bits per plaintext: their sum stays below ``n / 2``."""
    return paillier.SlotLayout.signed_slots(bits, width, limit).slots


def unslot(residue: int, n: int, width: int, count: int) -> list[int]:
    """The ``count`` signed integers ``v_s`` of ``sum_s v_s 2^(width s)`` (``|v_s| < 2^(width-1)``).

    Raises:
        InvalidArtifact: a value overflowed its slot (it would corrupt its neighbours).
    """
    try:
        return _slots(width, count).read_residue(int(residue), n)
    except EncodingOverflow as err:
        raise InvalidArtifact(str(err)) from None


def _read_slots(residues: list[int], n: int, width: int, slots: int) -> np.ndarray:
    """Every signed slot of every decrypted plaintext, one row per plaintext (the crypto layer's reader).

    Raises:
        InvalidArtifact: a value overflowed its slot (it would corrupt its neighbours).
    """
    try:
        flat = _slots(width, slots).read_all([int(r) for r in residues], n, len(residues) * slots)
    except EncodingOverflow as err:
        raise InvalidArtifact(str(err)) from None
    return np.array(flat, dtype=object).reshape(len(residues), slots)


def pack_slots(x: np.ndarray, width: int) -> np.ndarray:
    """``sum_s x[s] 2^(width s)`` over the first axis: one plaintext of ``S`` signed slots."""
    lay = _slots(width, len(x))
    return sum((x[s] * (1 << lay.shift(s)) for s in range(len(x))), np.zeros(x.shape[1:], dtype=object))


def shift_slots(x: np.ndarray, width: int, slots: int) -> np.ndarray:
    """Row ``i`` of the integers ``x`` times ``2^(width (i mod slots))``: exact (object array)."""
    lay = _slots(width, slots)
    shift = np.array([1 << lay.shift(i % slots) for i in range(len(x))], dtype=object)
    out: np.ndarray = x * shift[:, None]
    return out


def encrypt_ints(public: paillier.PublicKey, x: np.ndarray, exponent: int) -> paillier.EncryptedArray:
    """Fresh encryptions of exact integers (any size below ``n / 4``), read at ``exponent``."""
    from vfl_cli.crypto.histogram import encrypt_rows

    enc = encrypt_rows(public, [int(v) for v in x.flat])
    return paillier.EncryptedArray(public, enc.raw_ciphertexts(), x.shape, exponent, fresh=True)


def add_fresh(x: paillier.EncryptedArray, ints: np.ndarray) -> paillier.EncryptedArray:
    """``x`` plus exact integers (a mask, or noise), re-randomised before it goes to the key holder.

    A computed ciphertext's randomness is a function of its inputs' (which the key holder made)
    and of our plaintext operands, so it must be re-randomised: by the crypto layer's
    long-exponent re-randomiser (a fresh ``h^a`` with a ``ceil(bits/2)``-bit ``a``, the DJN
    paper's length; see :func:`paillier.rerandomize`), which marks the result fresh.
    """
    return paillier.rerandomize(paillier.add_ints(x, ints), randomiser="long-exponent")


def _enc_matmul(enc: paillier.EncryptedArray, W: np.ndarray, exponent: int = E) -> paillier.EncryptedArray:
    """``enc @ W`` by :func:`paillier.enc_matmul`, one call per group of columns of ``W`` whose
    encodings have equal bit lengths (the engine needs the same number of signed digits in
    every column of one call; a group that still differs is done column by column)."""
    top = np.abs(encoding.scaled(W, exponent)).max(axis=0)
    groups: dict[int, list[int]] = {}
    for j, v in enumerate(top.tolist()):
        groups.setdefault(int(v).bit_length(), []).append(j)
    parts, order = [], []
    for cols in groups.values():
        try:
            parts.append(paillier.enc_matmul(enc, W[:, cols], exponent=exponent).T)
        except ValueError:
            parts.extend(paillier.enc_matmul(enc, W[:, [j]], exponent=exponent).T for j in cols)
        order += cols
    return paillier.concatenate(parts)[np.argsort(order)].T


def enc_matmul_ints(enc: paillier.EncryptedArray, W: np.ndarray, bits: int) -> paillier.EncryptedArray:
    """``enc @ W`` for exact integers ``|W| < 2^bits`` (object array): one product per 52-bit
    limb (exact float64 integers), recombined by ``2^(52 l)``; read at ``enc``'s exponent."""
    out, rest = None, W
    for limb in range(-(-(bits + 1) // LIMB_BITS)):
        last = (limb + 1) * LIMB_BITS > bits
        part_ints = rest if last else rest % (1 << LIMB_BITS)
        rest = (rest - part_ints) // (1 << LIMB_BITS)
        if not any(part_ints.flat):
            continue
        part = _enc_matmul(enc, part_ints.astype(np.float64), exponent=0)
        part = part.mul(1 << (LIMB_BITS * limb)) if limb else part
        out = part if out is None else out + part
    if out is None:
        return _enc_matmul(enc, np.zeros(W.shape), exponent=0)
    return out


def enc_member_info(name: str, x: paillier.EncryptedArray, **info: Any) -> Member:
    m = enc_member(name, x)
    return Member(m.name, m.type, m.data, {**m.info, **info})


# ----- typed party state ------------------------------------------------------------------------
@dataclass(frozen=True)
class Sealed:
    """Ciphertexts under the peer's key, kept in this party's state until its next step."""

    blob: bytes
    shape: tuple[int, ...]
    exponent: int

    @classmethod
    def of(cls, x: paillier.EncryptedArray) -> Sealed:
        return cls(x.to_bytes(), tuple(x.shape), x.exponent)

    def open(self, public: paillier.PublicKey) -> paillier.EncryptedArray:
        return paillier.EncryptedArray.from_bytes(public, self.blob, list(self.shape), self.exponent)

    @classmethod
    def from_parts(cls, blob: np.ndarray, info: Mapping[str, Any]) -> Sealed:
        """From :meth:`parts`: the bytes as a uint8 array, the shape and exponent as JSON."""
        return cls(blob.tobytes(), tuple(info["shape"]), int(info["exponent"]))

    def parts(self) -> tuple[np.ndarray, dict[str, Any]]:
        return np.frombuffer(self.blob, dtype=np.uint8), {"shape": list(self.shape), "exponent": self.exponent}


@dataclass(frozen=True)
class _Party(PartyState):
    """What both parties keep: the position, the private seed, the networks and their optimisers,
    and this party's share of ``W_P`` with its velocity (exact integers at 2^-64)."""

    t: int = 0  # the global mini-batch counter: the round of every artifact
    epoch: int = 0
    batch: int = 0
    fingerprint: str = ""
    evaluating: bool = False
    seed: int = 0  # the private seed (hex text "private_seed" in the job state)
    opt: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # optimiser states per part
    nets: dict[str, np.ndarray] = field(default_factory=dict)  # flat weights per part ("net_<part>")
    share: np.ndarray | None = None  # exact integers (hex text in the job state)
    velocity: np.ndarray | None = None  # exact integers (hex text in the job state)
    mean: np.ndarray | None = None  # the standardiser, once finished
    scale: np.ndarray | None = None
    kept: dict[str, Any] = field(default_factory=dict)  # the best validated model's part (JSON; :meth:`snapshot`)
    best_epoch: int = -1  # the epoch whose validation check kept it

    _EXACT: ClassVar[tuple[str, ...]] = ("share", "velocity")

    @classmethod
    def load(cls: type[P], job: JobState) -> P:
        typed = super().load(job)
        nets = {k.removeprefix("net_"): v for k, v in job.arrays.items() if k.startswith("net_")}
        exact = {n: ints_from_hex(job.arrays[n]) for n in cls._EXACT if n in job.arrays}
        seed = int(job.data["private_seed"], 16) if "private_seed" in job.data else 0
        out: P = typed.but(seed=seed, nets=nets, **exact)
        return out

    def store(self, job: JobState) -> None:
        super().store(job)
        for name in ("seed", "nets"):  # written by the kit's default store; kept under their own keys
            job.data.pop(name, None)
            job.arrays.pop(name, None)
        job.data["private_seed"] = f"{self.seed:x}"
        job.arrays.update({f"net_{part}": flat for part, flat in self.nets.items()})
        for name in self._EXACT:
            value = getattr(self, name)
            if value is not None:
                job.arrays[name] = ints_to_hex(value)

    def snapshot(self: P) -> P:
        """This state with its model part (networks, optimisers, share, velocity) kept as the best:
        restored by :meth:`restored` when training stops (validation on)."""
        kept = {"nets": {k: v.tolist() for k, v in self.nets.items()}, "opt": self.opt,
                "share": _hex_json(self.share), "velocity": _hex_json(self.velocity)}
        return self.but(kept=kept, best_epoch=self.epoch)

    def restored(self: P) -> P:
        """The model part kept by :meth:`snapshot` (this state when nothing was kept)."""
        k = self.kept
        if not k:
            return self
        return self.but(nets={p: np.asarray(v, dtype=np.float64) for p, v in k["nets"].items()}, opt=k["opt"],
                        share=_from_hex_json(k["share"]), velocity=_from_hex_json(k["velocity"]))

    def advanced(self: P, batches_per_epoch: int) -> P:
        """At the next mini-batch, and at the next epoch after the last one."""
        batch, epoch = self.batch + 1, self.epoch
        if batch >= batches_per_epoch:
            batch, epoch = 0, epoch + 1
        return self.but(t=self.t + 1, epoch=epoch, batch=batch)


@dataclass(frozen=True)
class PassiveState(_Party):
    sent_digests: np.ndarray | None = None  # the ciphertexts P sent under its own key this round


@dataclass(frozen=True)
class ActiveState(_Party):
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: loss and the meter
    losses: list[float] = field(default_factory=list)  # this epoch's batches so far
    leak: dict[str, Any] | None = None  # the meter's reading at the end of this epoch
    W_A: np.ndarray | None = None
    b: np.ndarray | None = None
    rho: np.ndarray | None = None  # A's noise on the gradient of W_P (exact integers)
    mask: np.ndarray | None = None  # R, A's mask on h U, until the activation arrives (exact integers)
    h: Sealed | None = None  # [[h]] and [[V]] from the forward, until the activation arrives
    v: Sealed | None = None
    meter_pool: np.ndarray | None = None  # the privacy meter: every row's gradients summed over epochs
    meter_g: np.ndarray | None = None  # and this epoch's gradients with their labels
    meter_y: np.ndarray | None = None
    val_best: float | None = None  # the early stop: the best validation loss, checks since it
    val_since: int = 0

    _EXACT: ClassVar[tuple[str, ...]] = ("share", "velocity", "rho", "mask")

    def snapshot(self) -> ActiveState:
        """:meth:`_Party.snapshot` with A's own interactive part (``W_A``, ``b``, its noise ``rho``)."""
        new = super().snapshot()
        extra = {"W_A": _need(self.W_A, "W_A").tolist(), "b": _need(self.b, "b").tolist(),
                 "rho": _hex_json(_need(self.rho, "rho"))}
        return new.but(kept={**new.kept, **extra})

    def restored(self) -> ActiveState:
        k = self.kept
        if not k:
            return self
        return super().restored().but(W_A=np.asarray(k["W_A"]), b=np.asarray(k["b"]), rho=_from_hex_json(k["rho"]))

    _SEALED: ClassVar[tuple[str, ...]] = ("h", "v")  # kept as "stash_<name>": bytes in arrays, shape in data

    @classmethod
    def load(cls, job: JobState) -> ActiveState:
        typed: ActiveState = super().load(job)
        keys = {name: f"stash_{name}" for name in cls._SEALED}
        sealed = {n: Sealed.from_parts(job.arrays[k], job.data[k]) if k in job.arrays else None
                  for n, k in keys.items()}
        return typed.but(**sealed)

    def store(self, job: JobState) -> None:
        super().store(job)
        for name in self._SEALED:
            key, value = f"stash_{name}", getattr(self, name)
            job.data.pop(name, None)  # written by the kit's default store; kept under key instead
            job.arrays.pop(key, None)
            job.data.pop(key, None)
            if value is not None:
                job.arrays[key], job.data[key] = value.parts()


def share_ints(state: JobState) -> np.ndarray:
    """This party's share of ``W_P`` as exact integers at 2^-64 (``U + V = W_P 2^64``)."""
    return _need(_Party.load(state).share, "share of W_P")


@dataclass(frozen=True)
class _Inputs:
    """What every step reads of this party's job: its data, the model spec and the params."""

    data: PartyData
    spec: ss.SplitSpec
    params: Mapping[str, Any]

    @classmethod
    def of(cls, ctx: PartyContext) -> _Inputs:
        params = ctx.params
        data = PartyData(ctx, intercept=False, hold_out=float(params.get("validation_fraction", 0.0)))
        return cls(data, ss.parse_spec(params["model"]), params)

    def rows(self, state: _Party) -> np.ndarray:
        """This step's forward rows: the test rows once evaluating, else the mini-batch, followed
        in an epoch's last mini-batch by the validation rows (A scores them; nobody trains on them)."""
        if state.evaluating:
            return self.data.split.test
        batch = self.batch_rows(state)
        return np.concatenate([batch, self.data.validation]) if self.validating(state) else batch

    def batch_rows(self, state: _Party) -> np.ndarray:
        """The rows this step trains on (the mini-batch of the position)."""
        return self.data.batch_rows(self.params, state.epoch, state.batch)

    def validating(self, state: _Party) -> bool:
        """Whether this step's forward carries the validation rows (an epoch's last mini-batch)."""
        return (not state.evaluating and len(self.data.validation) > 0
                and state.batch == self.data.batches_per_epoch - 1)

    def labels(self, who: str) -> np.ndarray:
        if self.data.y is None:
            raise DataError(f"{who} is the active party but has no label column")
        return self.data.y


def _net(state: _Party, spec: ss.SplitSpec, part: str, in_dim: int) -> Sequential | None:
    """One of this party's plaintext networks with its current weights (None when empty)."""
    net = ss.build_part(spec, part, in_dim, state.seed)
    if net is not None and part in state.nets:
        net.set_flat(state.nets[part])
    return net


def bottom_output(state: _Party, inputs: _Inputs, part: str, rows: np.ndarray, *,
                  train: bool) -> tuple[Sequential | None, np.ndarray]:
    """A bottom network and its output on ``rows``, with this mini-batch's dropout masks."""
    net = _net(state, inputs.spec, part, inputs.data.X.shape[1])
    ss.reseed_dropout(net, state.seed, state.epoch, state.batch, part)
    return net, ss.forward(net, inputs.data.X[rows], train=train)


def step_output(state: _Party, inputs: _Inputs, part: str) -> np.ndarray:
    """A bottom's output on this step's forward rows (:meth:`_Inputs.rows`): the mini-batch with
    its dropout masks, the validation rows and the test rows without (as a model scores)."""
    if state.evaluating:
        return bottom_output(state, inputs, part, inputs.rows(state), train=False)[1]
    h = bottom_output(state, inputs, part, inputs.batch_rows(state), train=True)[1]
    if inputs.validating(state):
        h = np.vstack([h, bottom_output(state, inputs, part, inputs.data.validation, train=False)[1]])
    return h


def _opts(params: Mapping[str, Any], saved: Mapping[str, list[dict[str, Any]]], part: str,
          count: int) -> list[Optimizer]:
    """The optimisers of one part (one per parameter array) in the states ``saved`` for it."""
    make = ss.optimizer_factory(params)
    opts: list[Optimizer] = [make() for _ in range(count)]
    for opt, state in zip(opts, saved.get(part, []), strict=False):  # none saved yet: []
        opt.load_state_dict(state)
    return opts


def _saved(opts: list[Optimizer]) -> list[dict[str, Any]]:
    return [json_state(o.state_dict()) for o in opts]


def _step_share(w: np.ndarray, v: np.ndarray | None, params: Mapping[str, Any], grad: np.ndarray,
                bound_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """One step of this party's share ``w`` of ``W_P`` and its velocity ``v``: SGD with momentum
    in exact integers at 2^-64.

    The reference's rule (``v <- mom v + g + l2 w``, ``w <- w - lr v``) on one share: linear, so
    the two shares' steps sum to the step of ``W_P`` (each product rounded to 2^-64).

    Raises:
        VflError: the share outgrew the public bound its masks were sized for.
    """
    v = np.zeros(w.shape, dtype=object) if v is None else v
    v = _times(v, params["interactive_momentum"]) + grad + _times(w, params["l2"])
    w = w - _times(v, params["interactive_lr"])
    if max(abs(int(x)) for x in w.flat) >= 1 << bound_bits:
        raise VflError(f"a share of the interactive weights outgrew its public {bound_bits}-bit bound; "
                       "lower interactive_lr or l2")
    return w, v


# ----- messages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Forward(Message):
    """P -> A: ``[[h]]`` (row ``i`` shifted into slot ``i mod slots``) and ``[[V]]``, under P's key."""

    kind = FORWARD
    epoch: int
    batch: int
    rows: int
    eval: bool
    alignment: str
    h: paillier.EncryptedArray
    v: paillier.EncryptedArray
    slots: int
    width: int

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "rows": self.rows, "eval": self.eval,
                "alignment": self.alignment}

    def members(self) -> list[Member]:
        for x in (self.h, self.v):
            paillier.require_fresh(x, "the forward message")
        return [enc_member_info("h", self.h, slots=self.slots, slot_bits=self.width), enc_member("v", self.v)]

    @classmethod
    def read(cls, art: Artifact, state: ActiveState, inputs: _Inputs, public: paillier.PublicKey,
             me: str) -> Forward:
        """Checked against A's round, alignment, rows, share of ``W_P`` and the public slot layout."""
        check_round(art, state.t)
        if art.meta.get("alignment") != inputs.data.fingerprint:
            raise InvalidArtifact(f"{art.sender} trains on another alignment than {me} (mismatched rows)")
        rows = len(inputs.rows(state))
        expect_meta_count(art, "rows", rows)
        kp = _kp(art)
        _, width, slots = layout(public.bits, kp, inputs.params)
        groups = -(-rows // slots)
        U = (kp, inputs.spec.units) if state.share is None else state.share.shape
        H, Vc = read_enc(art, "h", public), read_enc(art, "v", public)
        if U[0] != kp or H.shape != (groups * slots, kp) or Vc.shape != U:
            raise InvalidArtifact(f"{art.sender}'s forward holds {list(H.shape)} and {list(Vc.shape)} values, expected "
                                  f"{[groups * slots, U[0]]} and {list(U)} (mismatched rows or widths)")
        if (H.exponent, Vc.exponent) != (E, SHARE_E):
            raise InvalidArtifact(f"{art.sender}'s forward is not at exponents {E} and {SHARE_E}")
        return cls(state.epoch, state.batch, rows, state.evaluating, inputs.data.fingerprint, H, Vc, slots, width)


def _kp(art: Artifact) -> int:
    """P's bottom output width, from the shape of ``[[h]]`` (checked in full once read)."""
    shape = art.members["h"].info.get("shape", []) if "h" in art.members else []
    if len(shape) != 2 or not 1 <= int(shape[1]) <= 100_000:
        raise InvalidArtifact(f"{art.kind} from {art.sender} holds {shape} values, expected rows x columns")
    return int(shape[1])


@dataclass(frozen=True)
class Request(Message):
    """A -> P: ``[[h U + R]]``, ``slots`` rows per ciphertext, re-randomised (fresh)."""

    kind = ACT_REQUEST
    epoch: int
    batch: int
    eval: bool
    act: paillier.EncryptedArray
    slots: int
    width: int

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "eval": self.eval}

    def members(self) -> list[Member]:
        paillier.require_fresh(self.act, "the activation request")
        return [enc_member_info("act", self.act, slots=self.slots, slot_bits=self.width)]

    @classmethod
    def read(cls, art: Artifact, state: PassiveState, inputs: _Inputs, public: paillier.PublicKey) -> Request:
        """Checked against P's round, rows and width; never P's own ciphertexts sent back."""
        check_round(art, state.t)
        V = _need(state.share, "share of W_P")
        _, width, slots = layout(public.bits, V.shape[0], inputs.params)
        groups = -(-len(inputs.rows(state)) // slots)
        act = read_enc(art, "act", public)
        if act.shape != (groups, inputs.spec.units):
            raise InvalidArtifact(f"activation request from {art.sender} holds {list(act.shape)} ciphertexts, "
                                  f"expected {[groups, inputs.spec.units]}")
        # decrypt only A's products: none of the [[h]] or [[V]] ciphertexts P sent this round
        refuse_echo(state.sent_digests, art.members["act"].data, public.width, "the activation request", art.sender)
        return cls(state.epoch, state.batch, state.evaluating, act, slots, width)


@dataclass(frozen=True)
class Activation(Message):
    """P -> A: ``h U + R + h V`` per row and unit, modulo P's ``n``."""

    kind = ACTIVATION
    epoch: int
    batch: int
    eval: bool
    z: list[int]
    modulus: int

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "eval": self.eval}

    def members(self) -> list[Member]:
        return [ints_member("z", self.z, self.modulus)]

    @classmethod
    def read(cls, art: Artifact, state: ActiveState, count: int, modulus: int) -> Activation:
        check_round(art, state.t)
        return cls(state.epoch, state.batch, state.evaluating, read_ints(art, "z", count), modulus)


@dataclass(frozen=True)
class Backward(Message):
    """A -> P: the noised gradient of ``W_P`` (one partial sum per slot) and ``dL/dh``, both fresh."""

    kind = BACKWARD
    epoch: int
    batch: int
    next: str  # "batch" or "evaluate"
    keep: bool  # this batch's validation check was the best: keep the model as it was before its step
    grad: paillier.EncryptedArray
    err: paillier.EncryptedArray
    slots: int
    width: int
    err_slots: int

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "next": self.next, "keep": self.keep}

    def members(self) -> list[Member]:
        for x in (self.grad, self.err):
            paillier.require_fresh(x, "the backward message")
        return [enc_member_info("grad", self.grad, slots=self.slots, slot_bits=self.width),
                enc_member_info("err", self.err, slots=self.err_slots, slot_bits=ERR_SLOT_BITS)]

    @classmethod
    def read(cls, art: Artifact, state: PassiveState, inputs: _Inputs, public: paillier.PublicKey) -> Backward:
        """Checked against P's round, widths and rows; never P's own ciphertexts sent back."""
        check_round(art, state.t)
        k, m = _need(state.share, "share of W_P").shape
        _, width, slots = layout(public.bits, k, inputs.params)
        s_err = slot_count(public.bits, ERR_SLOT_BITS)
        groups = -(-len(inputs.batch_rows(state)) // s_err)
        grad, err = read_enc(art, "grad", public), read_enc(art, "err", public)
        if grad.shape != (m, k) or err.shape != (k, groups):
            raise InvalidArtifact(f"backward message from {art.sender} has the wrong number of values")
        for name in ("grad", "err"):  # A's products, never P's own [[h]] or [[V]] sent back
            refuse_echo(state.sent_digests, art.members[name].data, public.width, "the backward message", art.sender)
        if grad.exponent != SHARE_E:
            raise InvalidArtifact(f"backward message from {art.sender}: the gradient is not at exponent {SHARE_E}")
        nxt = art.meta.get("next")
        if nxt not in ("batch", "evaluate"):
            raise InvalidArtifact(f"backward message from {art.sender} says next={nxt!r}")
        keep = art.meta.get("keep")
        if keep not in (True, False) or (keep and not inputs.validating(state)):
            raise InvalidArtifact(f"backward message from {art.sender} says keep={keep!r} where no validation "
                                  "check was due")
        return cls(state.epoch, state.batch, str(nxt), bool(keep), grad, err, slots, width, s_err)


# ----- pure steps: the passive party ------------------------------------------------------------
def passive_start(inputs: _Inputs, seed: int) -> PassiveState:
    """P's bottom network and its share ``V`` of ``W_P``, both from its own private seed."""
    dim = inputs.data.X.shape[1]
    net = ss.build_part(inputs.spec, "passive", dim, seed)
    # V: P's share of W_P, drawn by P alone; A draws its share U the same way: W_P = U + V
    share = fixed_ints(ss.initial_share(inputs.spec, ss.out_dim(net, dim), seed), SHARE_E)
    return PassiveState(fingerprint=inputs.data.fingerprint, seed=seed,
                        nets={} if net is None else {"passive": net.get_flat()}, share=share)


def passive_forward(state: PassiveState, inputs: _Inputs, own: paillier.PublicKey) -> Forward:
    """P's bottom output on this step's rows, encrypted into its slots, and ``[[V]]``, under P's key."""
    rows = inputs.rows(state)
    h = step_output(state, inputs, "passive")
    if not np.all(np.isfinite(h)) or np.abs(h).max(initial=0.0) > H_BOUND:
        raise VflError("the passive bottom network's outputs exploded (training diverged): lower learning_rate")
    # row i goes to slot i mod S of A's products: encrypt its integers at 2^-32 already
    # shifted by 2^(width (i mod S)); V is P's share, integers at 2^-64
    _, width, slots = layout(own.bits, h.shape[1], inputs.params)
    H = encrypt_ints(own, shift_slots(pad_rows(fixed_ints(h), slots), width, slots), E)
    V = encrypt_ints(own, _need(state.share, "share of W_P"), SHARE_E)
    return Forward(state.epoch, state.batch, len(rows), state.evaluating, inputs.data.fingerprint, H, V, slots, width)


def passive_activation(state: PassiveState, inputs: _Inputs, req: Request, priv: paillier.PrivateKey) -> Activation:
    """``h U + R`` (decrypted, split into its slots) plus ``h V``: exact integers modulo ``n``."""
    rows = inputs.rows(state)
    h = step_output(state, inputs, "passive")
    n = priv.public.n
    groups, units = req.act.shape
    # ciphertext (g, j) holds unit j of rows g S .. g S + S - 1 in its slots 0 .. S-1
    slots = _read_slots(priv.decrypt_raw(req.act), n, req.width, req.slots).reshape(groups, units, req.slots)
    raw = slots.transpose(0, 2, 1).reshape(groups * req.slots, units)
    # hU + R from A (at 2^-96), plus hV on exactly the integers A used: h at 2^-32, V at 2^-64
    masked = (raw[:len(rows)] + fixed_ints(h).dot(_need(state.share, "share of W_P"))) % n
    return Activation(state.epoch, state.batch, state.evaluating, [int(v) for v in masked.ravel()], n)


def passive_backward(state: PassiveState, inputs: _Inputs, back: Backward, priv: paillier.PrivateKey) -> PassiveState:
    """P steps its share ``V`` with the noised gradient and its bottom network with ``dL/dh``,
    then moves to the next mini-batch (or to the test rows). When A's validation check says so, the
    model as it was before this step is kept; at the end the kept one is restored."""
    rows = inputs.batch_rows(state)
    if back.keep:
        state = state.snapshot()
    n, V = priv.public.n, _need(state.share, "share of W_P")
    k, m = V.shape
    share_bits = layout(priv.public.bits, k, inputs.params)[0]
    # the gradient comes as one partial sum per slot (rows i = s mod S), each noised: add them
    # (exact integers at 2^-64: the gradient's resolution and the share's)
    slot_sums = _read_slots(priv.decrypt_raw(back.grad), n, back.width, back.slots).sum(axis=1)
    noisy_grad = slot_sums.reshape(m, k).T
    err_ints = _read_slots(priv.decrypt_raw(back.err), n, ERR_SLOT_BITS, back.err_slots)
    err = encoding.decode(err_ints.ravel(), back.err.exponent).reshape(k, -1)[:, :len(rows)].T
    # V steps with (grad + eps); A steps U with -eps: the shares' sum takes the exact step
    share, velocity = _step_share(V, state.velocity, inputs.params, noisy_grad, share_bits + 1)
    new = state.but(share=share, velocity=velocity)
    net, _ = bottom_output(state, inputs, "passive", rows, train=True)
    if net is not None:
        opts = _opts(inputs.params, state.opt, "passive", len(net.params()))
        net.backward(err)
        ss.step_net(net, opts)
        new = new.but(nets={**new.nets, "passive": net.get_flat()}, opt={**new.opt, "passive": _saved(opts)})
    new = new.advanced(inputs.data.batches_per_epoch)
    if back.next == "evaluate":
        return new.restored().but(evaluating=True)
    return new


# ----- pure steps: the active party -------------------------------------------------------------
def active_start(inputs: _Inputs, who: str, seed: int) -> ActiveState:
    """A checks its labels against the head and builds its bottom and top networks from its seed."""
    spec, y = inputs.spec, inputs.labels(who)
    make_head(spec.head).check_targets(y)
    if spec.head == "multiclass":
        classes = int(y.max()) + 1
        if classes != spec.outputs:
            raise VflError(f"model spec: the labels hold {classes} classes (0..{classes - 1}) but the network "
                           f"has {spec.outputs} outputs; make the last dense layer of [[model.top]] "
                           f"{classes} units")
    nets = {}
    for part, dim in (("active", inputs.data.X.shape[1]), ("top", spec.units)):
        net = ss.build_part(spec, part, dim, seed)
        if net is not None:
            nets[part] = net.get_flat()
    return ActiveState(fingerprint=inputs.data.fingerprint, seed=seed, nets=nets)


def _with_interactive(state: ActiveState, inputs: _Inputs, kp: int, slots: int) -> ActiveState:
    """First batch: ``W_A``, ``b`` and A's share ``U`` of ``W_P``, from A's own seed."""
    spec, dim = inputs.spec, inputs.data.X.shape[1]
    ka = ss.out_dim(ss.build_part(spec, "active", dim, 0), dim)
    return state.but(W_A=ss.initial_active_weights(spec, ka, state.seed), b=np.zeros(spec.units),
                     share=fixed_ints(ss.initial_share(spec, kp, state.seed), SHARE_E),
                     rho=np.zeros((slots, kp, spec.units), dtype=object))


def activation_request(state: ActiveState, inputs: _Inputs, fwd: Forward,
                       peer: paillier.PublicKey) -> tuple[ActiveState, Request]:
    """``[[h U + R]]``: ``S`` rows per ciphertext, masked by ``R`` (A's secret, kept until the activation)."""
    kp, units = fwd.h.shape[1], inputs.spec.units
    share_bits, width, slots = layout(peer.bits, kp, inputs.params)
    groups = fwd.h.shape[0] // slots
    state = _with_interactive(state, inputs, kp, slots) if state.share is None else state
    U = _need(state.share, "share of W_P")
    # rows g S .. g S + S - 1 of [[h]] arrive shifted into slots 0 .. S-1: one product of the
    # S rows with S copies of U puts their S outputs into the slots of one ciphertext (at 2^-96)
    hu = enc_matmul_ints(fwd.h.reshape(groups, slots * kp), np.vstack([U] * slots), share_bits)
    # R: uniform over 2^40 times the bound of |h U|, added before the products are re-randomised
    R = uniform_ints((groups * slots, units), width - 2, signed=False)
    hu = add_fresh(hu, pack_slots(R.reshape(groups, slots, -1).transpose(1, 0, 2), width))
    new = state.but(mask=R, h=Sealed.of(fwd.h), v=Sealed.of(fwd.v))
    return new, Request(state.epoch, state.batch, state.evaluating, hu, slots, width)


def unmasked(z: list[int], R: np.ndarray, n: int) -> np.ndarray:
    """``h W_P = (h U + R + h V) - R``: integers at 2^-96 (``h`` at 2^-32, the shares at 2^-64), decoded."""
    return encoding.decode([encoding.signed((y - int(r)) % n, n) for y, r in zip(z, R.ravel(), strict=False)],
                           E + SHARE_E)


def _active_forward(state: ActiveState, inputs: _Inputs, z_p: np.ndarray, rows: np.ndarray, *,
                    train: bool) -> tuple[Sequential | None, Sequential | None, np.ndarray, np.ndarray]:
    """A's bottom network, top network, bottom output ``h_A`` and the network's output."""
    bottom, h_a = bottom_output(state, inputs, "active", rows, train=train)
    top = _net(state, inputs.spec, "top", inputs.spec.units)
    ss.reseed_dropout(top, state.seed, state.epoch, state.batch, "top")
    z = h_a @ _need(state.W_A, "W_A") + z_p + _need(state.b, "b")
    return bottom, top, h_a, ss.forward(top, z, train=train)


def metered(state: ActiveState, inputs: _Inputs, sent: np.ndarray, rows: np.ndarray, *, end: bool) -> ActiveState:
    """The privacy meter: the label attacks on this epoch's outgoing gradients so far.

    Run at the end of every epoch (recorded in its history entry, with the attacks on each
    training row's gradients summed over the epochs so far: an attacker pooling epochs) and,
    when ``max_leak_auc`` < 1, before every batch is sent: a leak above the bound refuses to send.
    """
    data, params = inputs.data, inputs.params
    if inputs.spec.head == "regression" or data.y is None:
        return state
    y, bound = data.y[rows], float(params["max_leak_auc"])
    pool = np.zeros((data.n, sent.shape[1])) if state.meter_pool is None else state.meter_pool.copy()
    pool[rows] += sent
    g = sent if state.meter_g is None else np.vstack([state.meter_g, sent])
    labels = y if state.meter_y is None else np.concatenate([state.meter_y, y])
    # the next epoch is metered on its own
    new = state.but(meter_pool=pool, meter_g=None if end else g, meter_y=None if end else labels)
    if not end and bound >= 1.0:
        return new
    from vfl_cli.privacy import leak_aucs

    leaks = leak_aucs(labels, g)
    if not leaks:  # too few rows of a class yet to attack
        return new
    worst = max(leaks, key=lambda k: leaks[k])
    if leaks[worst] > bound:
        raise VflError(f"privacy meter: the {worst} label attack on the gradients about to be sent reaches "
                       f"AUC {leaks[worst]:.3f}, above max_leak_auc {bound}; nothing was sent. Raise "
                       f"label_protection (now {params['label_protection']}) or max_leak_auc")
    if not end:
        return new
    train = data.fit
    return new.but(leak={"label_leak_auc": leaks, "label_leak_auc_pooled": leak_aucs(data.y[train], pool[train])})


def backward_message(peer: paillier.PublicKey, H: paillier.EncryptedArray, Vc: paillier.EncryptedArray,
                     U: np.ndarray, delta: np.ndarray, sent: np.ndarray, rho_before: np.ndarray,
                     width: int) -> tuple[paillier.EncryptedArray, paillier.EncryptedArray, np.ndarray, np.ndarray]:
    """``[[grad + eps]]`` and ``[[dL/dh]]`` (both fresh), A's noise ``eps`` on the gradient of
    ``W_P`` summed over the slots (integers at 2^-64, for A's share) and the new ``rho``."""
    m, slots = delta.shape[1], rho_before.shape[0]
    # gradient of W_P under KP: [[h]] arrives shifted, so delta^T [[h]] holds one partial sum per
    # slot (rows i = s mod S), at 2^-64; each is noised with its own eps_s = rho_s,t - rho_s,t-1,
    # rho uniform over 2^40 times the sum's public bound 2^GRAD_BITS, at its own resolution
    d = pad_rows(delta, slots)
    unit = encoding.real_values(1, E)  # one unit of the transmitted encoding, 2^-32
    bound = H_BOUND * (np.abs(d) + unit).reshape(-1, slots, m).sum(axis=0).max()
    if bound >= 2.0**GRAD_BITS:
        raise VflError(f"the gradient of the interactive layer may reach {bound:.3g}, above the protocol's public "
                       f"bound 2^{GRAD_BITS} its noise is sized for: lower learning_rate or standardise the label")
    rho = uniform_ints(rho_before.shape, RHO_BITS, signed=True)
    eps = rho - rho_before
    grad = add_fresh(paillier.plain_matmul(d.T, H), pack_slots(eps.transpose(0, 2, 1), width))
    return grad, _error(peer, Vc, U, sent), eps.sum(axis=0), rho


def _error(peer: paillier.PublicKey, Vc: paillier.EncryptedArray, U: np.ndarray,
           sent: np.ndarray) -> paillier.EncryptedArray:
    """``[[dL/dh]] = [[W_P]] sent^T`` with ``[[W_P]] = [[V]] + U`` (integers at 2^-64), before either
    share steps; ``S'`` rows per ciphertext: ``[[W_P]]`` shifted by ``2^(115 s)`` for slot ``s``."""
    s_err = slot_count(peer.bits, ERR_SLOT_BITS)
    shifted = [paillier.add_ints(Vc, U).T]
    for _ in range(s_err - 1):  # each slot's block from the previous: a 115-bit exponent each
        shifted.append(shifted[-1].mul(1 << ERR_SLOT_BITS))
    blocks = paillier.concatenate(shifted)
    ds = pad_rows(sent, s_err)
    err = _enc_matmul(blocks.T, ds.reshape(len(ds) // s_err, s_err * sent.shape[1]).T)
    return paillier.rerandomize(err, randomiser="long-exponent")


def _stepped_own(state: ActiveState, params: Mapping[str, Any], bottom: Sequential | None, top: Sequential | None,
                 h_a: np.ndarray, delta: np.ndarray) -> ActiveState:
    """A's own layers (bottom, top, ``W_A``, ``b``) stepped on the exact ``delta``, as in plaintext."""
    W_A, b = _need(state.W_A, "W_A"), _need(state.b, "b")
    nets, opt = dict(state.nets), dict(state.opt)
    for net, part, grad_out in ((bottom, "active", delta @ W_A.T), (top, "top", None)):
        if net is not None:
            opts = _opts(params, opt, part, len(net.params()))
            if grad_out is not None:
                net.backward(grad_out)
            ss.step_net(net, opts)
            nets[part], opt[part] = net.get_flat(), _saved(opts)
    opt_wa, opt_b = _opts(params, opt, "interactive", 2)
    W_A = opt_wa.step(W_A, h_a.T @ delta)
    b = opt_b.step(b, delta.sum(axis=0), mask=False)
    opt["interactive"] = _saved([opt_wa, opt_b])
    return state.but(nets=nets, opt=opt, W_A=W_A, b=b)


def _validated(state: ActiveState, inputs: _Inputs, z_val: np.ndarray, who: str) -> tuple[ActiveState, float, bool]:
    """The validation loss of the model as it is before this step (no dropout), checked by the
    early stop (:class:`vfl_cli.models.split_spec.EarlyStop`): ``(state, loss, keep)``, the
    state's model kept when ``keep``: the best so far, or every check's with ``keep_model`` "last"."""
    rows = inputs.data.validation
    _, _, _, out = _active_forward(state, inputs, z_val, rows, train=False)
    loss = float(make_head(inputs.spec.head).loss_grad(out, inputs.labels(who)[rows])[0])
    stop = ss.EarlyStop(int(inputs.params["patience"]), float("inf") if state.val_best is None else state.val_best,
                        state.best_epoch, state.val_since)
    # the stop counts checks since the best loss either way; "last" keeps the model of every check
    keep = stop.check(loss, state.epoch) or inputs.params["keep_model"] == "last"
    new = state.snapshot() if keep else state
    return new.but(val_best=stop.best, val_since=stop.since), loss, keep


def _next_batch(state: ActiveState, loss: float, inputs: _Inputs,
                val_loss: float | None) -> tuple[ActiveState, str]:
    """The loss recorded (and the epoch's history entry after its last batch, with its validation
    loss), the position advanced, and what comes next: another ``"batch"`` or ``"evaluate"``
    (the epoch cap, or ``patience`` checks without a better validation loss: then the kept
    model is restored)."""
    losses, history, leak = [*state.losses, float(loss)], state.history, state.leak
    if state.batch == inputs.data.batches_per_epoch - 1:
        val = {} if val_loss is None else {"val_loss": val_loss}
        history = [*history, {"epoch": state.epoch, "loss": float(np.mean(losses)), **val, **(leak or {})}]
        losses, leak = [], None
    new = state.but(losses=losses, history=history, leak=leak).advanced(inputs.data.batches_per_epoch)
    stopped = val_loss is not None and state.val_since >= int(inputs.params["patience"])
    if new.epoch < int(inputs.params["epochs"]) and not stopped:
        return new, "batch"
    return new.restored().but(evaluating=True), "evaluate"


def train_batch(state: ActiveState, inputs: _Inputs, z_p: np.ndarray, peer: paillier.PublicKey,
                who: str) -> tuple[ActiveState, Backward]:
    """A's plaintext part of one mini-batch (interactive layer, top network, loss, its own steps)
    and the backward message for P: the noised gradient of ``W_P`` and the protected ``dL/dh``.
    ``z_p`` covers the forward's rows (:meth:`_Inputs.rows`): the mini-batch, then any
    validation rows, which A scores first (:func:`_validated`)."""
    spec, params = inputs.spec, inputs.params
    rows = inputs.batch_rows(state)
    val_loss, keep = None, False
    if inputs.validating(state):
        state, val_loss, keep = _validated(state, inputs, z_p[len(rows):], who)
    z_p = z_p[:len(rows)]
    bottom, top, h_a, out = _active_forward(state, inputs, z_p, rows, train=True)
    y = inputs.labels(who)[rows]
    loss, dout = make_head(spec.head).loss_grad(out, y)
    if not np.isfinite(loss):
        raise VflError("the loss is not finite (training diverged): lower learning_rate")
    delta = ss.backward(top, dout)
    # label protection: the passive bottom learns from (and P decrypts) dL/dh = sent W_P^T;
    # every other gradient, W_P's included, uses the exact delta
    sent = ss.protect(delta, y, float(params["label_protection"]),
                      ss.protection_rng(state.seed, state.epoch, state.batch), head=spec.head,
                      pooled=None if state.meter_pool is None else state.meter_pool[rows],
                      pooled_strength=float(params["pooled_protection"]))
    new = metered(state, inputs, sent, rows, end=state.batch == inputs.data.batches_per_epoch - 1)
    H, Vc = _need(state.h, "[[h]]").open(peer), _need(state.v, "[[V]]").open(peer)
    share_bits, width, h_slots = layout(peer.bits, H.shape[1], params)
    H = H[:-(-len(rows) // h_slots) * h_slots]  # the mini-batch's slot groups (validation rows score only)
    U = _need(state.share, "share of W_P")
    grad, err, eps, rho = backward_message(peer, H, Vc, U, delta, sent, _need(state.rho, "rho"), width)
    new = _stepped_own(new, params, bottom, top, h_a, delta)
    for _ in range(int(params["local_steps"]) - 1):  # FedBCD: A's own layers again, on the z_P it holds
        bottom, top, h_a, out = _active_forward(new, inputs, z_p, rows, train=True)
        dout = make_head(spec.head).loss_grad(out, y)[1]
        new = _stepped_own(new, params, bottom, top, h_a, ss.backward(top, dout))
    share, velocity = _step_share(U, state.velocity, params, -eps, share_bits)
    new = new.but(share=share, velocity=velocity, rho=rho, mask=None, h=None, v=None)
    new, nxt = _next_batch(new, float(loss), inputs, val_loss)
    slots = slot_count(peer.bits, ERR_SLOT_BITS)
    return new, Backward(state.epoch, state.batch, nxt, keep, grad, err, rho.shape[0], width, slots)


def _test_metrics(head: str, y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    from vfl_cli.metrics import classification_metrics, multiclass_metrics, regression_metrics

    # scikit-learn (behind the metrics) is imported only here, once per job
    if head == "binary":
        return classification_metrics(y, pred)
    if head == "multiclass":
        return multiclass_metrics(y, pred)
    return regression_metrics(y, pred)


def _privacy(params: Mapping[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The meter's summary over the epochs (the worst reading of each attack, the last pooled one)."""
    leaks = [h["label_leak_auc"] for h in history if h.get("label_leak_auc")]
    return {
        "meter": "label attacks on the gradients A sent, max(AUC, 1 - AUC) per epoch",
        "label_protection": float(params["label_protection"]),
        "pooled_protection": float(params["pooled_protection"]),
        "max_leak_auc": float(params["max_leak_auc"]),
        "worst_label_leak_auc": {k: max(x[k] for x in leaks) for k in leaks[0]} if leaks else {},
        "pooled_label_leak_auc": next((h["label_leak_auc_pooled"] for h in reversed(history)
                                       if h.get("label_leak_auc_pooled")), {}),
    }


def results(ctx: PartyContext, state: _Party, inputs: _Inputs, metrics: dict[str, Any]) -> dict[str, Any]:
    """A party's results: its model card (its own part: layers, its share's shape), metrics, history."""
    spec, dim = inputs.spec, inputs.data.X.shape[1]
    kp = int(_need(state.share, "share of W_P").shape[0])
    history = state.history if isinstance(state, ActiveState) else []
    # each party knows its own input width; the other's only where a dense layer fixes it
    layers = spec.layers(ctx.active, ctx.passives[0], dim if ctx.is_active else None,
                         None if ctx.is_active else dim)
    out: dict[str, Any] = {
        "model": {
            "protocol": SplitNN.name,
            "job": ctx.job,
            "party": ctx.name,
            "alignment": ctx.params["alignment"],
            "params": dict(ctx.params),
            "features": list(ctx.features),
            "head": spec.head,
            "layers": layers,
            "interactive_share": {"shape": [kp, spec.units], "holder": ctx.name,
                                  "note": "one additive share of W_P; the other party holds the other"},
            "epochs_run": state.epoch,
        },
        "metrics": metrics,
        "history": history,
    }
    if len(inputs.data.validation):
        # the model kept: the last checked or the best scored on the validation rows (keep_model; A's check, told to P)
        out["model"]["validation"] = {"rows": int(len(inputs.data.validation)), "kept_epoch": int(state.best_epoch),
                                      "keep": str(ctx.params.get("keep_model", "best"))}
        if isinstance(state, ActiveState) and state.val_best is not None:
            out["model"]["validation"]["best_loss"] = float(state.val_best)
    if ctx.is_active and spec.head != "regression":
        out["privacy"] = _privacy(ctx.params, history)
    return out


def _finished(state: P, inputs: _Inputs) -> P:
    """The state a party finishes with: the standardiser kept for export and prediction."""
    return state.but(mean=inputs.data.standardiser.mean, scale=inputs.data.standardiser.scale)


# ----- handlers: decode -> pure step -> encode --------------------------------------------------
def _p_send_forward(ctx: PartyContext, state: PassiveState, inputs: _Inputs) -> Step[PassiveState]:
    own = ctx.private_key().public
    tick = ctx.progress(f"round {state.t}: encrypting the bottom output", None)
    fwd = passive_forward(state, inputs, own)
    tick(fwd.rows * fwd.v.shape[0])
    members = fwd.members()
    # what P sends under its own key must never come back to it for decryption
    sent = sent_digests([m.data for m in members], own.width)
    out = Outgoing(ctx.active, FORWARD, "forward", members, fwd.meta(), state.t)
    return Step(state.but(sent_digests=sent), "wait-request", [out])


def _p_start(ctx: PartyContext, state: PassiveState, received: Mapping[str, Artifact]) -> Step[PassiveState]:
    inputs = _Inputs.of(ctx)
    if inputs.data.y is not None:
        raise DataError(f"{ctx.name} is passive but has labels")
    return _p_send_forward(ctx, passive_start(inputs, private_seed("passive")), inputs)


def _p_activation(ctx: PartyContext, state: PassiveState, received: Mapping[str, Artifact]) -> Step[PassiveState]:
    inputs, priv = _Inputs.of(ctx), ctx.private_key()
    req = Request.read(need(received, ctx.active, ACT_REQUEST), state, inputs, priv.public)
    out = [passive_activation(state, inputs, req, priv).to(ctx.active, "activation", state.t)]
    if state.evaluating:
        done = _finished(state, inputs)
        return Step.finish(done, results(ctx, done, inputs, {}), out)
    return Step(state, "wait-backward", out)


def _p_backward(ctx: PartyContext, state: PassiveState, received: Mapping[str, Artifact]) -> Step[PassiveState]:
    inputs, priv = _Inputs.of(ctx), ctx.private_key()
    back = Backward.read(need(received, ctx.active, BACKWARD), state, inputs, priv.public)
    return _p_send_forward(ctx, passive_backward(state, inputs, back, priv), inputs)


def _a_start(ctx: PartyContext, state: ActiveState, received: Mapping[str, Artifact]) -> Step[ActiveState]:
    return Step(active_start(_Inputs.of(ctx), ctx.name, private_seed("active")), "wait-forward")


def _a_request(ctx: PartyContext, state: ActiveState, received: Mapping[str, Artifact]) -> Step[ActiveState]:
    inputs, p = _Inputs.of(ctx), ctx.passives[0]
    peer = ctx.public_key(p)
    fwd = Forward.read(need(received, p, FORWARD), state, inputs, peer, ctx.name)
    new, req = activation_request(state, inputs, fwd, peer)
    return Step(new, "wait-activation", [req.to(p, "activation-request", state.t)])


def _a_step(ctx: PartyContext, state: ActiveState, received: Mapping[str, Artifact]) -> Step[ActiveState]:
    inputs, p = _Inputs.of(ctx), ctx.passives[0]
    peer = ctx.public_key(p)
    rows, units = inputs.rows(state), inputs.spec.units
    act = Activation.read(need(received, p, ACTIVATION), state, len(rows) * units, peer.n)
    z_p = unmasked(act.z, _need(state.mask, "mask R")[:len(rows)], peer.n).reshape(len(rows), units)
    if state.evaluating:
        return _a_evaluate(ctx, state.but(mask=None, h=None, v=None), inputs, z_p, rows)
    new, back = train_batch(state, inputs, z_p, peer, ctx.name)
    return Step(new, "wait-forward", [back.to(p, "backward", state.t)])


def _a_evaluate(ctx: PartyContext, state: ActiveState, inputs: _Inputs, z_p: np.ndarray,
                rows: np.ndarray) -> Step[ActiveState]:
    _, _, _, out = _active_forward(state, inputs, z_p, rows, train=False)
    pred = make_head(inputs.spec.head).predict(out)
    test = _test_metrics(inputs.spec.head, inputs.labels(ctx.name)[rows], pred)
    metrics = {"train": {"loss": state.history[-1]["loss"]} if state.history else {}, "test": test}
    done = _finished(state, inputs)
    final = results(ctx, done, inputs, metrics)
    ids = ctx.job_arrays(ctx.params["alignment"])["aligned_ids"][rows]
    final["split"] = {"test_ids": [str(i) for i in ids]}
    return Step.finish(done, final)


def _from_passive(kind: str) -> Any:
    return lambda ctx, state: [Expect(ctx.passives[0], kind)]


class SplitNN(KitProtocol[Any]):
    name = "split-nn"
    summary = "split neural network: plaintext bottom/top layers, a ciphertext interactive layer"
    states = {"active": ActiveState, "passive": PassiveState}
    params_spec = PARAMS

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
        return check_params(params, parties)

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _a_start),
            ("active", "wait-forward"): Phase(_from_passive(FORWARD), _a_request),
            ("active", "wait-activation"): Phase(_from_passive(ACTIVATION), _a_step),
            ("passive", "start"): Phase(nothing, _p_start),
            ("passive", "wait-request"): Phase(from_active(ACT_REQUEST), _p_activation),
            ("passive", "wait-backward"): Phase(from_active(BACKWARD), _p_backward),
        }
