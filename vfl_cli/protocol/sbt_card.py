"""How ``vfl model show`` renders a SecureBoost model card (light: no protocol imports).

The active party's card lists every node of every tree: its owner (a passive party's split is
known here by its owner only), its own splits and every leaf weight. A passive party's card
lists its own splits: round, node, column and the bins sent left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vfl_cli.protocol.registry import ModelTable


def trees_table(card: Mapping[str, Any]) -> ModelTable:
    """One row per node (active party) or per own split (passive party)."""
    if "splits" in card:
        rows = tuple((str(s["round"]), str(s["node"]), str(s["feature"]), str(s["left"]))
                     for s in card["splits"])
        return ModelTable(("round", "node", "feature", "left"), rows)
    out = []
    for r, nodes in enumerate(card.get("rounds", [])):
        for n in sorted(nodes, key=lambda n: n["id"]):
            if n["owner"] is None:
                what, value = "leaf", f"{float(n['value']):+.5f}"
            elif "split" in n:
                what, value = f"{n['split'][0]} bin <= {n['split'][1]}", ""
            else:
                what, value = f"split held by {n['owner']}", ""
            out.append((str(r), str(n["id"]), str(n["owner"] or ""), what, value))
    return ModelTable(("round", "node", "owner", "split", "leaf weight"), tuple(out))
