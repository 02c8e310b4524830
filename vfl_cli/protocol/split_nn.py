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
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member
from vfl_cli.crypto import encoding, paillier
from vfl_cli.errors import DataError, InvalidArtifact, VflError
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
    Protocol,
    Seed,
    defaults,
    need,
    typed_params,
)
from vfl_cli.protocol.party_data import PartyData
from vfl_cli.protocol.wire import (
    advance_position,
    check_round,
    enc_member,
    expect_meta_count,
    ints_member,
    json_state,
    position,
    read_enc,
    read_ints,
    refuse_echo,
    remember_sent,
    stash,
    unstash,
)

FORWARD = "split/forward"
ACT_REQUEST = "split/activation-request"
ACTIVATION = "split/activation"
BACKWARD = "split/backward"

#: Public constants of the protocol (the same for every job, so widths leak nothing).
STAT_BITS = 40  # every value a key holder decrypts is masked by noise 2^40 times its public bound
FRAC_BITS = 64  # the shares of W_P (and their velocities) are integers at 2^-64, the gradient's resolution
GRAD_BITS = 20  # |one slot of the gradient of W_P| < 2^20: A refuses a batch whose bound exceeds it
RHO_BITS = GRAD_BITS + FRAC_BITS + STAT_BITS  # rho uniform in [-2^124, 2^124) units of 2^-64
H_BOUND = 2.0**12  # |h| per value (P's bottom output)
H_UNIT_BITS = 44  # |h| < 2^12 at the encoding's 2^-32: integers below 2^44
LIMB_BITS = 52  # a share enters the engine's products as exact float64 limbs of 52 bits
ERR_SLOT_BITS = 115  # a slot of dL/dh: |dL/dh| <= 2^16 at 2^-96 (W_P at 2^-64 times delta at 2^-32)
E = paillier.EXPONENT

#: Every split-nn parameter but ``model`` (checked by ``split_spec.parse_spec``): default and range.
PARAMS: dict[str, Param] = {
    "alignment": JobRef(note="the finished psi job whose rows to train on"),
    "epochs": Int(60, 1, 10_000),
    "batch_size": Int(0, 0, 100_000_000, note="0: full batch"),
    "optimizer": Choice("adam", "adam", "sgd"),
    "learning_rate": Float(0.1, 0.0, 10.0, open_low=True),
    "momentum": Float(0.0, 0.0, 1.0, open_high=True, note="sgd only"),
    "l2": Float(0.0, 0.0, 100.0),
    "interactive_lr": Float(0.5, 0.0, 10.0, open_low=True),
    "interactive_momentum": Float(0.9, 0.0, 1.0, open_high=True),
    "test_fraction": Float(0.2, 0.0, 1.0, open_low=True, open_high=True),
    "seed": Seed(),
    "label_protection": Float(3.0, 0.0, 100.0, note="noise on dL/dh against label inference; 0: off"),
    "max_leak_auc": Float(1.0, 0.5, 1.0, note="refuse to send when a label attack's AUC exceeds it; 1: never"),
}
DEFAULTS: dict[str, Any] = defaults(PARAMS)


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


def _own_seed(state: JobState) -> int:
    return int(state.data["private_seed"], 16)


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


def _big(x: np.ndarray) -> np.ndarray:
    """Integers kept as hex text in a job state (whose arrays hold no Python objects) -> ints."""
    return np.array([int(str(v), 16) for v in x.flat], dtype=object).reshape(x.shape)


def _text(x: np.ndarray) -> np.ndarray:
    """Integers (object array) as hex text, exact at any size."""
    return np.array([hex(int(v)) for v in x.flat], dtype=str).reshape(x.shape)


def share_ints(state: JobState) -> np.ndarray:
    """This party's share of ``W_P`` as exact integers at 2^-64 (``U + V = W_P 2^64``)."""
    return _big(state.arrays["share"])


def _fixed(x: np.ndarray, bits: int) -> np.ndarray:
    """Floats as exact integers at ``2^-bits`` (round half to even), object array."""
    return np.array([int(v) for v in np.rint(np.ldexp(x, bits)).flat], dtype=object).reshape(x.shape)


def _times(x: np.ndarray, c: float) -> np.ndarray:
    """``round(c x)`` for integers ``x``, exactly: a float ``c`` is a dyadic rational."""
    num, den = float(c).as_integer_ratio()
    return (2 * num * x + den) // (2 * den)


def _uniform(shape: tuple[int, ...], bits: int, *, signed: bool) -> np.ndarray:
    """Uniform integers from the OS's CSPRNG: in ``[0, 2^bits)``, or ``[-2^bits, 2^bits)`` if signed."""
    width, offset = (bits + 1, 1 << bits) if signed else (bits, 0)
    out = np.empty(int(np.prod(shape)), dtype=object)
    out[:] = [secrets.randbits(width) - offset for _ in range(out.size)]
    return out.reshape(shape)


def _packed(x: np.ndarray, width: int) -> np.ndarray:
    """``sum_s x[s] 2^(width s)`` over the first axis: one plaintext of ``S`` signed slots."""
    return sum((x[s] * (1 << (width * s)) for s in range(len(x))), np.zeros(x.shape[1:], dtype=object))


def _enc_ints(public: paillier.PublicKey, x: np.ndarray, exponent: int) -> paillier.EncryptedArray:
    """Fresh encryptions of exact integers (any size below ``n / 4``), read at ``exponent``."""
    from vfl_cli.crypto.histogram import encrypt_rows

    enc = encrypt_rows(public, [int(v) for v in x.flat])
    return paillier.EncryptedArray(public, enc.raw_ciphertexts(), x.shape, exponent, fresh=True)


def _ints(x: np.ndarray) -> np.ndarray:
    """Fixed-point integers of ``x`` at the transmitted exponent (as Python ints, exact)."""
    return np.array(encoding.encode_signed(x, E), dtype=object).reshape(x.shape)


def _step_share(state: JobState, params: Mapping[str, Any], grad: np.ndarray, bound_bits: int) -> None:
    """One step of this party's share of ``W_P``, SGD with momentum in exact integers at 2^-64.

    The reference's rule (``v <- mom v + g + l2 w``, ``w <- w - lr v``) on one share: linear, so
    the two shares' steps sum to the step of ``W_P`` (each product rounded to 2^-64).

    Raises:
        VflError: the share outgrew the public bound its masks were sized for.
    """
    w = _big(state.arrays["share"])
    v = _big(state.arrays["velocity"]) if "velocity" in state.arrays else np.zeros(w.shape, dtype=object)
    v = _times(v, params["interactive_momentum"]) + grad + _times(w, params["l2"])
    w = w - _times(v, params["interactive_lr"])
    if max(abs(int(x)) for x in w.flat) >= 1 << bound_bits:
        raise VflError(f"a share of the interactive weights outgrew its public {bound_bits}-bit bound; "
                       "lower interactive_lr or l2")
    state.arrays["share"], state.arrays["velocity"] = _text(w), _text(v)


def _enc_matmul(enc: paillier.EncryptedArray, W: np.ndarray, exponent: int = E) -> paillier.EncryptedArray:
    """``enc @ W`` by :func:`paillier.enc_matmul`, one call per group of columns of ``W`` whose
    encodings have equal bit lengths (the engine needs the same number of signed digits in
    every column of one call; a group that still differs is done column by column)."""
    top = np.abs(np.rint(np.ldexp(W, -4 * exponent))).max(axis=0)
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


def _enc_matmul_ints(enc: paillier.EncryptedArray, W: np.ndarray, bits: int) -> paillier.EncryptedArray:
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


_LONG_KEYS: dict[int, paillier.PublicKey] = {}


def _long_exponent_key(public: paillier.PublicKey) -> paillier.PublicKey:
    """The same key, encrypting with the DJN paper's exponent length ``ceil(bits / 2)``."""
    key = _LONG_KEYS.get(public.n)
    if key is None:
        key = paillier.PublicKey(public.n, public.h)
        key.short_exponent_bits = max(public.short_exponent_bits, -(-public.bits // 16) * 8)
        _LONG_KEYS[public.n] = key
    return key


def _rerandomise(x: paillier.EncryptedArray) -> paillier.EncryptedArray:
    """Re-randomise computed ciphertexts before they go to the key holder.

    A computed ciphertext's randomness is a function of its inputs' (which the key holder made)
    and of our plaintext operands, so it must be re-randomised. The engine's uniform ``r^n``
    costs a full exponentiation (~11 ms at 2048 bits), the dominant cost with per-row values.
    Instead every ciphertext is multiplied by a fresh encryption of 0 with a ``ceil(bits/2)``-bit
    exponent (``h^a``, the DJN paper's length; 1024 bits at 2048): even the key holder, who can
    take discrete logarithms in the smooth part (order ``s``) of the group, sees ``a mod s``
    statistically uniform for any ``s`` below ``2^(bits/2 - 40)``, so nothing of the operands'
    contribution to the exponent is left; the rest needs a discrete logarithm in a large
    prime-order subgroup.
    """
    zeros = paillier.encrypt(_long_exponent_key(x.public), np.zeros(x.shape), exponent=x.exponent)
    return x + zeros


def slot_count(bits: int, width: int, limit: int | None = None) -> int:
    """Signed slots of ``width`` bits per plaintext: their sum stays below ``n / 2``."""
    count = (bits - 2) // width
    return max(1, min(count, limit) if limit else count)


def unslot(residue: int, n: int, width: int, count: int) -> list[int]:
    """The ``count`` signed integers ``v_s`` of ``sum_s v_s 2^(width s)`` (``|v_s| < 2^(width-1)``).

    Raises:
        InvalidArtifact: a value overflowed its slot (it would corrupt its neighbours).
    """
    v = residue - n if residue > n // 2 else residue
    top, full = 1 << (width - 1), 1 << width
    out = []
    for _ in range(count):
        r = v & (full - 1)
        if r >= top:
            r -= full
        out.append(r)
        v = (v - r) >> width
    if v:
        raise InvalidArtifact("a packed value overflowed its slot: the computation exceeded its public bound")
    return out


def _shifted(x: np.ndarray, width: int, slots: int) -> np.ndarray:
    """Row ``i`` of the integers ``x`` times ``2^(width (i mod slots))``: exact (object array)."""
    shift = np.array([1 << (width * (i % slots)) for i in range(len(x))], dtype=object)
    out: np.ndarray = x * shift[:, None]
    return out


def _pad(x: np.ndarray, slots: int) -> np.ndarray:
    extra = -len(x) % slots
    return np.vstack([x, np.zeros((extra, x.shape[1]), dtype=x.dtype)]) if extra else x


def _member(name: str, x: paillier.EncryptedArray, **info: Any) -> Member:
    m = enc_member(name, x)
    return Member(m.name, m.type, m.data, {**m.info, **info})


class SplitNN(Protocol):
    name = "split-nn"
    summary = "split neural network: plaintext bottom/top layers, a ciphertext interactive layer"

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
        return check_params(params, parties)

    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        p, a = ctx.passives[0], ctx.active
        if ctx.is_active:
            return {"start": [], "wait-forward": [Expect(p, FORWARD)],
                    "wait-activation": [Expect(p, ACTIVATION)]}[state.phase]
        return {"start": [], "wait-request": [Expect(a, ACT_REQUEST)],
                "wait-backward": [Expect(a, BACKWARD)]}[state.phase]

    def advance(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]) -> list[Outgoing]:
        data = PartyData(ctx, intercept=False)
        spec = ss.parse_spec(ctx.params["model"])
        if ctx.is_active:
            handler = {"start": self._a_start, "wait-forward": self._a_request,
                       "wait-activation": self._a_step}[state.phase]
        else:
            handler = {"start": self._p_start, "wait-request": self._p_activation,
                       "wait-backward": self._p_backward}[state.phase]
        return handler(ctx, state, received, data, spec)

    # ----- shared helpers -----------------------------------------------------------------------
    _position = staticmethod(position)
    _check_round = staticmethod(check_round)

    @staticmethod
    def _advance(state: JobState, data: PartyData) -> None:
        advance_position(state, data.batches_per_epoch)

    @staticmethod
    def _net(state: JobState, spec: ss.SplitSpec, part: str, in_dim: int, seed: int) -> Sequential | None:
        net = ss.build_part(spec, part, in_dim, seed)
        if net is not None and f"net_{part}" in state.arrays:
            net.set_flat(state.arrays[f"net_{part}"])
        return net

    @staticmethod
    def _save_net(state: JobState, part: str, net: Sequential | None) -> None:
        if net is not None:
            state.arrays[f"net_{part}"] = net.get_flat()

    @staticmethod
    def _opts(
        ctx: PartyContext, state: JobState, key: str, count: int, *, interactive: bool = False
    ) -> list[Optimizer]:
        make = (lambda: ss.interactive_optimizer(ctx.params)) if interactive else ss.optimizer_factory(ctx.params)
        opts = [make() for _ in range(count)]
        for opt, saved in zip(opts, state.data.get("opt", {}).get(key, []), strict=False):  # none saved yet: []
            opt.load_state_dict(saved)
        return opts

    @staticmethod
    def _save_opts(state: JobState, key: str, opts: list[Optimizer]) -> None:
        state.data.setdefault("opt", {})[key] = [json_state(o.state_dict()) for o in opts]

    def _bottom_output(self, ctx: PartyContext, state: JobState, data: PartyData, spec: ss.SplitSpec,
                       part: str, rows: np.ndarray, *, train: bool) -> tuple[Sequential | None, np.ndarray]:
        seed = _own_seed(state)
        net = self._net(state, spec, part, data.X.shape[1], seed)
        _, epoch, batch = self._position(state)
        ss.reseed_dropout(net, seed, epoch, batch, part)
        return net, ss.forward(net, data.X[rows], train=train)

    # ----- passive party ------------------------------------------------------------------------
    def _p_start(self, ctx: PartyContext, state: JobState, received: Any, data: PartyData,
                 spec: ss.SplitSpec) -> list[Outgoing]:
        if data.y is not None:
            raise DataError(f"{ctx.name} is passive but has labels")
        state.data.update(t=0, epoch=0, batch=0, fingerprint=data.fingerprint, evaluating=False)
        seed = private_seed("passive")
        state.data["private_seed"] = f"{seed:x}"
        net = ss.build_part(spec, "passive", data.X.shape[1], seed)
        self._save_net(state, "passive", net)
        k = ss.out_dim(net, data.X.shape[1])
        # V: P's share of W_P, drawn by P alone; A draws its share U the same way: W_P = U + V
        state.arrays["share"] = _text(_fixed(ss.initial_share(spec, k, seed), FRAC_BITS))
        return self._p_forward(ctx, state, data, spec)

    def _p_rows(self, state: JobState, ctx: PartyContext, data: PartyData) -> np.ndarray:
        if state.data["evaluating"]:
            return data.split.test
        _, epoch, batch = self._position(state)
        return data.batch_rows(ctx.params, epoch, batch)

    def _p_forward(self, ctx: PartyContext, state: JobState, data: PartyData, spec: ss.SplitSpec) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        ev = bool(state.data["evaluating"])
        rows = self._p_rows(state, ctx, data)
        _, h = self._bottom_output(ctx, state, data, spec, "passive", rows, train=not ev)
        if not np.all(np.isfinite(h)) or np.abs(h).max(initial=0.0) > H_BOUND:
            raise VflError("the passive bottom network's outputs exploded (training diverged): lower learning_rate")
        own = ctx.private_key().public
        tick = ctx.progress(f"round {t}: encrypting the bottom output", None)
        # row i goes to slot i mod S of A's products: encrypt its integers at 2^-32 already
        # shifted by 2^(width (i mod S)); V is P's share, integers at 2^-64
        _, width, slots = layout(own.bits, h.shape[1], ctx.params)
        shifted = _enc_ints(own, _shifted(_pad(_ints(h), slots), width, slots), E)
        members = [_member("h", shifted, slots=slots, slot_bits=width),
                   enc_member("v", _enc_ints(own, share_ints(state), 2 * E))]
        tick(h.size)
        # what P sends under its own key must never come back to it for decryption
        remember_sent(state, [m.data for m in members], own.width)
        meta = {"epoch": epoch, "batch": batch, "rows": len(rows), "eval": ev, "alignment": data.fingerprint}
        state.phase = "wait-request"
        return [Outgoing(ctx.active, FORWARD, "forward", members, meta, t)]

    def _p_activation(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                      data: PartyData, spec: ss.SplitSpec) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        art = need(received, ctx.active, ACT_REQUEST)
        self._check_round(art, state)
        ev = bool(state.data["evaluating"])
        rows = self._p_rows(state, ctx, data)
        _, h = self._bottom_output(ctx, state, data, spec, "passive", rows, train=not ev)
        priv = ctx.private_key()
        n = priv.public.n
        V = share_ints(state)
        _, width, slots = layout(priv.public.bits, V.shape[0], ctx.params)
        groups = -(-len(rows) // slots)
        act = read_enc(art, "act", priv.public)
        if act.shape != (groups, spec.units):
            raise InvalidArtifact(f"activation request from {ctx.active} holds {list(act.shape)} ciphertexts, "
                                  f"expected {[groups, spec.units]}")
        # decrypt only A's products: none of the [[h]] or [[V]] ciphertexts P sent this round
        refuse_echo(state, art.members["act"].data, priv.public.width, "the activation request", ctx.active)
        cts = np.array(priv.decrypt_raw(act), dtype=object).reshape(groups, spec.units)
        raw = np.empty((groups * slots, spec.units), dtype=object)
        for g in range(groups):
            for j in range(spec.units):
                raw[g * slots:(g + 1) * slots, j] = unslot(int(cts[g, j]), n, width, slots)
        raw = raw[:len(rows)]
        # hU + R from A (at 2^-96), plus hV on exactly the integers A used: h at 2^-32, V at 2^-64
        masked = (raw + _ints(h).dot(V)) % n
        out = [Outgoing(ctx.active, ACTIVATION, "activation", [ints_member("z", masked.ravel().tolist(), n)],
                        {"epoch": epoch, "batch": batch, "eval": ev}, t)]
        if ev:
            self._finish(ctx, state, data, spec, metrics={})
        else:
            state.phase = "wait-backward"
        return out

    def _p_backward(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                    data: PartyData, spec: ss.SplitSpec) -> list[Outgoing]:
        art = need(received, ctx.active, BACKWARD)
        self._check_round(art, state)
        rows = self._p_rows(state, ctx, data)
        priv = ctx.private_key()
        k, m = state.arrays["share"].shape
        n, bits = priv.public.n, priv.public.bits
        share_bits, width, s_act = layout(bits, k, ctx.params)
        s_err = slot_count(bits, ERR_SLOT_BITS)
        groups = -(-len(rows) // s_err)
        grad_c, err_c = read_enc(art, "grad", priv.public), read_enc(art, "err", priv.public)
        if grad_c.shape != (m, k) or err_c.shape != (k, groups):
            raise InvalidArtifact(f"backward message from {ctx.active} has the wrong number of values")
        for name in ("grad", "err"):  # A's products, never P's own [[h]] or [[V]] sent back
            refuse_echo(state, art.members[name].data, priv.public.width, "the backward message", ctx.active)
        # the gradient comes as one partial sum per slot (rows i = s mod S), each noised: add them
        # (exact integers at 2^-64: the gradient's resolution and the share's)
        if grad_c.exponent != 2 * E:
            raise InvalidArtifact(f"backward message from {ctx.active}: the gradient is not at exponent {2 * E}")
        slot_sums = [sum(unslot(int(v), n, width, s_act)) for v in priv.decrypt_raw(grad_c)]
        noisy_grad = np.array(slot_sums, dtype=object).reshape(m, k).T
        err_ints = [unslot(int(v), n, ERR_SLOT_BITS, s_err) for v in priv.decrypt_raw(err_c)]
        err = encoding.decode([x for row in err_ints for x in row], err_c.exponent).reshape(k, groups * s_err)
        err = err[:, :len(rows)].T
        # V steps with (grad + eps); A steps U with -eps: the shares' sum takes the exact step
        _step_share(state, ctx.params, noisy_grad, share_bits + 1)
        net, _ = self._bottom_output(ctx, state, data, spec, "passive", rows, train=True)
        if net is not None:
            opts = self._opts(ctx, state, "passive", len(net.params()))
            net.backward(err)
            ss.step_net(net, opts)
            self._save_net(state, "passive", net)
            self._save_opts(state, "passive", opts)
        self._advance(state, data)
        nxt = art.meta.get("next")
        if nxt == "evaluate":
            state.data["evaluating"] = True
        elif nxt != "batch":
            raise InvalidArtifact(f"backward message from {ctx.active} says next={nxt!r}")
        return self._p_forward(ctx, state, data, spec)

    # ----- active party -------------------------------------------------------------------------
    def _a_start(self, ctx: PartyContext, state: JobState, received: Any, data: PartyData,
                 spec: ss.SplitSpec) -> list[Outgoing]:
        if data.y is None:
            raise DataError(f"{ctx.name} is the active party but has no label column")
        head = make_head(spec.head)
        head.check_targets(data.y)
        if spec.head == "multiclass":
            classes = int(data.y.max()) + 1
            if classes != spec.outputs:
                raise VflError(f"model spec: the labels hold {classes} classes (0..{classes - 1}) but the network "
                               f"has {spec.outputs} outputs; make the last dense layer of [[model.top]] "
                               f"{classes} units")
        seed = private_seed("active")
        state.data["private_seed"] = f"{seed:x}"
        for part, dim in (("active", data.X.shape[1]), ("top", spec.units)):
            self._save_net(state, part, ss.build_part(spec, part, dim, seed))
        state.data.update(t=0, epoch=0, batch=0, fingerprint=data.fingerprint, history=[], losses=[],
                          evaluating=False)
        state.phase = "wait-forward"
        return []

    def _a_request(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                   data: PartyData, spec: ss.SplitSpec) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        art = need(received, ctx.passives[0], FORWARD)
        self._check_round(art, state)
        if art.meta.get("alignment") != data.fingerprint:
            raise InvalidArtifact(f"{art.sender} trains on another alignment than {ctx.name} (mismatched rows)")
        ev = bool(state.data["evaluating"])
        rows = data.split.test if ev else data.batch_rows(ctx.params, epoch, batch)
        expect_meta_count(art, "rows", len(rows))
        peer = ctx.public_key(ctx.passives[0])
        kp = self._kp(art)
        share_bits, width, slots = layout(peer.bits, kp, ctx.params)
        groups = -(-len(rows) // slots)
        if "share" not in state.arrays:  # first batch: W_A and A's share U of W_P, from A's own seed
            ka = ss.out_dim(ss.build_part(spec, "active", data.X.shape[1], 0), data.X.shape[1])
            seed = _own_seed(state)
            state.arrays.update(W_A=ss.initial_active_weights(spec, ka, seed), b=np.zeros(spec.units),
                                share=_text(_fixed(ss.initial_share(spec, kp, seed), FRAC_BITS)),
                                rho=_text(np.zeros((slots, kp, spec.units), dtype=object)))
        U = share_ints(state)
        H, Vc = read_enc(art, "h", peer), read_enc(art, "v", peer)
        if U.shape[0] != kp or H.shape != (groups * slots, kp) or Vc.shape != U.shape:
            raise InvalidArtifact(f"{art.sender}'s forward holds {list(H.shape)} and {list(Vc.shape)} values, expected "
                                  f"{[groups * slots, U.shape[0]]} and {list(U.shape)} (mismatched rows or widths)")
        if (H.exponent, Vc.exponent) != (E, 2 * E):
            raise InvalidArtifact(f"{art.sender}'s forward is not at exponents {E} and {2 * E}")
        # rows g S .. g S + S - 1 of [[h]] arrive shifted into slots 0 .. S-1: one product of the
        # S rows with S copies of U puts their S outputs into the slots of one ciphertext (at 2^-96)
        hu = _enc_matmul_ints(H.reshape(groups, slots * kp), np.vstack([U] * slots), share_bits)
        # R: uniform over 2^40 times the bound of |h U|; its encryption re-randomises the products
        R = _uniform((groups * slots, spec.units), width - 2, signed=False)
        hu = hu + _enc_ints(_long_exponent_key(peer), _packed(R.reshape(groups, slots, -1).transpose(1, 0, 2), width),
                            hu.exponent)
        state.arrays["mask"] = _text(R)
        stash(state, "h", H)
        stash(state, "v", Vc)
        state.phase = "wait-activation"
        members = [_member("act", hu, slots=slots, slot_bits=width)]
        return [Outgoing(ctx.passives[0], ACT_REQUEST, "activation-request", members,
                         {"epoch": epoch, "batch": batch, "eval": ev}, t)]

    @staticmethod
    def _kp(art: Artifact) -> int:
        """P's bottom output width, from the shape of ``[[h]]`` (checked in full once read)."""
        shape = art.members["h"].info.get("shape", []) if "h" in art.members else []
        if len(shape) != 2 or not 1 <= int(shape[1]) <= 100_000:
            raise InvalidArtifact(f"{art.kind} from {art.sender} holds {shape} values, expected rows x columns")
        return int(shape[1])

    def _a_step(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact],
                data: PartyData, spec: ss.SplitSpec) -> list[Outgoing]:
        t, epoch, batch = self._position(state)
        art = need(received, ctx.passives[0], ACTIVATION)
        self._check_round(art, state)
        ev = bool(state.data["evaluating"])
        rows = data.split.test if ev else data.batch_rows(ctx.params, epoch, batch)
        peer = ctx.public_key(ctx.passives[0])
        n = peer.n
        m = spec.units
        R = _big(state.arrays.pop("mask"))[:len(rows)].ravel()
        raw = read_ints(art, "z", len(rows) * m)
        # h W_P = (h U + R + h V) - R: integers at 2^-96 (h at 2^-32, the shares at 2^-64)
        z_p = encoding.decode([encoding.signed((y - int(r)) % n, n) for y, r in zip(raw, R, strict=False)],
                              3 * E).reshape(len(rows), m)
        H = unstash(state, "h", peer)
        Vc = unstash(state, "v", peer)
        seed = _own_seed(state)
        bottom = self._net(state, spec, "active", data.X.shape[1], seed)
        top = self._net(state, spec, "top", m, seed)
        for net, part in ((bottom, "active"), (top, "top")):
            ss.reseed_dropout(net, seed, epoch, batch, part)
        head = make_head(spec.head)
        W_A, b = state.arrays["W_A"], state.arrays["b"]
        h_a = ss.forward(bottom, data.X[rows], train=not ev)
        out = ss.forward(top, h_a @ W_A + z_p + b, train=not ev)
        if ev:
            return self._a_evaluate(ctx, state, data, spec, head.predict(out), rows)
        if data.y is None:
            raise DataError(f"{ctx.name} is the active party but has no label column")
        loss, dout = head.loss_grad(out, data.y[rows])
        if not np.isfinite(loss):
            raise VflError("the loss is not finite (training diverged): lower learning_rate")
        delta = ss.backward(top, dout)
        # label protection: the passive bottom learns from (and P decrypts) dL/dh = sent W_P^T;
        # every other gradient, W_P's included, uses the exact delta
        sent = ss.protect(delta, data.y[rows], float(ctx.params["label_protection"]),
                          ss.protection_rng(seed, epoch, batch), head=spec.head)
        self._meter(ctx, state, spec, sent, data, rows, end=batch == data.batches_per_epoch - 1)
        share_bits, width, _ = layout(peer.bits, H.shape[1], ctx.params)
        members, eps, rho = self._backward_members(peer, H, Vc, share_ints(state), delta, sent,
                                                   _big(state.arrays["rho"]), width)
        self._step_own(ctx, state, bottom, top, h_a, delta)
        _step_share(state, ctx.params, -eps, share_bits)
        state.arrays["rho"] = _text(rho)
        state.data["losses"].append(float(loss))
        if batch == data.batches_per_epoch - 1:
            state.data["history"].append({"epoch": epoch, "loss": float(np.mean(state.data["losses"])),
                                          **state.data.pop("leak", {})})
            state.data["losses"] = []
        self._advance(state, data)
        nxt = "batch" if state.data["epoch"] < int(ctx.params["epochs"]) else "evaluate"
        state.data["evaluating"] = nxt == "evaluate"
        state.phase = "wait-forward"
        meta = {"epoch": epoch, "batch": batch, "next": nxt}
        return [Outgoing(ctx.passives[0], BACKWARD, "backward", members, meta, t)]

    def _step_own(self, ctx: PartyContext, state: JobState, bottom: Sequential | None, top: Sequential | None,
                  h_a: np.ndarray, delta: np.ndarray) -> None:
        """Step A's own layers (bottom, top, ``W_A``, ``b``) on the exact ``delta``, as in plaintext."""
        W_A, b = state.arrays["W_A"], state.arrays["b"]
        for net, part, grad_out in ((bottom, "active", delta @ W_A.T), (top, "top", None)):
            if net is not None:
                opts = self._opts(ctx, state, part, len(net.params()))
                if grad_out is not None:
                    net.backward(grad_out)
                ss.step_net(net, opts)
                self._save_net(state, part, net)
                self._save_opts(state, part, opts)
        opt_wa, opt_b = self._opts(ctx, state, "interactive", 2)
        state.arrays["W_A"] = opt_wa.step(W_A, h_a.T @ delta)
        state.arrays["b"] = opt_b.step(b, delta.sum(axis=0), mask=False)
        self._save_opts(state, "interactive", [opt_wa, opt_b])

    @staticmethod
    def _backward_members(peer: paillier.PublicKey, H: paillier.EncryptedArray, Vc: paillier.EncryptedArray,
                          U: np.ndarray, delta: np.ndarray, sent: np.ndarray, rho_before: np.ndarray,
                          width: int) -> tuple[list[Member], np.ndarray, np.ndarray]:
        """The ``split/backward`` members, A's noise ``eps`` on the gradient of ``W_P`` summed over
        the slots (integers at 2^-64, for A's share) and the new ``rho``."""
        m, slots = delta.shape[1], rho_before.shape[0]
        # gradient of W_P under KP: [[h]] arrives shifted, so delta^T [[h]] holds one partial sum per
        # slot (rows i = s mod S), at 2^-64; each is noised with its own eps_s = rho_s,t - rho_s,t-1,
        # rho uniform over 2^40 times the sum's public bound 2^GRAD_BITS, at its own resolution
        d = _pad(delta, slots)
        bound = H_BOUND * (np.abs(d) + 2.0**-32).reshape(-1, slots, m).sum(axis=0).max()
        if bound >= 2.0**GRAD_BITS:
            raise VflError(f"the gradient of the interactive layer may reach {bound:.3g}, above the protocol's public "
                           f"bound 2^{GRAD_BITS} its noise is sized for: lower learning_rate or standardise the label")
        rho = _uniform(rho_before.shape, RHO_BITS, signed=True)
        eps = rho - rho_before
        grad = paillier.plain_matmul(d.T, H)
        # the noise's encryption also re-randomises the products
        grad = grad + _enc_ints(_long_exponent_key(peer), _packed(eps.transpose(0, 2, 1), width), grad.exponent)
        # dL/dh = sent W_P^T with [[W_P]] = [[V]] + U (integers at 2^-64), before either share
        # steps; S' rows per ciphertext: [[W_P]] shifted by 2^(115 s) for slot s
        s_err = slot_count(peer.bits, ERR_SLOT_BITS)
        shifted = [(Vc + _enc_ints(peer, U, Vc.exponent)).T]
        for _ in range(s_err - 1):  # each slot's block from the previous: a 115-bit exponent each
            shifted.append(shifted[-1].mul(1 << ERR_SLOT_BITS))
        blocks = paillier.concatenate(shifted)
        ds = _pad(sent, s_err)
        err = _enc_matmul(blocks.T, ds.reshape(len(ds) // s_err, s_err * m).T)
        members = [_member("grad", grad, slots=slots, slot_bits=width),
                   _member("err", _rerandomise(err), slots=s_err, slot_bits=ERR_SLOT_BITS)]
        return members, eps.sum(axis=0), rho

    @staticmethod
    def _meter(ctx: PartyContext, state: JobState, spec: ss.SplitSpec, sent: np.ndarray, data: PartyData,
               rows: np.ndarray, *, end: bool) -> None:
        """The privacy meter: the label attacks on this epoch's outgoing gradients so far.

        Run at the end of every epoch (recorded in its history entry, with the attacks on each
        training row's gradients summed over the epochs so far: an attacker pooling epochs) and,
        when ``max_leak_auc`` < 1, before every batch is sent: a leak above the bound refuses to send.
        """
        if spec.head == "regression" or data.y is None:
            return
        y, bound = data.y[rows], float(ctx.params["max_leak_auc"])
        pool = state.arrays.get("meter_pool")
        pool = np.zeros((data.n, sent.shape[1])) if pool is None else pool.copy()
        pool[rows] += sent
        state.arrays["meter_pool"] = pool
        g = np.vstack([state.arrays["meter_g"], sent]) if "meter_g" in state.arrays else sent
        labels = np.concatenate([state.arrays["meter_y"], y]) if "meter_y" in state.arrays else y
        state.arrays["meter_g"], state.arrays["meter_y"] = g, labels
        if end:  # the next epoch is metered on its own
            del state.arrays["meter_g"], state.arrays["meter_y"]
        if not end and bound >= 1.0:
            return
        from vfl_cli.privacy import leak_aucs

        leaks = leak_aucs(labels, g)
        if not leaks:  # too few rows of a class yet to attack
            return
        worst = max(leaks, key=lambda k: leaks[k])
        if leaks[worst] > bound:
            raise VflError(f"privacy meter: the {worst} label attack on the gradients about to be sent reaches "
                           f"AUC {leaks[worst]:.3f}, above max_leak_auc {bound}; nothing was sent. Raise "
                           f"label_protection (now {ctx.params['label_protection']}) or max_leak_auc")
        if end:
            train = data.split.train
            state.data["leak"] = {"label_leak_auc": leaks,
                                  "label_leak_auc_pooled": leak_aucs(data.y[train], pool[train])}

    def _a_evaluate(self, ctx: PartyContext, state: JobState, data: PartyData, spec: ss.SplitSpec,
                    pred: np.ndarray, rows: np.ndarray) -> list[Outgoing]:
        if data.y is None:
            raise DataError(f"{ctx.name} is the active party but has no label column")
        from vfl_cli.metrics import classification_metrics, multiclass_metrics, regression_metrics

        y = data.y[rows]  # scikit-learn (behind the metrics) is imported only here, once per job
        if spec.head == "binary":
            test = classification_metrics(y, pred)
        elif spec.head == "multiclass":
            test = multiclass_metrics(y, pred)
        else:
            test = regression_metrics(y, pred)
        history = state.data["history"]
        metrics = {"train": {"loss": history[-1]["loss"]} if history else {}, "test": test}
        self._finish(ctx, state, data, spec, metrics=metrics)
        ids = ctx.job_arrays(ctx.params["alignment"])["aligned_ids"][rows]
        state.results["split"] = {"test_ids": [str(i) for i in ids]}
        return []

    def _finish(self, ctx: PartyContext, state: JobState, data: PartyData, spec: ss.SplitSpec,
                *, metrics: dict[str, Any]) -> None:
        state.arrays["mean"] = data.standardiser.mean
        state.arrays["scale"] = data.standardiser.scale
        state.phase = "done"
        state.done = True
        dim = data.X.shape[1]
        kp = int(state.arrays["share"].shape[0])
        # each party knows its own input width; the other's only where a dense layer fixes it
        layers = spec.layers(ctx.active, ctx.passives[0], dim if ctx.is_active else None,
                             None if ctx.is_active else dim)
        state.results = {
            "model": {
                "protocol": self.name,
                "job": ctx.job,
                "party": ctx.name,
                "alignment": ctx.params["alignment"],
                "params": dict(ctx.params),
                "features": list(ctx.features),
                "head": spec.head,
                "layers": layers,
                "interactive_share": {"shape": [kp, spec.units], "holder": ctx.name,
                                      "note": "one additive share of W_P; the other party holds the other"},
                "epochs_run": int(state.data["epoch"]),
            },
            "metrics": metrics,
            "history": state.data.get("history", []),
        }
        if ctx.is_active and spec.head != "regression":
            leaks = [h["label_leak_auc"] for h in state.results["history"] if h.get("label_leak_auc")]
            state.results["privacy"] = {
                "meter": "label attacks on the gradients A sent, max(AUC, 1 - AUC) per epoch",
                "label_protection": float(ctx.params["label_protection"]),
                "max_leak_auc": float(ctx.params["max_leak_auc"]),
                "worst_label_leak_auc": {k: max(x[k] for x in leaks) for k in leaks[0]} if leaks else {},
                "pooled_label_leak_auc": next((h["label_leak_auc_pooled"] for h in reversed(state.results["history"])
                                               if h.get("label_leak_auc_pooled")), {}),
            }


__all__ = ["SplitNN"]
