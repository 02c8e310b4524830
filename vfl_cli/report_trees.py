"""The tree parts of a report (``secureboost`` jobs): loss per round, split counts and gains.

What a party's report may show, from its own job state only:

* the active party: training and validation loss per boosting round (one tree per class and
  round), split counts and total gain per party (a passive party by its name only, since the
  active party knows a passive split by its owner and opaque id), and split counts and total
  gain per column of its own;
* a passive party: split counts per column of its own (it knows its splits, not their gains, the
  leaf weights or the loss).

:func:`tree_summary` is the same content as data, for ``report.json``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["job_tree_summary", "tree_figures", "tree_summary", "tree_tables"]


def job_tree_summary(ws: Any, job: str) -> dict[str, Any] | None:
    """:func:`tree_summary` of this party's results of ``job`` (None: no tree model there)."""
    from vfl_cli import jobs

    state, _ = jobs.load_state(ws, job)
    card = state.results.get("model")
    return tree_summary(card, state.results.get("history")) if isinstance(card, dict) else None


def tree_summary(card: Mapping[str, Any], history: list[Mapping[str, Any]] | None = None
                 ) -> dict[str, Any] | None:
    """Loss per round and importances as this party's card holds them; None: not a tree card."""
    if "rounds" in card and "split_counts" in card:  # the active party's card
        own = Counter(n["split"][0] for r in card["rounds"] for n in r if "split" in n)
        gain: dict[str, float] = {}
        for n in (n for r in card["rounds"] for n in r if "split" in n and "gain" in n):
            gain[n["split"][0]] = gain.get(n["split"][0], 0.0) + float(n["gain"])
        out: dict[str, Any] = {
            "party": card.get("party"),
            "split_counts_by_party": dict(card["split_counts"]),
            "gain_by_party": {k: float(v) for k, v in card.get("gain_importance", {}).items()},
            "own_split_counts_by_column": dict(own.most_common()),
            "own_gain_by_column": {c: gain[c] for c in own if c in gain},
        }
        loss = [{k: h[k] for k in ("round", "train_loss", "valid_loss") if k in h}
                for h in history or []]
        if loss:
            out["loss_per_round"] = loss
        return out
    if "splits" in card and "binning" in card:  # a passive party's card: its own splits only
        own = Counter(str(s["feature"]) for s in card["splits"])
        return {"party": card.get("party"), "own_split_counts_by_column": dict(own.most_common()),
                "own_splits": len(card["splits"])}
    return None


def tree_figures(summary: Mapping[str, Any], figure: Callable[[str, str, Any], str]
                 ) -> list[str]:
    """The loss-per-round and importance plots (``figure(id, caption, fig)`` renders one)."""
    import matplotlib.pyplot as plt

    out = []
    loss = summary.get("loss_per_round") or []
    if loss:
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        rounds = [int(h["round"]) + 1 for h in loss]
        ax.plot(rounds, [h["train_loss"] for h in loss], marker="o", label="training rows")
        if all("valid_loss" in h for h in loss):
            ax.plot(rounds, [h["valid_loss"] for h in loss], marker="s", label="validation rows")
        ax.set_xlabel("boosting round (one tree per class)")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        out.append(figure("tree-loss", "Loss after each boosting round", fig))
    by_party = summary.get("split_counts_by_party") or {}
    if by_party:
        fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.0))
        names = sorted(by_party)
        axes[0].bar(names, [by_party[n] for n in names], color="#4c72b0")
        axes[0].set_title("splits", fontsize=9)
        gains = summary.get("gain_by_party") or {}
        axes[1].bar(names, [gains.get(n, 0.0) for n in names], color="#dd8452")
        axes[1].set_title("total gain", fontsize=9)
        for ax in axes:
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        out.append(figure("tree-importance-parties", "Splits and gain per party", fig))
    own = summary.get("own_split_counts_by_column") or {}
    if own:
        top = list(own.items())[:20]
        gains = summary.get("own_gain_by_column") or {}
        names = [c for c, _ in top][::-1]
        fig, axes = plt.subplots(1, 2 if gains else 1, figsize=(6.4 if gains else 4.6,
                                                               0.6 + 0.22 * len(top)), squeeze=False)
        axes[0][0].barh(names, [n for _, n in top][::-1], color="#55a868")
        axes[0][0].set_xlabel("splits")
        if gains:  # the active party: the gain of each of its own columns' splits
            axes[0][1].barh(names, [gains.get(c, 0.0) for c in names], color="#dd8452")
            axes[0][1].set_xlabel("total gain")
            axes[0][1].tick_params(axis="y", labelleft=False)
        axes[0][0].tick_params(axis="y", labelsize=7)
        what = "Splits and gain" if gains else "Splits"
        out.append(figure("tree-importance-columns",
                          f"{what} per column of {summary.get('party')} (its own columns only)", fig))
    return out


def tree_tables(summary: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """``(title, headers, rows)`` of the importance tables."""
    out = []
    by_party = summary.get("split_counts_by_party") or {}
    if by_party:
        gains = summary.get("gain_by_party") or {}
        out.append(("Splits and gain per party", ["party", "splits", "total gain"],
                    [[p, by_party[p], f"{gains.get(p, 0.0):.4f}"] for p in sorted(by_party)]))
    own = summary.get("own_split_counts_by_column") or {}
    gains = summary.get("own_gain_by_column") or {}
    if own and gains:
        out.append((f"Splits and gain per column of {summary.get('party')}",
                    ["column", "splits", "total gain"],
                    [[c, n, f"{gains.get(c, 0.0):.4f}"] for c, n in own.items()]))
    elif own:
        out.append((f"Splits per column of {summary.get('party')}", ["column", "splits"],
                    [[c, n] for c, n in own.items()]))
    return out
