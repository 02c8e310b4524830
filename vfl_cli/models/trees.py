"""Histogram gradient boosting in plaintext: the reference SecureBoost must equal.

The algorithm, written once and shared with the encrypted protocol
(:mod:`vfl_cli.protocol.secureboost`):

- Columns are binned (:mod:`vfl_cli.models.binning`: quantile bins, missing values in bin 0).
  A split ``(feature, t)`` sends the rows whose bin is ``<= t`` left (missing values always go
  left, bin 0 being the lowest).
- Trees grow one layer at a time to ``depth`` (a depth-``d`` tree has up to ``2**d`` leaves,
  scikit-learn's convention: depth counts edges).
- For a node with sums ``G, H, C`` (gradients, hessians, rows) and a candidate with left sums
  ``GL, HL, CL`` the gain is ``GL^2/(HL+l2) + GR^2/(HR+l2) - G^2/(H+l2)`` (scikit-learn's
  ``HistGradientBoosting``); a candidate needs ``CL, CR >= min_samples_leaf`` and
  ``HL, HR >= min_child_weight``; a node splits on its best candidate when the gain is > 0.
  Ties go to the first candidate in (party, feature, bin) order.
- Leaf value ``-learning_rate * G / (H + l2)``.
- Row sampling per round: plain (``subsample``, from the public seed) or GOSS (``goss_top``
  = a, ``goss_other`` = b; LightGBM's gradient-based one-side sampling): the ``round(a n)`` rows
  with the largest ``sum_k |g_k|`` are kept, ``round(b n)`` of the others are drawn by a seed
  only the label holder knows and their ``g`` and ``h`` multiplied by ``(n - top) / drawn``.
- Losses: binary log loss (``g = p - y``, ``h = p(1-p)``), squared error (``g = f - y``,
  ``h = 1``), multi-class softmax with one tree per class and round (``g = p_k - y_k``,
  ``h = p_k(1-p_k)``). The start score is the prior's log-odds, the mean, or the log priors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfl_cli.errors import VflError
from vfl_cli.models.reference import sigmoid

__all__ = [
    "OBJECTIVES",
    "BoostParams",
    "Booster",
    "Tree",
    "best_split",
    "bin_sums",
    "column_sample",
    "fit",
    "gradients",
    "init_score",
    "leaf_value",
    "loss",
    "predict_proba",
    "rounds",
    "row_sample",
    "row_weights",
    "split_gains",
]

OBJECTIVES = ("binary", "regression", "multiclass")


@dataclass(frozen=True)
class BoostParams:
    """The public parameters of a boosting job (every party knows them)."""

    trees: int = 10
    depth: int = 3
    learning_rate: float = 0.1
    l2: float = 0.0
    min_child_weight: float = 1e-3
    min_samples_leaf: int = 20
    objective: str = "binary"
    subsample: float = 1.0
    colsample: float = 1.0
    seed: int = 42
    goss_top: float = 0.0  # GOSS (Ke et al. 2017): share of rows kept by largest |g|; 0: off
    goss_other: float = 0.1  # GOSS: share of rows drawn from the others, up-weighted

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise VflError(f"objective must be one of {', '.join(OBJECTIVES)}, "
                           f"not {self.objective!r}")


@dataclass
class Tree:
    """One tree: ``nodes[i]`` is ``{"split": owner-specific split or None, "left", "right",
    "value"}``; node 0 is the root. In the plaintext reference a split is ``[feature, bin]``."""

    nodes: list[dict[str, Any]] = field(default_factory=list)

    def leaf_of(self, route: Any) -> np.ndarray:
        """The leaf each row reaches; ``route(split, rows)`` says which of ``rows`` go left."""
        first = route(None, None)
        at = np.zeros(first, dtype=np.int64)
        for i, node in enumerate(self.nodes):
            if node["split"] is None:
                continue
            rows = np.flatnonzero(at == i)
            left = route(node["split"], rows)
            at[rows[left]] = node["left"]
            at[rows[~left]] = node["right"]
        return at

    def values(self) -> np.ndarray:
        return np.array([n["value"] if n["value"] is not None else 0.0 for n in self.nodes])


@dataclass
class Booster:
    """Start scores (one per class column) and the trees of every round, one per class."""

    base: np.ndarray
    rounds: list[list[Tree]]
    objective: str

    def raw(self, Xb: np.ndarray) -> np.ndarray:
        """Raw scores (n x K) of binned rows ``Xb`` (plaintext reference only)."""
        out = np.tile(self.base, (len(Xb), 1))

        def route(split: Any, rows: Any) -> Any:
            if split is None:
                return len(Xb)
            return Xb[rows, split[0]] <= split[1]

        for trees in self.rounds:
            for k, tree in enumerate(trees):
                out[:, k] += tree.values()[tree.leaf_of(route)]
        return out


# ----- the maths, shared with the encrypted protocol --------------------------------------------
def init_score(y: np.ndarray, objective: str, n_classes: int = 2) -> np.ndarray:
    """The start score per class column (1 column unless multi-class)."""
    if objective == "regression":
        return np.array([float(np.mean(y))])
    if objective == "binary":
        p = float(np.clip(np.mean(y), 1e-12, 1 - 1e-12))
        return np.array([np.log(p / (1 - p))])
    prior = np.clip(np.bincount(y.astype(np.int64), minlength=n_classes) / len(y), 1e-12, 1)
    logp = np.log(prior)
    return np.asarray(logp - logp.mean())


def _softmax(raw: np.ndarray) -> np.ndarray:
    z = np.exp(raw - raw.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


def predict_proba(raw: np.ndarray, objective: str) -> np.ndarray:
    """Probabilities (binary: of class 1, n; multi-class: n x K); regression: the raw score."""
    if objective == "binary":
        return sigmoid(raw[:, 0])
    if objective == "multiclass":
        return _softmax(raw)
    return np.asarray(raw[:, 0])


def gradients(y: np.ndarray, raw: np.ndarray, objective: str) -> tuple[np.ndarray, np.ndarray]:
    """First and second derivatives of the loss at ``raw`` (n x K each)."""
    if objective == "regression":
        return raw - y.reshape(-1, 1), np.ones_like(raw)
    if objective == "binary":
        p = sigmoid(raw)
        return p - y.reshape(-1, 1), p * (1 - p)
    p = _softmax(raw)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y.astype(np.int64)] = 1.0
    return p - onehot, p * (1 - p)


def loss(y: np.ndarray, raw: np.ndarray, objective: str) -> float:
    """Mean loss: log loss, squared error (halved, as sklearn) or multi-class log loss."""
    if objective == "regression":
        return float(np.mean((raw[:, 0] - y) ** 2) / 2)
    if objective == "binary":
        z = raw[:, 0]
        return float(np.mean(np.logaddexp(0, z) - y * z))
    p = np.clip(_softmax(raw)[np.arange(len(y)), y.astype(np.int64)], 1e-15, 1)
    return float(-np.mean(np.log(p)))


def split_gains(GL: np.ndarray, HL: np.ndarray, CL: np.ndarray, G: float, H: float, C: int,
                p: BoostParams) -> np.ndarray:
    """The gain of each candidate (left sums given); ``-inf`` where a child is too small."""
    GR, HR, CR = G - GL, H - HL, C - CL
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = GL**2 / (HL + p.l2) + GR**2 / (HR + p.l2) - G**2 / (H + p.l2)
    ok = ((CL >= p.min_samples_leaf) & (CR >= p.min_samples_leaf)
          & (HL >= p.min_child_weight) & (HR >= p.min_child_weight))
    return np.where(ok, gain, -np.inf)


def leaf_value(G: float, H: float, p: BoostParams) -> float:
    """The weight of a leaf with sums ``G, H``, learning rate applied."""
    return float(-p.learning_rate * G / (H + p.l2))


def bin_sums(Xb: np.ndarray, n_bins: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    """Per feature, the sum of each column of ``values`` (rows x m) in each bin: (bins x m)."""
    out = []
    for j, nb in enumerate(n_bins):
        out.append(np.stack([np.bincount(Xb[:, j], weights=values[:, c], minlength=int(nb))
                             for c in range(values.shape[1])], axis=1))
    return out


#: Gains this close (relative) are ties, broken by the first candidate: sums taken in another
#: order (scikit-learn's, or the encrypted protocol's fixed point) must not change the split.
TIE = 1e-9


def first_best(gains: np.ndarray) -> int:
    """The first candidate whose gain is within :data:`TIE` of the largest."""
    top = float(np.max(gains))
    return int(np.argmax(gains >= top - TIE * max(abs(top), 1e-300)))


def best_split(Xb: np.ndarray, n_bins: np.ndarray, g: np.ndarray, h: np.ndarray,
               p: BoostParams, allowed: np.ndarray) -> tuple[float, int, int]:
    """``(gain, feature, bin)`` of the best split of the rows given, or gain ``-inf``."""
    G, H, C = float(g.sum()), float(h.sum()), len(g)
    sums = bin_sums(Xb, n_bins, np.stack([g, h, np.ones_like(g)], axis=1))
    gains, keys = [], []
    for j, s in enumerate(sums):
        if not allowed[j] or len(s) < 2:
            continue
        cum = np.cumsum(s, axis=0)[:-1]  # the last bin holds every row: no split
        gains.append(split_gains(cum[:, 0], cum[:, 1], np.rint(cum[:, 2]), G, H, C, p))
        keys += [(j, t) for t in range(len(cum))]
    if not keys:
        return (-np.inf, -1, -1)
    flat = np.concatenate(gains)
    i = first_best(flat)
    return (float(flat[i]), *keys[i])


# ----- the plaintext reference ------------------------------------------------------------------
def _grow(Xb: np.ndarray, n_bins: np.ndarray, g: np.ndarray, h: np.ndarray, rows: np.ndarray,
          p: BoostParams, allowed: np.ndarray) -> Tree:
    """One tree on the rows ``rows`` (a boolean mask: the row sample), layer by layer."""
    tree = Tree([{"split": None, "left": None, "right": None, "value": None}])
    at = np.where(rows, 0, -1)
    frontier = [0]
    for _ in range(p.depth):
        nxt = []
        for i in frontier:
            idx = np.flatnonzero(at == i)
            gain, j, t = best_split(Xb[idx], n_bins, g[idx], h[idx], p, allowed)
            if not gain > 0:
                continue
            left, right = len(tree.nodes), len(tree.nodes) + 1
            tree.nodes[i].update(split=[j, t], left=left, right=right)
            tree.nodes += [{"split": None, "left": None, "right": None, "value": None}
                           for _ in range(2)]
            goes_left = Xb[idx, j] <= t
            at[idx[goes_left]], at[idx[~goes_left]] = left, right
            nxt += [left, right]
        frontier = nxt
    for i, node in enumerate(tree.nodes):
        if node["split"] is None:
            sel = at == i
            node["value"] = leaf_value(float(g[sel].sum()), float(h[sel].sum()), p)
    return tree


def fit(Xb: np.ndarray, n_bins: np.ndarray, y: np.ndarray, p: BoostParams,
        n_classes: int = 2, *, blocks: list[int] | None = None, active_trees: int = 0,
        goss_seed: int = 0) -> Booster:
    """Boost ``active_trees + p.trees`` rounds on binned rows ``Xb`` (n x F) with labels ``y``.

    ``blocks`` are the column counts of each party (the active party's first; default one
    block): each party samples its own columns (:func:`column_sample`). The first
    ``active_trees`` rounds use the first block only and come on top of the ``p.trees`` rounds
    with every block (:func:`rounds`). Rows are sampled and weighted by :func:`row_weights`
    (``goss_seed``: the label holder's secret seed of GOSS's draws).
    """
    blocks = blocks or [Xb.shape[1]]
    base = init_score(y, p.objective, n_classes)
    booster = Booster(base, [], p.objective)
    raw = np.tile(base, (len(y), 1))
    for r in range(rounds(p, active_trees)):
        allowed = np.concatenate([column_sample(p, r, b, f) & (b == 0 or r >= active_trees)
                                  for b, f in enumerate(blocks)])
        g, h = gradients(y, raw, p.objective)
        w = row_weights(p, r, g, goss_seed)
        rows = w > 0
        g, h = g * w[:, None], h * w[:, None]
        trees = [_grow(Xb, n_bins, g[:, k], h[:, k], rows, p, allowed) for k in range(raw.shape[1])]
        booster.rounds.append(trees)
        for k, tree in enumerate(trees):
            raw[:, k] += tree.values()[tree.leaf_of(
                lambda s, r: len(Xb) if s is None else Xb[r, s[0]] <= s[1])]
    return booster


def rounds(p: BoostParams, active_trees: int) -> int:
    """Boosting rounds in all: ``active_trees`` from the active party's columns only, then
    ``p.trees`` with every party's (the protection does not take trees from the budget)."""
    return active_trees + p.trees


def row_sample(p: BoostParams, round_no: int, n: int) -> np.ndarray:
    """Positions of the rows sampled in round ``round_no`` (public seed: every party agrees)."""
    if p.subsample >= 1:
        return np.arange(n)
    return np.flatnonzero(np.random.default_rng([p.seed, 1, round_no]).random(n) < p.subsample)


def row_weights(p: BoostParams, round_no: int, g: np.ndarray, goss_seed: int = 0) -> np.ndarray:
    """Each row's weight in round ``round_no`` (0: not sampled): plain sampling gives 0 or 1;
    GOSS keeps the top rows by ``sum_k |g_k|`` (weight 1) and draws others with ``goss_seed``
    (a secret of the label holder), weighted ``(n - top) / drawn``."""
    n = len(g)
    w = np.zeros(n)
    if p.goss_top <= 0:
        w[row_sample(p, round_no, n)] = 1.0
        return w
    top = min(n, max(1, round(p.goss_top * n)))
    order = np.argsort(-np.abs(g).sum(axis=1), kind="stable")
    rest = order[top:]
    drawn = min(len(rest), max(1, round(p.goss_other * n)))
    w[order[:top]] = 1.0
    if drawn:
        pick = np.random.default_rng([goss_seed, 3, round_no]).choice(len(rest), drawn, replace=False)
        w[rest[pick]] = len(rest) / drawn
    return w


def column_sample(p: BoostParams, round_no: int, party: int, f: int) -> np.ndarray:
    """Which of party ``party``'s ``f`` columns round ``round_no`` may split on (bool, f)."""
    allowed = np.ones(f, dtype=bool)
    if p.colsample < 1 and f:
        keep = max(1, round(p.colsample * f))
        allowed[:] = False
        rng = np.random.default_rng([p.seed, 2, round_no, party])
        allowed[rng.choice(f, size=keep, replace=False)] = True
    return allowed
