"""The protocols ``vfl`` knows, each described by one :class:`ProtocolInfo` line.

The CLI (``--protocol`` choices, ``vfl model show/export``), recipes, predict and the report read
what they need about a protocol from its entry here instead of special-casing its name. The entry
is plain data: the protocol's module is imported only when a job runs it, so start-up stays fast.

Add a protocol with one line in :data:`REGISTRY` (or, from a plugin or a test, one call of
:func:`register`). See ``docs/protocols/README.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vfl_cli.errors import VflError

if TYPE_CHECKING:
    from vfl_cli.protocol.base import Protocol

__all__ = [
    "REGISTRY",
    "ModelTable",
    "ProtocolInfo",
    "get_protocol",
    "info",
    "model_table",
    "names",
    "register",
]


@dataclass(frozen=True)
class ModelTable:
    """A model card rendered as a table: column titles and rows of text (the CLI draws it)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def weights_table(card: Mapping[str, Any]) -> ModelTable:
    """One row per feature and its weight (linear models)."""
    rows = tuple((str(f), f"{float(w):+.5f}") for f, w in card.get("weights", {}).items())
    return ModelTable(("feature", "weight"), rows)


def layers_table(card: Mapping[str, Any]) -> ModelTable:
    """One row per layer: which party computes it, in plaintext or ciphertext (networks)."""
    rows = []
    for row in card["layers"]:
        shape = " x ".join("?" if d is None else str(d) for d in row["shape"])
        rows.append(
            (str(row["party"]), str(row["part"]), str(row["layer"]), str(row["mode"]), shape)
        )
    return ModelTable(("party", "part", "layer", "mode", "shape"), tuple(rows))


def card_table(card: Mapping[str, Any]) -> ModelTable:
    """Layers when the card lists them (a network), else weights (one protocol may train both)."""
    return layers_table(card) if "layers" in card else weights_table(card)


@dataclass(frozen=True)
class ProtocolInfo:
    """What the rest of ``vfl`` may know about a protocol without importing it.

    Attributes:
        target: ``"module:Class"`` of the :class:`~vfl_cli.protocol.base.Protocol` subclass.
        summary: One line for listings and ``--help``.
        roles: The roles its parties take; the first is the proposer's (one party).
        needs_alignment: Its jobs name a finished ``psi`` job (``alignment`` parameter).
        trains: ``vfl train start --protocol`` offers it (a vertical training protocol).
        evaluated: A finished job has metrics for the proposer (``vfl evaluate``, recipes).
        binary: Its test scores (``test_scores``) are log-odds of a binary label (the report draws
            classifier plots of their sigmoid).
        predicts: A prediction job can score new rows with its finished jobs' models (set
            whenever ``predictor`` is; ``predicts=True`` alone means ``predictor="predict"``).
        predictor: The protocol whose jobs score rows with this protocol's models (``vfl predict
            start`` starts it): ``"predict"`` for linear models; None: its models cannot predict.
        model: Renders its model card as a table (``vfl model show``): a function, or
            ``"module:function"`` imported on first use; None: it trains no model.
        export_standardiser: ``vfl model export`` adds the party's column means and deviations.
        loss: What its training loss is, in words, for the report: text, or a function of the
            job's parameters returning text.
    """

    target: str
    summary: str
    roles: tuple[str, ...] = ("active", "passive")
    needs_alignment: bool = False
    trains: bool = False
    evaluated: bool = False
    binary: bool = False
    predicts: bool = False
    model: Any = None  # Callable[[Mapping[str, Any]], ModelTable] | str | None
    export_standardiser: bool = True
    predictor: str | None = None
    loss: Any = "train loss"  # str | Callable[[Mapping[str, Any]], str]

    def __post_init__(self) -> None:
        # predicts and predictor say one thing: a linear entry may give either
        if self.predicts and self.predictor is None:
            object.__setattr__(self, "predictor", "predict")
        object.__setattr__(self, "predicts", self.predictor is not None)


def _logistic_loss(params: Mapping[str, Any]) -> str:
    if params.get("approximation") == "taylor":
        return "train loss (Taylor approximation of the log-loss, on the last batch)"
    return "train loss (mean squared error of the probability, on the last batch)"


#: Every protocol, by the name jobs and recipes use. One line per protocol.
REGISTRY: dict[str, ProtocolInfo] = {
    "handshake": ProtocolInfo(
        "vfl_cli.protocol.handshake:Handshake",
        "signed hello and reply between all parties (no data)",
    ),
    "psi": ProtocolInfo(
        "vfl_cli.protocol.align:Align",
        "ECDH-PSI over X25519: common ids of all parties, in a jointly shuffled order",
    ),
    "psi-cache": ProtocolInfo(
        "vfl_cli.protocol.align:AlignCache",
        "a passive party's blinded ids, cached by the active party for small alignments",
    ),
    "hetero-lr": ProtocolInfo(
        "vfl_cli.protocol.hetero_linear:HeteroLogistic",
        "hetero logistic regression (binary), no third party",
        needs_alignment=True,
        trains=True,
        evaluated=True,
        binary=True,
        predicts=True,
        model=weights_table,
        loss=_logistic_loss,
    ),
    "hetero-linear": ProtocolInfo(
        "vfl_cli.protocol.hetero_linear:HeteroLinear",
        "hetero linear regression (squared loss), no third party",
        needs_alignment=True,
        trains=True,
        evaluated=True,
        predicts=True,
        model=weights_table,
        loss="train loss (mean squared error, on the last batch)",
    ),
    "predict": ProtocolInfo(
        "vfl_cli.protocol.predict:Predict",
        "joint scoring of aligned rows with a trained model; only the active party sees scores",
        needs_alignment=True,
    ),
    "split-nn": ProtocolInfo(
        "vfl_cli.protocol.split_nn:SplitNN",
        "split neural network: plaintext bottom/top layers, a ciphertext interactive layer",
        needs_alignment=True,
        evaluated=True,
        model=card_table,
        predictor="split-nn-predict",
        loss="train loss (the network's objective, mean over the epoch's batches)",
    ),
    "split-nn-predict": ProtocolInfo("vfl_cli.protocol.split_predict:SplitPredict", "scoring aligned rows with a split-nn model: the forward pass of training (masked shares of W_P); only the active party sees scores", needs_alignment=True),  # noqa: E501
    "secureboost": ProtocolInfo("vfl_cli.protocol.secureboost:SecureBoost", "hetero gradient boosting (SecureBoost): encrypted per-bin sums, splits kept by their owners", needs_alignment=True, trains=True, evaluated=True, model=lambda card: importlib.import_module("vfl_cli.protocol.sbt_card").trees_table(card), export_standardiser=False, predictor="secureboost-predict"),  # noqa: E501
    "secureboost-predict": ProtocolInfo("vfl_cli.protocol.sbt_predict:SbtPredict", "scoring aligned rows with a SecureBoost model: each party routes them through its own splits; only the active party sees scores", needs_alignment=True),  # noqa: E501
    "woe-binning": ProtocolInfo("vfl_cli.protocol.woe_binning:WoeBinning", "joint WOE/IV binning: encrypted label sums per passive bin under opaque ids", needs_alignment=True),  # noqa: E501
    "joint-stats": ProtocolInfo("vfl_cli.protocol.joint_stats:JointStats", "joint statistics: Pearson correlation across parties (masked matrix product), label rate per passive bin", needs_alignment=True),  # noqa: E501
    "hfl": ProtocolInfo(
        "vfl_cli.protocol.hfl:HFL",
        "multi-node training: parameter server, delta updates, FedAvg or Actor-Critic weighting",
        roles=("server", "worker", "predictor"),
        evaluated=True,
        model=card_table,
    ),
}


def register(name: str, entry: ProtocolInfo) -> None:
    """Add a protocol (a plugin's, or a test's) under ``name``; refuses to replace one."""
    if name in REGISTRY and REGISTRY[name] != entry:
        raise VflError(f"protocol {name} is already registered as {REGISTRY[name].target}")
    REGISTRY[name] = entry


def info(name: str) -> ProtocolInfo:
    """The registry entry of ``name``.

    Raises:
        VflError: an unknown protocol, listing the known ones.
    """
    entry = REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise VflError(f"unknown protocol {shown}; known protocols: {', '.join(sorted(REGISTRY))}")
    return entry


def names(**wanted: Any) -> list[str]:
    """The protocol names whose entry has every given value, e.g. ``names(trains=True)``,
    ``names(predictor="predict")``."""
    return [n for n, e in REGISTRY.items() if all(getattr(e, k) == v for k, v in wanted.items())]


def get_protocol(name: str) -> Protocol:
    """A fresh instance of the protocol ``name`` (its module imported on first use)."""
    module, cls = info(name).target.split(":")
    protocol: Protocol = getattr(importlib.import_module(module), cls)()
    return protocol


def loss_label(name: str, params: Mapping[str, Any]) -> str:
    """What a job of protocol ``name`` calls its training loss, in words (the number alone reads
    as a log-loss); "train loss" for a protocol not registered."""
    entry = REGISTRY.get(name)
    label = "train loss" if entry is None else entry.loss
    return str(label(params) if callable(label) else label)


def model_table(name: str, card: Mapping[str, Any]) -> ModelTable:
    """The table ``vfl model show`` prints for a card of protocol ``name``.

    Raises:
        VflError: the protocol trains no model.
    """
    render = info(name).model
    if render is None:
        raise VflError(f"{name} trains no model to show")
    if isinstance(render, str):  # "module:function", imported only when a card is shown
        module, function = render.split(":")
        render = getattr(importlib.import_module(module), function)
    table: ModelTable = render(card)
    return table
