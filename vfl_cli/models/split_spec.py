"""Split neural network specs: which party computes which layer, in plaintext or in ciphertext.

A split network (protocol ``split-nn``) has four parts::

    active party:   X_A -> [bottom_active]  -> h_A ─┐
                                                    ├─ interactive layer z = h_A W_A + h_P W_P + b
    passive party:  X_P -> [bottom_passive] -> h_P ─┘        (the ciphertext layer, at both)
    active party:   z -> [top] -> head (loss)

Bottom and top layers are *plaintext layers*: one party computes them on its own data. The
interactive layer is the only *ciphertext layer*: the parties' data meet there, so only it pays
for cryptography (see docs/protocols/split-nn.md).

The spec is a TOML table (in a recipe's ``[model]`` or a file of its own)::

    [model]
    head = "binary"                 # binary | multiclass | regression

    [[model.active]]                # the active party's bottom layers, in order
    type = "dense"
    units = 8
    [[model.active]]
    type = "relu"

    [[model.passive]]               # the passive party's bottom layers
    type = "dense"
    units = 8
    mode = "plaintext"              # optional; bottom and top layers are plaintext layers
    [[model.passive]]
    type = "relu"

    [model.interactive]             # the ciphertext layer where the parties' outputs meet
    units = 8
    init = "xavier"
    mode = "ciphertext"             # optional; it is always a ciphertext layer

    [[model.top]]                   # the active party's top layers, on z
    type = "relu"
    [[model.top]]
    type = "dense"
    units = 1                       # 1 for binary and regression, one per class for multiclass

Layer types are those of :mod:`vfl_cli.models.nn` (dense, relu, tanh, sigmoid, dropout, leaky_relu). An
empty bottom passes the party's standardised features straight to the interactive layer; an
empty top makes ``z`` the network output. :func:`central_fit` trains the same architecture
centrally in plaintext (the reference the protocol is tested and benchmarked against), from the
parties' private seeds when given (the protocol never derives a secret from the job's seed).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vfl_cli.checks import whole
from vfl_cli.errors import VflError
from vfl_cli.models.features import validation_split
from vfl_cli.models.nn import INITS, Dense, Dropout, Sequential, build_sequential, make_head
from vfl_cli.models.optim import Optimizer, make_optimizer
from vfl_cli.models.reference import minibatches

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

__all__ = [
    "PART_SEEDS",
    "Seeds",
    "SplitModel",
    "SplitSpec",
    "central_fit",
    "default_spec",
    "dropout_seed",
    "load_spec_file",
    "parse_spec",
    "protect",
    "seed_pair",
]

HEAD_OUTPUTS = {"binary": 1, "regression": 1}
MODES = ("plaintext", "ciphertext")
MODEL_KEYS = ("head", "active", "passive", "interactive", "top")
#: seed offsets of the four parts (weights of part p are drawn from ``seed * 8 + PART_SEEDS[p]``)
PART_SEEDS = {"active": 0, "passive": 1, "interactive": 2, "top": 3}


@dataclass(frozen=True)
class SplitSpec:
    """A validated split network spec (layer dicts in :mod:`vfl_cli.models.nn` format)."""

    head: str = "binary"
    active: list[dict[str, Any]] = field(default_factory=list)
    passive: list[dict[str, Any]] = field(default_factory=list)
    units: int = 8
    init: str = "xavier"
    top: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (what a job's parameters carry)."""
        return {"head": self.head, "active": self.active, "passive": self.passive,
                "interactive": {"units": self.units, "init": self.init}, "top": self.top}

    @property
    def outputs(self) -> int:
        """Width of the network output."""
        return _width(self.top, self.units)

    def layers(self, active: str, passive: str, dim_active: int | None,
               dim_passive: int | None) -> list[dict[str, Any]]:
        """Every layer: which party computes it, how (plaintext or ciphertext) and its shape
        (None where a width is another party's private input width)."""
        rows: list[dict[str, Any]] = []

        def part(party: str, layers: list[dict[str, Any]], width: int | None, where: str) -> int | None:
            for layer in layers:
                out = int(layer["units"]) if layer["type"] == "dense" else width
                rows.append({"party": party, "part": where, "layer": _describe(layer), "mode": "plaintext",
                             "shape": [width, out] if layer["type"] == "dense" else [width]})
                width = out
            return width

        ka = part(active, self.active, dim_active, "bottom")
        kp = part(passive, self.passive, dim_passive, "bottom")
        rows.append({"party": f"{active}+{passive}", "part": "interactive",
                     "layer": f"dense [h_A {ka if ka is not None else '?'} | h_P {kp if kp is not None else '?'}]"
                              f" -> {self.units} (W_A at {active}; W_P shared)",
                     "mode": "ciphertext",
                     "shape": [None if ka is None or kp is None else ka + kp, self.units]})
        part(active, self.top, self.units, "top")
        return rows


def _describe(layer: Mapping[str, Any]) -> str:
    if layer["type"] == "dense":
        return f"dense {layer['units']} ({layer.get('init', 'xavier')})"
    if layer["type"] == "dropout":
        return f"dropout {layer['rate']}"
    return str(layer["type"])


def _width(layers: Sequence[Mapping[str, Any]], width: int) -> int:
    for layer in layers:
        if layer["type"] == "dense":
            width = int(layer["units"])
    return width


def _layers(raw: Any, where: str, *, allowed_mode: str = "plaintext") -> list[dict[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, (Mapping, str, bytes)) or not isinstance(raw, Sequence):
        raise VflError(f"model spec: [[model.{where}]] must be a list of layers (an array of tables)")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise VflError(f"model spec, {where} layer {i}: must be a table with a 'type'")
        layer = dict(item)
        mode = layer.pop("mode", allowed_mode)
        if mode not in MODES:
            raise VflError(f"model spec, {where} layer {i}: mode must be plaintext or ciphertext, not {mode!r}")
        if mode != allowed_mode:
            raise VflError(
                f"model spec, {where} layer {i}: {where} layers are {allowed_mode} layers (one party computes "
                f"them on its own data); only the interactive layer is a ciphertext layer"
            )
        out.append(layer)
    if out:
        try:  # widths of dense layers do not depend on the input: check with a 1-column input
            build_sequential(out, 1)
        except VflError as exc:
            raise VflError(f"model spec, {where} layers: {str(exc).removeprefix('network spec, ')}") from None
    return out


def parse_spec(raw: Mapping[str, Any] | None) -> SplitSpec:
    """Validate a ``[model]`` table (None: the defaults of :func:`default_spec`).

    Raises:
        VflError: one clear message naming the part and layer at fault: unknown keys or layer
            types, a layer marked ciphertext outside the interactive layer, or an output width
            that does not fit the head.
    """
    if raw is None or raw == {}:
        return default_spec()
    if not isinstance(raw, Mapping):
        raise VflError("model spec must be a table ([model]) or a TOML file name")
    unknown = set(raw) - set(MODEL_KEYS)
    if unknown:
        raise VflError(f"model spec: unknown key(s) {sorted(unknown)}; allowed: {', '.join(MODEL_KEYS)}")
    head = str(raw.get("head", "binary"))
    make_head(head)  # refuses unknown heads
    units, init = _interactive(raw.get("interactive", {}))
    top = _layers(raw.get("top"), "top")
    if head in HEAD_OUTPUTS and not top and "top" not in raw:
        top = [{"type": "relu"}, {"type": "dense", "units": HEAD_OUTPUTS[head]}]
    spec = SplitSpec(head=head, active=_layers(raw.get("active"), "active"),
                     passive=_layers(raw.get("passive"), "passive"), units=units, init=init, top=top)
    _check_outputs(spec)
    return spec


def _interactive(inter: Any) -> tuple[int, str]:
    """The units and init of a checked ``[model.interactive]`` table."""
    if not isinstance(inter, Mapping):
        raise VflError("model spec: [model.interactive] must be a table with units")
    extra = set(inter) - {"units", "init", "mode", "type"}
    if extra:
        raise VflError(f"model spec, interactive layer: unknown field(s) {sorted(extra)}; allowed: units, init, mode")
    if inter.get("mode", "ciphertext") != "ciphertext":
        raise VflError("model spec, interactive layer: it is where the parties' data meet, so it must be a "
                       "ciphertext layer (mode = \"ciphertext\")")
    if inter.get("type", "dense") != "dense":
        raise VflError(f"model spec, interactive layer: type must be dense, not {inter.get('type')!r}")
    units = inter.get("units", 8)
    if not whole(units, 1):
        raise VflError(f"model spec, interactive layer: units must be a whole number >= 1, got {units!r}")
    init = str(inter.get("init", "xavier"))
    if init not in INITS:
        raise VflError(f"model spec, interactive layer: unknown init {init!r}; allowed: {', '.join(INITS)}")
    return units, init


def _check_outputs(spec: SplitSpec) -> None:
    """The network's output width fits its head."""
    want = HEAD_OUTPUTS.get(spec.head)
    if want is not None and spec.outputs != want:
        raise VflError(f"model spec: the {spec.head} head needs 1 output, but the network ends with width "
                       f"{spec.outputs} (last dense layer of [[model.top]], or the interactive units)")
    if spec.head == "multiclass" and spec.outputs < 2:
        raise VflError(f"model spec: the multiclass head needs one output per class (>= 2), the network "
                       f"ends with width {spec.outputs}")


def default_spec(head: str = "binary", outputs: int | None = None) -> SplitSpec:
    """The defaults: 8-unit dense+ReLU bottoms, an 8-unit interactive layer, a dense top.

    No ReLU on ``z``: with one, some private-seed draws start with ``z < 0`` on every row and
    train a constant model (default_credit, docs/benchmarks.md); the bottoms' ReLUs already make
    the network non-linear (bench_defaults_split.py: MLPClassifier's AUC on breast and
    default_credit with the defaults of split_nn.PARAMS).
    """
    outputs = outputs or HEAD_OUTPUTS.get(head, 2)
    bottom: list[dict[str, Any]] = [{"type": "dense", "units": 8, "init": "he"}, {"type": "relu"}]
    return SplitSpec(head=head, active=list(bottom), passive=list(bottom), units=8, init="xavier",
                     top=[{"type": "dense", "units": outputs}])


def load_spec_file(path: Path) -> dict[str, Any]:
    """A model spec from a TOML file: either a ``[model]`` table or the keys at the top level."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise VflError(f"cannot read model spec {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise VflError(f"{path} is not valid TOML: {exc}") from exc
    return dict(raw["model"]) if isinstance(raw.get("model"), dict) else dict(raw)


def dropout_seed(seed: int, epoch: int, batch: int, part: str, index: int) -> np.random.Generator:
    """The dropout masks of one layer in one mini-batch (the same in the protocol and reference)."""
    return np.random.default_rng([seed, epoch, batch, PART_SEEDS[part], index])


def reseed_dropout(net: Sequential | None, seed: int, epoch: int, batch: int, part: str) -> None:
    if net is None:
        return
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Dropout):
            layer.rng = dropout_seed(seed, epoch, batch, part, i)


def build_part(spec: SplitSpec, part: str, in_dim: int, seed: int) -> Sequential | None:
    """One party's bottom (``active``/``passive``) or the ``top`` network; None when empty."""
    layers = getattr(spec, part)
    return build_sequential(layers, in_dim, seed=seed * 8 + PART_SEEDS[part]) if layers else None


def out_dim(net: Sequential | None, in_dim: int) -> int:
    return in_dim if net is None else int(net.out_dim or in_dim)


Seeds = tuple[int, int]


def seed_pair(seeds: int | Seeds) -> Seeds:
    """``(active, passive)`` private seeds; a single int (a reference run) gives ``(s, s + 1)``."""
    if isinstance(seeds, tuple):
        return int(seeds[0]), int(seeds[1])
    return int(seeds), int(seeds) + 1


def _interactive_rng(seed: int, which: int) -> np.random.Generator:
    return np.random.default_rng([seed * 8 + PART_SEEDS["interactive"], which])


def initial_active_weights(spec: SplitSpec, ka: int, seed: int) -> np.ndarray:
    """``W_A`` (``ka x m``), drawn by the active party from its private seed."""
    return Dense(ka, spec.units, init=spec.init, seed=_interactive_rng(seed, 0)).W.copy()


def initial_share(spec: SplitSpec, kp: int, seed: int) -> np.ndarray:
    """One party's initial share of ``W_P`` (``kp x m``), drawn from that party's private seed.

    Each share is the interactive init scaled by ``1/sqrt(2)``, so ``W_P0 = U0 + V0`` has the
    init's variance while neither share alone is ``W_P0`` and the two are independent.
    """
    share: np.ndarray = Dense(kp, spec.units, init=spec.init, seed=_interactive_rng(seed, 1)).W / np.sqrt(2.0)
    return share


def initial_interactive(spec: SplitSpec, ka: int, kp: int, seeds: int | Seeds) -> tuple[np.ndarray, np.ndarray]:
    """Initial ``(W_A, W_P)`` of the interactive layer: ``W_P = U0 + V0``, A's and P's shares."""
    sa, sp = seed_pair(seeds)
    return initial_active_weights(spec, ka, sa), initial_share(spec, kp, sa) + initial_share(spec, kp, sp)


def protection_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The active party's label-protection noise of one mini-batch (from its private seed)."""
    return np.random.default_rng([seed, epoch, batch, 0x1AB])


#: standard errors of a label-free score's AUC: a batch cannot be held closer to chance than this
CHANCE_BAND_SE = 2.0
#: noise scales tried per draw: doubling from ``SCALE_START`` up to ``SCALE_MAX``, then bisected
SCALE_START, SCALE_MAX, BISECT_STEPS = 0.125, 256.0, 6
#: fresh noise draws tried before the least leaking candidate seen is sent
NOISE_DRAWS = 4


def leak_target(strength: float) -> float:
    """The largest ``max(AUC, 1 - AUC)`` protection ``strength`` lets a batch reach: ``0.5 + 0.25 / L``
    (1: 0.75; 2: 0.625; 3: 0.583; 4: 0.5625; 5: 0.55; 0.5 or less: 1 or more, sent unchanged)."""
    return 0.5 + 0.25 / strength if strength > 0 else 1.0


def chance_band(labels: np.ndarray) -> float:
    """``0.5 + 2`` standard errors of a label-free score's AUC on these labels (the smallest class
    against the rest): a realised leak no noise can bring lower in every draw."""
    y = np.asarray(labels).ravel()
    _, counts = np.unique(y, return_counts=True)
    n1 = int(counts.min()) if len(counts) > 1 else 0
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return 1.0
    return float(0.5 + CHANCE_BAND_SE * np.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0)))


def protect(delta: np.ndarray, labels: np.ndarray, strength: float, rng: np.random.Generator,
            *, head: str = "binary", pooled: np.ndarray | None = None,
            pooled_strength: float | None = None) -> np.ndarray:
    """``delta`` as the passive party's bottom will see it, label-protected by ``strength`` (0: unchanged).

    Classification heads: Gaussian noise along the batch's label directions
    (:func:`vfl_cli.privacy.label_directions`, each scaled by the batch's largest gradient along
    it), from the active party's private ``rng``, whose size is searched per batch: the smallest
    scale at which the norm, direction and principal-direction attacks
    (:func:`vfl_cli.privacy.leak_aucs`) on the candidate this party is about to send all reach at
    most :func:`leak_target` (or the batch's :func:`chance_band`, if higher). Noise costs accuracy
    only where and when the batch leaks. Regression: :func:`vfl_cli.privacy.protect_labels`.
    Every draw is fresh: noise the same for a row in every epoch can be cancelled by stacking the
    row's gradients over the epochs (docs/protocols/split-nn.md). ``pooled``: each of the
    batch's rows' ``delta'`` summed over the batches sent before; the search then also holds the
    three attacks on ``pooled + candidate`` (an attacker pooling epochs) to
    ``leak_target(pooled_strength)`` (``strength`` when None; 0: the pool is not held).

    Raises:
        VflError: a negative strength, or labels and gradients of different lengths.
    """
    from vfl_cli.privacy import label_directions, protect_labels

    if strength < 0:
        raise VflError(f"label protection strength must be >= 0, not {strength}")
    g = np.asarray(delta, dtype=np.float64)
    if strength == 0 or g.size == 0:
        return g.copy()
    if head == "regression":
        return protect_labels(g, labels, strength, rng, categorical=False)
    flat = g.reshape(len(g), -1)
    if len(flat) != np.asarray(labels).size:
        raise VflError(f"label protection: {np.asarray(labels).size} labels but {len(flat)} gradient rows")
    dirs = label_directions(flat, labels)
    if not len(dirs):  # one class in the batch: nothing to tell apart within it
        return protect_labels(g, labels, strength, rng)
    basis = noise_basis(flat, dirs)
    scale = np.abs(flat @ basis.T).max(axis=0)
    band = chance_band(labels)
    target = max(leak_target(strength), band)
    if target >= 1.0:  # a strength of 1/4 or less: nothing to hold
        return g.copy()
    pool_target = max(leak_target(strength if pooled_strength is None else pooled_strength), band)
    if pooled is None or pool_target >= 1.0:
        pooled = None
    return _least_noise(flat, np.asarray(labels).ravel(), basis, scale, (target, pool_target), rng,
                        pooled).reshape(g.shape)


def noise_basis(g: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Orthonormal rows: the label directions ``dirs``, then the principal directions of what the
    gradients ``g`` hold outside them (none when ``g`` lies in their span, as with a one-unit top).
    The residual matters: a direction attack ranks rows by it once the label directions are noise."""
    resid = g - (g @ dirs.T) @ dirs
    _, sv, vt = np.linalg.svd(resid, full_matrices=False)
    keep = sv > 1e-9 * max(float(np.abs(g).max(initial=0.0)) * np.sqrt(len(g)), 1e-300)
    basis: np.ndarray = np.vstack([dirs, vt[keep]])
    return basis


def linear_leak(labels: np.ndarray, grads: np.ndarray) -> float:
    """The leak of the best linear score the labels allow: rows projected on the in-sample Fisher
    direction of each class against the rest (the worst class). Any invertible linear map of the
    rows (what the passive party sees is ``delta' W_P^T``) leaves it unchanged, and a linear
    attack there, the principal-direction one among them, is one such projection; 0.5 when no
    class can be metered."""
    from vfl_cli.privacy import leak, roc_auc

    y = np.asarray(labels).ravel()
    g = np.asarray(grads, dtype=np.float64).reshape(len(y), -1)
    classes = np.unique(y)
    worst = 0.5
    for c in classes[-1:] if len(classes) == 2 else classes:
        t = y == c
        if not 2 <= t.sum() <= len(t) - 2:
            continue
        means = np.where(t[:, None], g[t].mean(axis=0), g[~t].mean(axis=0))
        spread = g - means
        w = np.linalg.pinv(spread.T @ spread) @ (g[t].mean(axis=0) - g[~t].mean(axis=0))
        worst = max(worst, leak(roc_auc(t.astype(np.int64), g @ w)))
    return worst


def _least_noise(g: np.ndarray, y: np.ndarray, dirs: np.ndarray, scale: np.ndarray, targets: tuple[float, float],
                 rng: np.random.Generator, pooled: np.ndarray | None = None) -> np.ndarray:
    """``g + s * noise`` with the smallest scale ``s`` found whose worst leak is at most the first
    of ``targets`` and whose leak on ``pooled + candidate`` is at most the second (each reading is
    kept relative to its own target, so 1 means "at the target"); after :data:`NOISE_DRAWS` draws
    that never get there, the least leaking candidate tried."""
    from vfl_cli.privacy import leak_aucs

    target, pool_target = targets
    best, best_leak = g, float("inf")
    for _ in range(NOISE_DRAWS):
        noise = (rng.standard_normal((len(g), len(dirs))) * scale) @ dirs
        tried: dict[float, float] = {}

        def worst(s: float, noise: np.ndarray = noise, tried: dict[float, float] = tried) -> float:
            candidate = g + s * noise
            leaks = leak_aucs(y, candidate)
            tried[s] = max([*leaks.values(), linear_leak(y, candidate)]) / target if leaks else 0.5 / target
            if pooled is not None and leaks:
                tried[s] = max(tried[s], max(leak_aucs(y, pooled + candidate).values()) / pool_target)
            return tried[s]

        lo, hi = 0.0, SCALE_START
        while worst(hi) > 1.0 and hi < SCALE_MAX:
            lo, hi = hi, 2 * hi
        if tried[hi] <= 1.0:
            for _ in range(BISECT_STEPS if lo else 0):
                mid = float(np.sqrt(lo * hi))
                lo, hi = (mid, hi) if worst(mid) > 1.0 else (lo, mid)
            found: np.ndarray = g + hi * noise
            return found
        s = min(tried, key=lambda k: (tried[k], -k))
        if tried[s] < best_leak:
            best, best_leak = g + s * noise, tried[s]
    return best


def forward(net: Sequential | None, x: np.ndarray, train: bool = True) -> np.ndarray:
    return x if net is None else net.forward(x, train=train)


def backward(net: Sequential | None, grad: np.ndarray) -> np.ndarray:
    return grad if net is None else net.backward(grad)


def step_net(net: Sequential | None, opts: list[Optimizer]) -> None:
    if net is None:
        return
    for p, g, opt, m in zip(net.params(), net.grads(), opts, net.penalty_masks(), strict=True):
        p[...] = opt.step(p, g, mask=m)


@dataclass
class SplitModel:
    """The whole network in one place (the plaintext reference, never a protocol's state)."""

    spec: SplitSpec
    bottom_a: Sequential | None
    bottom_p: Sequential | None
    W_A: np.ndarray
    W_P: np.ndarray
    b: np.ndarray
    top: Sequential | None

    @classmethod
    def build(cls, spec: SplitSpec, dim_a: int, dim_p: int, seeds: int | Seeds) -> SplitModel:
        sa, sp = seed_pair(seeds)
        bottom_a = build_part(spec, "active", dim_a, sa)
        bottom_p = build_part(spec, "passive", dim_p, sp)
        W_A, W_P = initial_interactive(spec, out_dim(bottom_a, dim_a), out_dim(bottom_p, dim_p), (sa, sp))
        return cls(spec, bottom_a, bottom_p, W_A, W_P, np.zeros(spec.units), build_part(spec, "top", spec.units, sa))

    def output(self, XA: np.ndarray, XP: np.ndarray) -> np.ndarray:
        z = forward(self.bottom_a, XA, False) @ self.W_A + forward(self.bottom_p, XP, False) @ self.W_P + self.b
        return forward(self.top, z, False)

    def predict(self, XA: np.ndarray, XP: np.ndarray) -> np.ndarray:
        return make_head(self.spec.head).predict(self.output(XA, XP))


def optimizer_factory(params: Mapping[str, Any]) -> Any:
    kw: dict[str, Any] = {"lr": params["learning_rate"], "l2": params["l2"]}
    decay = float(params.get("lr_decay", 0.0))  # absent (a reference call without it): constant, its legacy value
    if decay > 0:
        kw.update(schedule="inverse_time", decay=decay)
    if str(params["optimizer"]).lower() == "sgd":
        kw["momentum"] = params["momentum"]
    return lambda: make_optimizer(params["optimizer"], **kw)


def interactive_optimizer(params: Mapping[str, Any]) -> Optimizer:
    """The optimiser of the passive party's interactive weights W_P (linear, so it runs on shares)."""
    return make_optimizer("sgd", lr=params["interactive_lr"], momentum=params["interactive_momentum"], l2=params["l2"])


#: a validation loss counts as better when it is below the best so far by more than this
VALIDATION_TOL = 1e-4


@dataclass
class EarlyStop:
    """The active party's stopping rule: the validation loss checked once per epoch (before its
    last mini-batch's step); stop after ``patience`` checks without an improvement of
    :data:`VALIDATION_TOL`, or at the ``epochs`` cap, and keep the best checked model."""

    patience: int
    best: float = float("inf")
    best_epoch: int = -1
    since: int = 0

    def check(self, loss: float, epoch: int) -> bool:
        """Record epoch ``epoch``'s validation loss: True when it is the best so far."""
        if loss < self.best - VALIDATION_TOL:
            self.best, self.best_epoch, self.since = float(loss), int(epoch), 0
            return True
        self.since += 1
        return False

    @property
    def stop(self) -> bool:
        return self.since >= self.patience


def central_fit(spec: SplitSpec, XA: np.ndarray, XP: np.ndarray, y: np.ndarray, params: Mapping[str, Any],
                *, epochs: int | None = None, seeds: int | Seeds | None = None) -> tuple[SplitModel, list[float]]:
    """Train the same architecture centrally in plaintext, as the protocol does.

    Same initial weights (from the parties' private ``seeds``, ``(active, passive)``; None: from
    ``params["seed"]``, for a reference run), mini-batches, dropout masks, label protection
    (``label_protection``, drawn from the active seed) and optimisers: the job's optimiser for
    every layer except W_P, which uses SGD with momentum (``interactive_lr``,
    ``interactive_momentum``) as in the protocol, and A's ``local_steps`` (its own layers stepped
    again on the same ``z_P``; 1 when the params do not say). The rows come in the job's train order: the
    first ``validation_fraction`` of them are held out (:func:`validation_split`) and, before
    each epoch's last step, scored; training stops after ``patience`` epochs without a better
    validation loss (:class:`EarlyStop`) and the model kept is the one scored last
    (``keep_model`` "last") or best ("best", also when the params do not say). Returns the
    model and the mean training loss of each epoch trained (mean over its mini-batches, as the
    protocol reports it).
    """
    sa, sp = seed_pair(int(params["seed"]) if seeds is None else seeds)
    model = SplitModel.build(spec, XA.shape[1], XP.shape[1], (sa, sp))
    factory = optimizer_factory(params)
    opts = {part: [factory() for _ in (net.params() if net else [])]
            for part, net in (("active", model.bottom_a), ("passive", model.bottom_p), ("top", model.top))}
    opts["interactive"] = [factory(), factory(), interactive_optimizer(params)]
    seed, batch = int(params["seed"]), int(params["batch_size"]) or None
    val, fit = validation_split(len(y), float(params.get("validation_fraction", 0.0)))
    XA_f, XP_f, y_f = XA[fit], XP[fit], y[fit]
    stopper = EarlyStop(int(params.get("patience", 1))) if val.stop > 0 else None
    kept: SplitModel | None = None
    history: list[float] = []
    pool = np.zeros((len(y_f), model.W_P.shape[1]))  # every row's delta' summed so far, as A's meter keeps it
    cap = epochs if epochs is not None else int(params["epochs"])
    for epoch in range(cap):
        batches = minibatches(len(y_f), batch, seed=seed, epoch=epoch)
        losses = []
        for b, rows in enumerate(batches):
            if stopper is not None and b == len(batches) - 1:
                out = make_head(spec.head).loss_grad(model.output(XA[val], XP[val]), y[val])[0]
                if stopper.check(float(out), epoch) or params.get("keep_model", "best") == "last":
                    kept = copy.deepcopy(model)
            losses.append(_central_batch(model, XA_f, XP_f, y_f, rows, pool, params, opts, (sa, sp), epoch, b))
        history.append(float(np.mean(losses)))
        if stopper is not None and stopper.stop:
            break
    return (kept if kept is not None else model), history


def _central_batch(model: SplitModel, XA: np.ndarray, XP: np.ndarray, Y: np.ndarray, rows: np.ndarray,
                   pool: np.ndarray, params: Mapping[str, Any], opts: dict[str, list[Optimizer]], seeds: Seeds,
                   epoch: int, b: int) -> float:
    sa, sp = seeds
    xa, xp, y = XA[rows], XP[rows], Y[rows]
    for net, part, s in ((model.bottom_a, "active", sa), (model.bottom_p, "passive", sp), (model.top, "top", sa)):
        reseed_dropout(net, s, epoch, b, part)
    ha, hp = forward(model.bottom_a, xa), forward(model.bottom_p, xp)
    z_p = hp @ model.W_P  # the passive contribution, as A decrypts it before any step
    z = ha @ model.W_A + z_p + model.b
    loss, dout = make_head(model.spec.head).loss_grad(forward(model.top, z), y)
    delta = backward(model.top, dout)
    sent = protect(delta, y, float(params.get("label_protection", 0.0)), protection_rng(sa, epoch, b),
                   head=model.spec.head, pooled=pool[rows],
                   pooled_strength=float(params.get("pooled_protection", params.get("label_protection", 0.0))))
    pool[rows] += sent
    g_wp = hp.T @ delta
    backward(model.bottom_p, sent @ model.W_P.T)
    _step_active(model, ha, delta, opts)
    step_net(model.bottom_p, opts["passive"])
    model.W_P = opts["interactive"][2].step(model.W_P, g_wp)
    for _ in range(int(params.get("local_steps", 1)) - 1):  # FedBCD: A's own layers again on the same z_P
        reseed_dropout(model.bottom_a, sa, epoch, b, "active")
        reseed_dropout(model.top, sa, epoch, b, "top")
        ha = forward(model.bottom_a, xa)
        _, dout = make_head(model.spec.head).loss_grad(forward(model.top, ha @ model.W_A + z_p + model.b), y)
        _step_active(model, ha, backward(model.top, dout), opts)
    return float(loss)


def _step_active(model: SplitModel, ha: np.ndarray, delta: np.ndarray, opts: dict[str, list[Optimizer]]) -> None:
    """A's own layers (bottom, top, ``W_A``, ``b``) stepped on the exact ``delta`` (the top's
    backward already run), as the protocol's ``_stepped_own`` does."""
    backward(model.bottom_a, delta @ model.W_A.T)
    step_net(model.bottom_a, opts["active"])
    step_net(model.top, opts["top"])
    opt_wa, opt_b, _ = opts["interactive"]
    model.W_A = opt_wa.step(model.W_A, ha.T @ delta)
    model.b = opt_b.step(model.b, delta.sum(axis=0), mask=False)
