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

One mini-batch of ``n`` rows (``h = f_P(X_P)``, ``n x k``; ``z`` is ``n x m``), four hand-offs:

1. ``split/forward``  P -> A: ``[[h]]_KP``, row ``i`` encrypted already shifted by
   ``2^(155 (i mod S))`` into its slot (``S = 6`` at 2048 bits), and ``[[V]]_KP``.
2. ``split/activation-request``  A -> P: ``[[h U + R]]_KP``, ``S`` rows per ciphertext (one
   product of the ``S`` shifted rows with ``S`` stacked copies of ``U``), ``R`` uniform 150-bit
   integers (at the encoding's resolution) that A keeps; re-randomised (:func:`_rerandomise`).
3. ``split/activation``  P -> A: ``hU + R + hV`` (P decrypts, splits the slots and adds ``hV``,
   exact integers). A removes ``R``: ``z_P = h W_P``. A then runs the interactive layer, the
   top network and the loss in plaintext, gets ``delta = dL/dz`` and steps its own layers.
4. ``split/backward``  A -> P: ``delta^T [[h]]`` (the gradient of ``W_P`` as one partial sum per
   slot, each noised with its own ``eps_s = rho_s,t - rho_s,t-1``, ``rho`` uniform in
   ``[-2^20, 2^20]`` at the sum's own resolution 2^-64, fresh per batch, A's secret) and
   ``[[W_P]] delta'^T`` with ``[[W_P]] = [[V]] + U`` shifted by ``2^(83 s)`` (the error of P's
   bottom output, ``dL/dh = delta' W_P^T``, 24 rows per ciphertext; ``delta'`` is ``delta`` with
   the label protection of :func:`vfl_cli.privacy.protect_labels`, metered every epoch). Both re-randomised. P decrypts, steps its
   share ``V`` with ``grad + eps`` and back-propagates ``dL/dh`` through its bottom network; A
   steps its share ``U`` with ``-eps``. The optimiser of ``W_P`` is SGD with momentum (linear,
   so two shares stepped separately sum to the exact update). P's next forward goes out in the
   same step.

After the last epoch P sends the test rows' ``[[h]]`` and steps 1-3 give A the test outputs,
from which A computes the metrics.

What each party learns (semi-honest, no collusion; details in docs/protocols/split-nn.md):

* A: ``z_P = h W_P`` per row (the passive party's contribution to the interactive layer, as in
  every split network), its own gradients, the loss, the test metrics. Not ``h``, not ``W_P``
  (only its share ``U``; ``V0`` is P's own draw), not the gradient of ``W_P``.
* P: the protected ``dL/dh`` per row (needed to train its bottom network in plaintext; the label
  attacks on it are measured in the doc), and the gradient of ``W_P`` plus A's noise ``eps``
  (a 20-bit statistical margin, not 40: see the doc). Not ``delta``, ``z``, ``W_P`` (only its
  share) or any of A's layers.
"""

from __future__ import annotations

import os
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
    Choice, Expect, Float, Int, JobRef, JobState, Outgoing, Param, PartyContext, Protocol, Seed,
    defaults, need, typed_params,
)
from vfl_cli.protocol.hetero_linear import (
    PartyData,
    advance_position,
    check_round,
    position,
    _json_state,
    enc_member,
    ints_member,
    read_enc,
    read_ints,
    stash,
    unstash,
)

FORWARD = "split/forward"
ACT_REQUEST = "split/activation-request"
ACTIVATION = "split/activation"
BACKWARD = "split/backward"

#: Public constants of the protocol (the same for every job, so widths leak nothing).
NOISE_BITS = 20  # |rho| <= 2**20: the noise on the gradient of W_P
NOISE_PIECE_BITS = 42  # rho is drawn at the gradient's own resolution 2^-64: two pieces of <= 43 bits
H_BOUND = 2.0**12  # |h| per value (P's bottom output)
MASK_PIECE_BITS = 50  # R is three 50-bit pieces: uniform over 2**150 encoded units
MASK_PIECES = 3
ACT_SLOT_BITS = 155  # a slot of the activation and gradient: |h U + R| < 2**151, signed
ACT_MAX_SLOTS = 6  # shifts by 2**(155 s) go through float64 plaintexts: its range allows s <= 5
ERR_SLOT_BITS = 83  # a slot of dL/dh: |dL/dh| <= 2**16, i.e. < 2**80 at exponent -16
E = paillier.EXPONENT

#: Every split-nn parameter but ``model`` (checked by ``split_spec.parse_spec``): default and range.
PARAMS: dict[str, Param] = {
    "alignment": JobRef(note="the finished psi job whose rows to train on"),
    "epochs": Int(10, 1, 10_000),
    "batch_size": Int(0, 0, 100_000_000, note="0: full batch"),
    "optimizer": Choice("adam", "adam", "sgd"),
    "learning_rate": Float(0.01, 0.0, 10.0, open_low=True),
    "momentum": Float(0.0, 0.0, 1.0, open_high=True, note="sgd only"),
    "l2": Float(0.0, 0.0, 100.0),
    "interactive_lr": Float(0.1, 0.0, 10.0, open_low=True),
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


def _random_ints(count: int, bits: int) -> np.ndarray:
    """``count`` uniform integers below ``2**bits`` (bits <= 63) from the OS's CSPRNG."""
    raw = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return (raw >> np.uint64(64 - bits)).astype(np.int64)


def _noise(shape: tuple[int, ...]) -> np.ndarray:
    """``rho``: uniform in [-2^NOISE_BITS, 2^NOISE_BITS) at the gradient's own resolution 2^-64,
    as two int64 pieces (``hi 2^42 + lo - 2^(NOISE_BITS+64)`` encoded units), shape (2, *shape)."""
    count = int(np.prod(shape))
    hi = _random_ints(count, NOISE_BITS + 64 + 1 - NOISE_PIECE_BITS).reshape(shape)
    return np.stack([hi, _random_ints(count, NOISE_PIECE_BITS).reshape(shape)])


def _zero_noise(shape: tuple[int, ...]) -> np.ndarray:
    """The pieces of :func:`_noise` that stand for 0 (the noise before the first batch)."""
    return np.stack([np.full(shape, 1 << (NOISE_BITS + 64 - NOISE_PIECE_BITS), dtype=np.int64),
                     np.zeros(shape, dtype=np.int64)])


def _noise_units(pieces: np.ndarray) -> np.ndarray:
    """The integers (encoded units at 2^-64) of :func:`_noise`'s pieces (object array)."""
    hi, lo = pieces.astype(object)
    return hi * (1 << NOISE_PIECE_BITS) + lo - (1 << (NOISE_BITS + 64))


def _split_units(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed integers as ``hi 2^42 + lo`` with two exact float64 arrays (``0 <= lo < 2^42``)."""
    lo = np.array([int(v) & ((1 << NOISE_PIECE_BITS) - 1) for v in x.flat], dtype=np.float64).reshape(x.shape)
    hi = np.array([int(v) >> NOISE_PIECE_BITS for v in x.flat], dtype=np.float64).reshape(x.shape)
    return hi, lo


def _ints(x: np.ndarray) -> np.ndarray:
    """Fixed-point integers of ``x`` at the transmitted exponent (as Python ints, exact)."""
    return np.array(encoding.encode_signed(x, E), dtype=object).reshape(x.shape)


def _enc_matmul(enc: paillier.EncryptedArray, W: np.ndarray) -> paillier.EncryptedArray:
    """``enc @ W`` by :func:`paillier.enc_matmul`, one call per group of columns of ``W`` whose
    encodings have equal bit lengths (the engine needs the same number of signed digits in
    every column of one call; a group that still differs is done column by column)."""
    top = np.abs(np.rint(np.ldexp(W, -4 * E))).max(axis=0)
    groups: dict[int, list[int]] = {}
    for j, v in enumerate(top.tolist()):
        groups.setdefault(int(v).bit_length(), []).append(j)
    parts, order = [], []
    for cols in groups.values():
        try:
            parts.append(paillier.enc_matmul(enc, W[:, cols]).T)
        except ValueError:
            parts.extend(paillier.enc_matmul(enc, W[:, [j]]).T for j in cols)
        order += cols
    return paillier.concatenate(parts)[np.argsort(order)].T


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
    """Row ``i`` of ``x`` (already on the 2^-32 grid) times ``2^(width (i mod slots))``: exact."""
    shift = (np.arange(len(x)) % slots) * width
    out: np.ndarray = np.ldexp(x, shift[:, None])
    return out


def _pad(x: np.ndarray, slots: int) -> np.ndarray:
    extra = -len(x) % slots
    return np.vstack([x, np.zeros((extra, x.shape[1]))]) if extra else x


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
    def _opts(ctx: PartyContext, state: JobState, key: str, count: int, *, interactive: bool = False) -> list[Optimizer]:
        make = (lambda: ss.interactive_optimizer(ctx.params)) if interactive else ss.optimizer_factory(ctx.params)
        opts = [make() for _ in range(count)]
        for opt, saved in zip(opts, state.data.get("opt", {}).get(key, [])):
            opt.load_state_dict(saved)
        return opts

    @staticmethod
    def _save_opts(state: JobState, key: str, opts: list[Optimizer]) -> None:
        state.data.setdefault("opt", {})[key] = [_json_state(o.state_dict()) for o in opts]

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
        state.arrays["share"] = ss.initial_share(spec, k, seed)
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
        # row i goes to slot i mod S of A's products: encrypt it already shifted by 2^(155 (i mod S))
        # (on the 2^-32 grid first, so the shifted value is exactly that integer)
        slots = slot_count(own.bits, ACT_SLOT_BITS, ACT_MAX_SLOTS)
        grid = np.ldexp(np.rint(np.ldexp(h, -4 * E)), 4 * E)
        shifted = paillier.encrypt(own, _shifted(_pad(grid, slots), ACT_SLOT_BITS, slots))
        members = [_member("h", shifted, slots=slots, slot_bits=ACT_SLOT_BITS),
                   enc_member("v", paillier.encrypt(own, state.arrays["share"]))]
        tick(h.size)
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
        slots = slot_count(priv.public.bits, ACT_SLOT_BITS, ACT_MAX_SLOTS)
        groups = -(-len(rows) // slots)
        act = read_enc(art, "act", priv.public)
        if act.shape != (groups, spec.units):
            raise InvalidArtifact(f"activation request from {ctx.active} holds {list(act.shape)} ciphertexts, "
                                  f"expected {[groups, spec.units]}")
        cts = np.array(priv.decrypt_raw(act), dtype=object).reshape(groups, spec.units)
        raw = np.empty((groups * slots, spec.units), dtype=object)
        for g in range(groups):
            for j in range(spec.units):
                raw[g * slots:(g + 1) * slots, j] = unslot(int(cts[g, j]), n, ACT_SLOT_BITS, slots)
        raw = raw[:len(rows)]
        # hU + R from A, plus hV computed exactly on the same fixed-point integers A used
        masked = (raw + _ints(h).dot(_ints(state.arrays["share"]))) % n
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
        V = state.arrays["share"]
        k, m = V.shape
        n, bits = priv.public.n, priv.public.bits
        s_act, s_err = slot_count(bits, ACT_SLOT_BITS, ACT_MAX_SLOTS), slot_count(bits, ERR_SLOT_BITS)
        groups = -(-len(rows) // s_err)
        grad_c, err_c = read_enc(art, "grad", priv.public), read_enc(art, "err", priv.public)
        if grad_c.shape != (m, k) or err_c.shape != (k, groups):
            raise InvalidArtifact(f"backward message from {ctx.active} has the wrong number of values")
        # the gradient comes as one partial sum per slot (rows i = s mod S), each noised: add them
        slot_sums = [sum(unslot(int(v), n, ACT_SLOT_BITS, s_act)) for v in priv.decrypt_raw(grad_c)]
        noisy_grad = encoding.decode(slot_sums, grad_c.exponent).reshape(m, k).T
        err_ints = [unslot(int(v), n, ERR_SLOT_BITS, s_err) for v in priv.decrypt_raw(err_c)]
        err = encoding.decode([x for row in err_ints for x in row], err_c.exponent).reshape(k, groups * s_err)
        err = err[:, :len(rows)].T
        # V steps with (grad + eps); A steps U with -eps: the shares' sum takes the exact step
        (opt_v,) = self._opts(ctx, state, "share", 1, interactive=True)
        state.arrays["share"] = opt_v.step(V, noisy_grad)
        self._save_opts(state, "share", [opt_v])
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
                               f"has {spec.outputs} outputs; make the last dense layer of [[model.top]] {classes} units")
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
        peer = ctx.public_key(ctx.passives[0])
        slots = slot_count(peer.bits, ACT_SLOT_BITS, ACT_MAX_SLOTS)
        groups = -(-len(rows) // slots)
        kp = self._kp(art, groups * slots)
        if "share" not in state.arrays:  # first batch: W_A and A's share U of W_P, from A's own seed
            ka = ss.out_dim(ss.build_part(spec, "active", data.X.shape[1], 0), data.X.shape[1])
            seed = _own_seed(state)
            state.arrays.update(W_A=ss.initial_active_weights(spec, ka, seed), b=np.zeros(spec.units),
                                share=ss.initial_share(spec, kp, seed),
                                rho=_zero_noise((slots, kp, spec.units)))
        U = state.arrays["share"]
        if U.shape[0] != kp:
            raise InvalidArtifact(f"{art.sender}'s bottom output has {kp} columns, the interactive layer expects {U.shape[0]}")
        H = read_enc(art, "h", peer)
        # rows g S .. g S + S - 1 of [[h]] arrive shifted into slots 0 .. S-1: one product of the
        # S rows with S copies of U puts their S outputs into the slots of one ciphertext
        hu = _enc_matmul(H.reshape(groups, slots * kp), np.vstack([U] * slots))
        pieces = _random_ints(MASK_PIECES * groups * slots * spec.units, MASK_PIECE_BITS).reshape(
            MASK_PIECES, groups * slots, spec.units)
        for s_ in range(slots):
            for i in range(MASK_PIECES):
                # piece i of slot s is worth 2^(50 i + 155 s) encoded units: exact floats, so R is exact
                shift = MASK_PIECE_BITS * i + ACT_SLOT_BITS * s_ + 4 * hu.exponent
                hu = hu + np.ldexp(pieces[i, s_::slots].astype(np.float64), shift)
        state.arrays["mask"] = pieces
        stash(state, "h", H)
        stash(state, "v", read_enc(art, "v", peer))
        state.phase = "wait-activation"
        members = [_member("act", _rerandomise(hu), slots=slots, slot_bits=ACT_SLOT_BITS)]
        return [Outgoing(ctx.passives[0], ACT_REQUEST, "activation-request", members,
                         {"epoch": epoch, "batch": batch, "eval": ev}, t)]

    @staticmethod
    def _kp(art: Artifact, rows: int) -> int:
        shape = art.members["h"].info.get("shape", []) if "h" in art.members else []
        if len(shape) != 2 or int(shape[0]) != rows:
            raise InvalidArtifact(f"{art.kind} from {art.sender} holds {shape} values, expected {rows} rows (mismatched rows)")
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
        pieces = state.arrays.pop("mask")
        raw = read_ints(art, "z", len(rows) * m)
        pieces = pieces[:, :len(rows)]
        R = [sum(int(pieces[i].flat[j]) << (MASK_PIECE_BITS * i) for i in range(MASK_PIECES)) for j in range(len(raw))]
        z_p = encoding.decode([encoding.signed((y - r) % n, n) for y, r in zip(raw, R)], 2 * E).reshape(len(rows), m)
        H = unstash(state, "h", peer)
        Vc = unstash(state, "v", peer)
        seed = _own_seed(state)
        bottom = self._net(state, spec, "active", data.X.shape[1], seed)
        top = self._net(state, spec, "top", m, seed)
        for net, part in ((bottom, "active"), (top, "top")):
            ss.reseed_dropout(net, seed, epoch, batch, part)
        head = make_head(spec.head)
        W_A, b, U = state.arrays["W_A"], state.arrays["b"], state.arrays["share"]
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
        members, eps, rho = self._backward_members(peer, H, Vc, U, delta, sent, state.arrays["rho"])
        self._step_own(ctx, state, bottom, top, h_a, delta)
        (opt_u,) = self._opts(ctx, state, "share", 1, interactive=True)
        state.arrays["share"] = opt_u.step(U, -eps)
        self._save_opts(state, "share", [opt_u])
        state.arrays["rho"] = rho
        state.data["losses"].append(float(loss))
        if batch == data.batches_per_epoch - 1:
            state.data["history"].append({"epoch": epoch, "loss": float(np.mean(state.data["losses"])),
                                          **state.data.pop("leak", {})})
            state.data["losses"] = []
        self._advance(state, data)
        nxt = "batch" if state.data["epoch"] < int(ctx.params["epochs"]) else "evaluate"
        state.data["evaluating"] = nxt == "evaluate"
        state.phase = "wait-forward"
        return [Outgoing(ctx.passives[0], BACKWARD, "backward", members, {"epoch": epoch, "batch": batch, "next": nxt}, t)]

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
                          U: np.ndarray, delta: np.ndarray, sent: np.ndarray,
                          rho_before: np.ndarray) -> tuple[list[Member], np.ndarray, np.ndarray]:
        """The ``split/backward`` members, A's noise ``eps`` on the gradient of ``W_P`` (as floats,
        for A's share) and the new ``rho``."""
        m = delta.shape[1]
        # gradient of W_P under KP: [[h]] arrives shifted, so delta^T [[h]] holds one partial sum per
        # slot (rows i = s mod S); each is noised with its own eps_s = rho_s,t - rho_s,t-1, drawn at
        # the sum's own resolution (2^-64) so that no low bit of it is left unmasked
        s_act = slot_count(peer.bits, ACT_SLOT_BITS, ACT_MAX_SLOTS)
        rho = _noise((s_act, *U.shape))
        eps = _noise_units(rho) - _noise_units(rho_before)
        grad = paillier.plain_matmul(_pad(delta, s_act).T, H)
        hi, lo = _split_units(eps)
        for s_ in range(s_act):  # two exact float plaintexts per slot: the noise's every bit
            at = ACT_SLOT_BITS * s_ + 4 * grad.exponent
            grad = grad + np.ldexp(lo[s_].T, at) + np.ldexp(hi[s_].T, at + NOISE_PIECE_BITS)
        eps_f = np.ldexp(hi.sum(axis=0), NOISE_PIECE_BITS + 4 * grad.exponent) + np.ldexp(lo.sum(axis=0), 4 * grad.exponent)
        # dL/dh = sent W_P^T with [[W_P]] = [[V]] + U, before either share steps; S rows per
        # ciphertext: [[W_P]] shifted by 2^(83 s) for slot s
        s_err = slot_count(peer.bits, ERR_SLOT_BITS)
        shifted = [(Vc + U).T]
        for _ in range(s_err - 1):  # each slot's block from the previous: an 83-bit exponent each
            shifted.append(shifted[-1].mul(1 << ERR_SLOT_BITS))
        blocks = paillier.concatenate(shifted)
        d = _pad(sent, s_err)
        err = _enc_matmul(blocks.T, d.reshape(len(d) // s_err, s_err * m).T)
        members = [_member("grad", _rerandomise(grad), slots=s_act, slot_bits=ACT_SLOT_BITS),
                   _member("err", _rerandomise(err), slots=s_err, slot_bits=ERR_SLOT_BITS)]
        return members, eps_f, rho

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
