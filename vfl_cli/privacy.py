"""Label leakage through per-row gradients: the attacks as a meter, and a defense.

In vertical training the party holding the labels sends a per-row gradient to a party without
them (split-nn: ``dL/dz`` of the passive contribution, which the passive party receives as
``dL/dh``). Li et al., *Label Leakage and Protection in Two-party Split Learning* (ICLR 2022),
showed three cheap attacks on such gradients, each a score per row whose ROC AUC against the
labels measures the leak:

* **norm**: ``|g_i|`` (a minority class's rows tend to have larger gradients);
* **direction**: the cosine of ``g_i`` with the gradient of one row known to be positive
  (the two classes' gradients point in opposite directions);
* **principal direction**: ``g_i`` projected on the batch's first principal direction (no
  known label needed).

Each is reported as ``max(AUC, 1 - AUC)``: 0.5 is chance, 1.0 reads every label. The labelled
party can run all three against its own outgoing gradients (:func:`leak_aucs`); nothing here
needs the other party. :func:`protect_labels` is the defense: the paper's max-norm heuristic
(norms say nothing) plus noise along the directions in which the classes' gradients differ,
scaled by one ``strength`` (directions are drowned in proportion to it).

Pure numpy (the AUC is the Mann-Whitney statistic with tied ranks averaged, equal to
scikit-learn's ``roc_auc_score``); no I/O. Noise must come from the caller's private generator.
"""

from __future__ import annotations

import numpy as np

from vfl_cli.errors import VflError

__all__ = ["ATTACKS", "direction_auc", "label_directions", "leak", "leak_aucs", "max_norm_noise", "norm_auc",
           "principal_auc", "protect_labels", "roc_auc"]

#: The attacks :func:`leak_aucs` runs, in the order it reports them.
ATTACKS = ("norm", "direction", "principal")
#: How many known positives the direction attack tries (evenly spread; the mean leak is reported).
KNOWN_POSITIVES = 8


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (1 positive, else negative); ties count half.

    Raises:
        VflError: the lengths differ or one class is empty.
    """
    y = np.asarray(labels).ravel() == 1
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64).ravel())
    if len(y) != len(s):
        raise VflError(f"privacy meter: {len(y)} labels but {len(s)} scores")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise VflError("privacy meter: the labels hold one class only; an AUC needs both")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based, ties averaged
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def leak(auc: float) -> float:
    """An attack's leak: ``max(AUC, 1 - AUC)`` (a score ranking the classes backwards reads them too)."""
    return max(auc, 1.0 - auc)


def _rows(grads: np.ndarray, labels: np.ndarray) -> np.ndarray:
    g = np.asarray(grads, dtype=np.float64)
    g = g.reshape(len(g), -1)
    if len(g) != len(np.asarray(labels).ravel()):
        raise VflError(f"privacy meter: {len(np.asarray(labels).ravel())} labels but {len(g)} gradient rows")
    return g


def norm_auc(labels: np.ndarray, grads: np.ndarray) -> float:
    """Leak of the norm attack: rows scored by ``|g_i|``."""
    return leak(roc_auc(labels, np.linalg.norm(_rows(grads, labels), axis=1)))


def direction_auc(labels: np.ndarray, grads: np.ndarray, *, known: int = KNOWN_POSITIVES) -> float:
    """Leak of the direction attack: rows scored by their cosine with one known positive's
    gradient (the known row left out); the mean over ``known`` positives spread over the batch."""
    g = _rows(grads, labels)
    y = np.asarray(labels).ravel() == 1
    unit = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
    positives = np.flatnonzero(y)
    picks = positives[np.linspace(0, len(positives) - 1, min(known, len(positives))).astype(int)]
    leaks = []
    for p in np.unique(picks):
        others = np.arange(len(y)) != p
        if y[others].all() or not y[others].any():
            continue
        leaks.append(leak(roc_auc(y[others], unit[others] @ unit[p])))
    if not leaks:
        raise VflError("privacy meter: the direction attack needs two positives and one negative")
    return float(np.mean(leaks))


def principal_auc(labels: np.ndarray, grads: np.ndarray) -> float:
    """Leak of the principal-direction attack: rows projected on the first principal direction
    of the centred gradients (no label known)."""
    g = _rows(grads, labels)
    centred = g - g.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return leak(roc_auc(labels, centred @ vt[0]))


def leak_aucs(labels: np.ndarray, grads: np.ndarray) -> dict[str, float]:
    """The three attacks' leaks (``max(AUC, 1 - AUC)``) on per-row gradients ``grads`` (``n x d``).

    Labels with more than two values (multi-class) are metered one class against the rest and
    the worst class is reported. A class with fewer than two rows, or all rows, is not metered;
    with none left the result is empty.

    Raises:
        VflError: mismatched lengths.
    """
    y = np.asarray(labels).ravel()
    _rows(grads, y)
    classes = np.unique(y)
    targets = [y == classes[-1]] if len(classes) == 2 else [y == c for c in classes]
    targets = [t for t in targets if 2 <= t.sum() < len(t)]
    if not targets:
        return {}
    out = dict.fromkeys(ATTACKS, 0.0)
    for t in targets:
        yt = t.astype(np.int64)
        for name, attack in zip(ATTACKS, (norm_auc, direction_auc, principal_auc), strict=True):
            out[name] = max(out[name], round(attack(yt, grads), 4))
    return out


def max_norm_noise(grads: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The max-norm heuristic of Li et al. (2022): row ``i`` of ``grads`` (``n x d``) gets
    Gaussian noise of variance ``(max_j |g_j|^2 - |g_i|^2) / d`` per coordinate, so every row's
    expected squared norm is the batch's largest and the norm attack is at chance. ``rng`` must
    be the sender's private generator."""
    g = np.asarray(grads, dtype=np.float64).reshape(len(grads), -1)
    if g.size == 0:
        return g.copy()
    sq = np.sum(g**2, axis=1)
    var = np.maximum(sq.max() - sq, 0.0) / g.shape[1]
    noisy: np.ndarray = g + rng.standard_normal(g.shape) * np.sqrt(var)[:, None]
    return noisy


def label_directions(grads: np.ndarray, labels: np.ndarray, *, categorical: bool = True) -> np.ndarray:
    """Orthonormal rows spanning the directions in which the batch's gradients differ by label:
    each class's mean gradient minus the batch mean (categorical labels), or the covariance of
    the gradients with the label (a numeric label). At most one row per class."""
    g = np.asarray(grads, dtype=np.float64).reshape(len(grads), -1)
    y = np.asarray(labels).ravel()
    if categorical:
        coded = (y[:, None] == np.unique(y)[None, :]).astype(np.float64)
    else:
        coded = y[:, None].astype(np.float64)
    D = (coded - coded.mean(axis=0)).T @ g  # one direction per class (or one for a number)
    if not np.any(D):
        return np.zeros((0, g.shape[1]))
    q, r = np.linalg.qr(D.T)
    keep = np.abs(np.diag(r)) > 1e-9 * np.abs(r).max()
    out: np.ndarray = q[:, keep].T
    return out


def protect_labels(grads: np.ndarray, labels: np.ndarray, strength: float, rng: np.random.Generator,
                   *, categorical: bool = True) -> np.ndarray:
    """Label protection for per-row gradients sent to a party without the labels.

    Two label-independent noises, both Gaussian from the sender's private ``rng``: the max-norm
    heuristic (:func:`max_norm_noise`; norms say nothing), then along each of the batch's
    :func:`label_directions` (where the direction and principal-direction attacks look) noise
    of standard deviation ``strength`` times the batch's largest gradient norm, so that even the
    largest gradient's sign along a label direction is drowned. ``strength`` 0 sends ``grads``
    unchanged. The same idea as Marvell (Li et al. 2022: more noise where the classes differ),
    without its optimisation.

    Raises:
        VflError: a negative strength, or labels and gradients of different lengths.
    """
    if strength < 0:
        raise VflError(f"label protection strength must be >= 0, not {strength}")
    g = np.asarray(grads, dtype=np.float64)
    if strength == 0 or g.size == 0:
        return g.copy()
    flat = _rows(g, labels)
    out = max_norm_noise(flat, rng)
    dirs = label_directions(flat, labels, categorical=categorical)
    top = np.abs(flat @ dirs.T).max(axis=0)  # the largest gradient along each label direction
    out += strength * (rng.standard_normal((len(flat), len(dirs))) * top) @ dirs
    return out.reshape(g.shape)
