"""One self-contained HTML report per job, built from the party's own job state and ledger.

A report shows only what its party knows: the job's parties and key fingerprints, the agreed
parameters, every artifact this party sent or received (from its ledger), and its own results:
for the active party the training curve, ROC and KS curves and the confusion matrix (or a
residual plot for regression), for the server of a multi-node job the node weights per round;
for a passive party its own model part. Every report also names the party's own data file with
its SHA-256, the intersection size, the columns the job used and how each was encoded, and the
result of ``vfl audit verify`` on the party's ledger. Plots are matplotlib SVG inlined in the page, so the
file opens offline and can be mailed to a compliance desk as it is.
"""

from __future__ import annotations

import hashlib
import html
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vfl_cli import jobs
from vfl_cli.crypto.signing import short
from vfl_cli.models.reference import sigmoid
from vfl_cli.protocol.base import JobState
from vfl_cli.protocol.registry import REGISTRY, loss_label
from vfl_cli.workspace import Workspace

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2430;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}
h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde2ea;padding-bottom:.3rem}
.sub{color:#5a6474;margin-top:0}table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #dde2ea;padding:.3rem .6rem;text-align:left}th{background:#f3f5f9}
td.num{text-align:right;font-variant-numeric:tabular-nums}.plots{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;border:1px solid #dde2ea;padding:.5rem}figcaption{font-size:.85rem;color:#5a6474}
code{font-size:.85rem}.note{color:#5a6474;font-size:.9rem}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"
                         for i, v in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(fig_id: str, caption: str, svg: str) -> str:
    return f'<figure id="{fig_id}" class="plot">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


def _binary(protocol: str) -> bool:
    """Whether the protocol's test scores are log-odds of a binary label (its registry entry)."""
    entry = REGISTRY.get(protocol)
    return entry is not None and entry.binary


def _plots(state: JobState, protocol: str) -> list[str]:
    """The plots this party can draw from what it holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    history = state.results.get("history") or []
    trees = _tree_summary(state)
    if trees is not None:  # boosted trees: loss per round, splits and gains
        from vfl_cli.report_trees import tree_figures

        out += tree_figures(trees, lambda fig_id, caption, fig: _figure(fig_id, caption, _svg(fig)))
    elif history:
        out.append(_training_curve(history, state.results.get("model") or {}, protocol))
    if "test_scores" in state.arrays and "test_labels" in state.arrays:
        z, y = state.arrays["test_scores"], state.arrays["test_labels"]
        if _binary(protocol) or set(np.unique(y)) <= {0.0, 1.0}:
            out += _classifier_plots(y, sigmoid(z))
        else:
            fig, ax = plt.subplots(figsize=(4.6, 3.2))
            ax.scatter(z, y - z, s=8, alpha=0.6)
            ax.axhline(0, color="#888", lw=1)
            ax.set_xlabel("prediction")
            ax.set_ylabel("residual (label - prediction)")
            ax.grid(alpha=0.3)
            out.append(_figure("residual-plot", "Residuals on the test rows", _svg(fig)))
    rounds = state.results.get("round_history") or []
    if rounds and all("val_loss" in r for r in rounds):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        ax.plot([r.get("round", i) for i, r in enumerate(rounds)], [r["val_loss"] for r in rounds], marker="o")
        ax.set_xlabel("round")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        out.append(_figure("round-curve", "Master model's loss on the server's validation rows per round", _svg(fig)))
    weights = state.results.get("node_weights")
    if weights:
        w = np.asarray(weights, dtype=float)
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        names = [str(n) for n in state.results.get("nodes") or []]
        for j in range(w.shape[1]):
            # the node's party name (the weights' columns are in the job's order of workers)
            ax.plot(range(1, len(w) + 1), w[:, j], marker=".", label=names[j] if j < len(names) else f"node {j}")
        ax.set_xlabel("round")
        ax.set_ylabel("weight")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        out.append(_figure("node-weights", "Weight of each node's update per round", _svg(fig)))
    return out


def _tree_summary(state: JobState) -> dict[str, Any] | None:
    """The tree parts this party's results hold (:mod:`vfl_cli.report_trees`), or None."""
    from vfl_cli.report_trees import tree_summary

    card = state.results.get("model")
    return tree_summary(card, state.results.get("history")) if isinstance(card, dict) else None


def _tree_tables(state: JobState) -> list[str]:
    from vfl_cli.report_trees import tree_tables

    trees = _tree_summary(state)
    out = []
    for title, headers, rows in tree_tables(trees) if trees is not None else []:
        out += [f"<h2>{_e(title)}</h2>", _table(headers, rows, numeric={1, 2})]
    return out


#: Test metric names spelt out in the report.
METRIC_NAMES = {"log_loss": "test log-loss (cross-entropy of the predicted probability)",
                "auc": "AUC (area under the ROC curve)", "ks": "KS (Kolmogorov-Smirnov statistic)",
                "rmse": "RMSE (root mean squared error)", "mae": "MAE (mean absolute error)"}


def _metric_rows(metrics: dict[str, Any], protocol: str, params: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for split, vals in metrics.items():
        for k, v in vals.items():
            name = loss_label(protocol, params) if (split, k) == ("train", "loss") else METRIC_NAMES.get(k, k)
            rows.append([split, name, _fmt(v)])
    return rows


def _training_curve(history: list[dict[str, Any]], card: dict[str, Any], protocol: str) -> str:
    """The loss at every epoch where it was measured, on an axis of every epoch from 1."""
    import matplotlib.pyplot as plt

    model = card if "epochs_run" in card else {}
    params = model.get("params") or {}
    epochs = [int(h["epoch"]) + 1 for h in history]
    last = max([int(model.get("epochs_run") or 0), *epochs])
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.plot(epochs, [h["loss"] for h in history], marker="o", label="training")
    validated = [(e, h["val_loss"]) for e, h in zip(epochs, history, strict=True) if "val_loss" in h]
    if validated:  # split-nn's early stop: the loss on the held-out rows, and the epoch kept
        ax.plot(*zip(*validated, strict=True), marker=".", label="validation")
        kept = (model.get("validation") or {}).get("kept_epoch")
        if kept is not None:
            ax.axvline(int(kept) + 1, color="grey", linestyle=":", label="kept")
        ax.legend()
    ax.set_xlim(0.5, last + 0.5)
    ax.set_xticks(range(1, last + 1, max(1, last // 12)))
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss_label(protocol, params).removeprefix("train "))
    ax.grid(alpha=0.3)
    every = int(params.get("loss_every", 1) or 1)
    how = (f"measured after epoch 1, every {every} epochs (loss_every = {every}) and the last"
           if every > 1 else "every epoch")
    return _figure("training-curve", f"Training loss, epochs 1 to {last}: {how} (computed under encryption)",
                   _svg(fig))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks ("" when it cannot be read)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return ""
    return digest.hexdigest()


def _encodings(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Each column this party's job uses and how it was encoded (its own columns only)."""
    specs = (info.get("encoders") or {}).get("specs") or {}
    imputed = info.get("imputed_cells") or {}
    encoded_names = {f"{c}={cat}": c for c, spec in specs.items() if spec.get("kind") == "onehot"
                     for cat in spec.get("categories", [])}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for feature in info.get("features") or []:
        column = encoded_names.get(feature, feature)
        if column in seen:
            continue
        seen.add(column)
        spec = specs.get(column)
        how = (f"{spec['kind']} ({len(spec.get('categories', []))} categories)" if spec
               else "numeric, standardised")
        out.append({"column": column, "encoding": how,
                    "imputed_cells": int(sum(v for k, v in imputed.items() if encoded_names.get(k, k) == column))})
    return out


def _intersection_size(ws: Workspace, info: dict[str, Any], state: JobState) -> int | None:
    if info["protocol"] in ("psi", "psi-cache"):
        size = state.results.get("intersection_size")
        return int(size) if isinstance(size, int) else None
    alignment = info["params"].get("alignment")
    if not isinstance(alignment, str):
        return None
    try:
        aligned, _ = jobs.load_state(ws, alignment)
    except Exception:  # noqa: BLE001 - an alignment job this party no longer holds: not shown
        return None
    size = aligned.results.get("intersection_size")
    return int(size) if isinstance(size, int) else None


def data_summary(ws: Workspace, job: str) -> dict[str, Any]:
    """This party's own data facts for ``job``: its file's hash, intersection, columns, encodings.

    The hash is of the data file as it is now (re-run the report after changing the file and the
    hash changes with it); nothing here is about another party's data.
    """
    info = jobs.load_info(ws, job)
    state, _ = jobs.load_state(ws, job)
    data = Path(str(info.get("data") or ws.config["data"]))
    return {"data_file": data.name, "data_sha256": file_sha256(data),
            "intersection_size": _intersection_size(ws, info, state),
            "columns": _encodings(info)}


def audit_summary(ws: Workspace) -> dict[str, Any]:
    """``vfl audit verify`` of this party's ledger and archive, summed up."""
    from vfl_cli.audit import verify_workspace

    result = verify_workspace(ws).to_dict()
    return {"ok": result["ok"], "entries": result["entries"], "files_checked": result["files_checked"],
            "problems": result["problems"][:20], "warnings": result["warnings"][:20]}


def _data_section(ws: Workspace, job: str) -> list[str]:
    d = data_summary(ws, job)
    rows = [["data file", d["data_file"]], ["SHA-256 of the data file (now)", d["data_sha256"] or "unreadable"]]
    if d["intersection_size"] is not None:
        rows.append(["rows in the intersection (aligned rows)", d["intersection_size"]])
    out = ["<h2>Data</h2>", _table(["what", "value"], rows)]
    if d["columns"]:
        out += [(f"<p class=note>The columns of {_e(ws.name)} this job uses, and how each was encoded; empty "
                 "cells were filled with the column's mean over the training rows.</p>"),
                _table(["column", "encoding", "empty cells filled"],
                       [[c["column"], c["encoding"], c["imputed_cells"]] for c in d["columns"]], numeric={2})]
    return out


def _audit_section(ws: Workspace) -> list[str]:
    a = audit_summary(ws)
    verdict = "passed" if a["ok"] else f"FAILED ({len(a['problems'])} problem(s))"
    out = ["<h2>Audit</h2>",
           (f'<p id="audit-status">vfl audit verify: <b>{_e(verdict)}</b>; {a["entries"]} ledger entries, '
            f"{a['files_checked']} archived files re-checked.</p>")]
    if a["problems"] or a["warnings"]:
        out.append(_table(["kind", "message"], [["problem", p] for p in a["problems"]]
                          + [["warning", w] for w in a["warnings"]]))
    return out


def _classifier_plots(y: np.ndarray, p: np.ndarray) -> list[str]:
    import matplotlib.pyplot as plt

    from vfl_cli.metrics import confusion, ks_curve, roc_curve_points

    out = []
    roc = roc_curve_points(y, p)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot(roc["fpr"], roc["tpr"], lw=2)
    ax.plot([0, 1], [0, 1], ls="--", color="#999")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3)
    out.append(_figure("roc-curve", "ROC curve on the test rows", _svg(fig)))
    ks = ks_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot(ks["thresholds"], ks["tpr"], label="true positive rate")
    ax.plot(ks["thresholds"], ks["fpr"], label="false positive rate")
    ax.plot(ks["thresholds"], ks["gap"], label=f"KS = {ks['ks']:.3f}")
    ax.set_xlabel("threshold")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.append(_figure("ks-curve", "KS curve on the test rows", _svg(fig)))
    cm = confusion(y, (p >= 0.5).astype(float))
    matrix = np.asarray(cm["matrix"])
    fig, ax = plt.subplots(figsize=(3.4, 3.0))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    labels = [str(int(label)) for label in cm["labels"]]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    out.append(_figure("confusion-matrix", "Confusion matrix at threshold 0.5", _svg(fig)))
    return out


def _label_noise(meter: dict[str, Any]) -> str:
    """hetero-lr / hetero-linear's label noise in words: what was asked (label_bits) and spent."""
    if not meter["label_noise_sigma"]:
        return "label noise off"
    text = (f"label_epsilon {float(meter['label_epsilon']):.3g} spent (delta {float(meter['label_delta']):.3g}), "
            f"noise deviation {float(meter['label_noise_sigma']):.3g} per row over "
            f"{int(meter['releases_per_row'])} releases")
    if meter.get("label_bits"):
        text += f"; label_bits = {float(meter['label_bits']):g}"
    if meter.get("label_information_bits") is not None:
        text += (f"; information bound {float(meter['label_information_bits']):.3g} label bits (the widest party, "
                 f"{int(meter.get('widest_columns', 0))} columns, over those releases)")
    return _e(text)


def _aggregation(meter: dict[str, Any]) -> str:
    """hfl's privacy settings in words: what the server sees, the node floor, DP-FedAvg's epsilon."""
    text = (f"Secure aggregation {'on' if meter['secure_aggregation'] else 'off'}: the server sees "
            f"{meter.get('server_sees', '')}; at least min_nodes = {int(meter.get('min_nodes', 0))} nodes per "
            "aggregate. ")
    dp = meter.get("dp")
    if not isinstance(dp, dict):
        return text + "DP-FedAvg off (no epsilon: dp_clip = 0)"
    text += (f"DP-FedAvg: each node's delta clipped to {float(dp['clip']):g}, noise multiplier "
             f"{float(dp['noise_multiplier']):g}, epsilon {float(dp['epsilon']):.3g} at delta "
             f"{float(dp['delta']):.3g} over the rounds run")
    if dp.get("epsilon_each_delta") is not None:
        text += f" (each node's own delta, which the server sees: epsilon {float(dp['epsilon_each_delta']):.3g})"
    return text


def _privacy_section(state: JobState) -> list[str]:
    """The privacy meter: label attacks this party ran on the gradients it sent, per epoch."""
    meter = state.results.get("privacy")
    if not isinstance(meter, dict):
        return []
    if "secure_aggregation" in meter:  # hfl: aggregation mode and DP-FedAvg, not a label meter
        return ["<h2>Privacy</h2>",
                f"<p class=note>{_e(_aggregation(meter))}; see docs/protocols/hfl.md for what each party "
                "learns.</p>"]
    if "label_noise_sigma" in meter:  # hetero-lr / hetero-linear: label noise, not a meter
        return ["<h2>Label privacy</h2>",
                f"<p class=note>{_label_noise(meter)}; see docs/protocols/hetero-linear.md for what each party "
                "learns.</p>"]
    leaks = [(h["epoch"] + 1, h["label_leak_auc"]) for h in state.results.get("history") or []
             if h.get("label_leak_auc")]
    settings = ", ".join(f"{k} = {_e(meter[k])}" for k in ("label_protection", "pooled_protection", "max_leak_auc")
                         if k in meter)
    out = ["<h2>Privacy meter</h2>",
           f"<p class=note>{_e(meter.get('meter', ''))}: 0.5 is chance, 1.0 reads every label. {settings}.</p>"]
    if leaks:
        names = list(leaks[0][1])
        rows = [[epoch, *(_fmt(leak[n]) for n in names)] for epoch, leak in leaks]
        out.append(_table(["epoch", *(f"{n} attack" for n in names)], rows, numeric=set(range(1, len(names) + 1))))
    pooled = meter.get("pooled_label_leak_auc")
    if pooled:
        out.append("<p class=note>Each training row's gradients summed over all epochs (an attacker pooling "
                   "epochs): " + ", ".join(f"{_e(k)} {_fmt(v)}" for k, v in pooled.items()) + ".</p>")
    return out


def build_report(ws: Workspace, job: str) -> str:
    """The HTML report of ``job`` as this party sees it."""
    info = jobs.load_info(ws, job)
    state, _ = jobs.load_state(ws, job)
    protocol = info["protocol"]
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(job)} — vfl report</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_e(protocol)} job <code>{_e(job)}</code></h1>",
        f'<p class="sub">Report of party <b>{_e(ws.name)}</b> ({_e(ws.role)}), generated '
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}. Status: "
        f"{'finished' if state.done else 'in progress, phase ' + _e(state.phase)}. It shows only what "
        f"{_e(ws.name)} knows.</p>",
        "<h2>Parties</h2>",
        _table(["party", "role", "signing key", "Paillier key"],
               [[p["name"] + (" (this party)" if p["name"] == ws.name else ""), p["role"],
                 short(p["signing_fingerprint"]), short(p["paillier_fingerprint"])] for p in info["parties"]]),
        f"<p class=note>Proposed by {_e(info['proposer'])} on {_e(info['created'])}.</p>",
        "<h2>Parameters</h2>",
        _table(["parameter", "value"], [[k, v] for k, v in sorted(info["params"].items())]),
    ]
    metrics = state.results.get("metrics") or {}
    if metrics:
        rows = _metric_rows(metrics, protocol, info["params"])
        parts += ["<h2>Results</h2>", _table(["split", "metric", "value"], rows, numeric={2})]
    elif protocol == "psi" and state.done:
        r = state.results
        parts += ["<h2>Results</h2>", _table(["what", "value"], [
            ["rows all parties hold", r.get("intersection_size")],
            ["fingerprint (a MAC only the aligned parties can compute)", r.get("fingerprint")]])]
    parts += _data_section(ws, job)
    parts += _privacy_section(state)
    plots = _plots(state, protocol)
    if plots:
        parts += ["<h2>Plots</h2>", '<div class="plots">', *plots, "</div>"]
    parts += _tree_tables(state)
    from vfl_cli.report_scorecard import scorecard_section

    parts += scorecard_section(ws, job, state)
    card = state.results.get("model")
    if isinstance(card, dict) and card.get("weights"):
        parts += [f"<h2>{_e(ws.name)}'s part of the model</h2>",
                  _table(["feature", "weight"], [[f, f"{w:+.5f}"] for f, w in card["weights"].items()], numeric={1})]
    entries = [e for e in ws.ledger.entries() if e.get("job") == job]
    parts += [
        *_audit_section(ws),
        "<h2>Timeline of artifacts</h2>",
        "<p class=note>Every file this party sent or received in this job, from its signed ledger "
        "(<code>vfl audit verify</code> re-checks it).</p>",
        _table(["#", "time (UTC)", "event", "kind", "from", "to", "bytes", "file"],
               [[e["seq"], e["time"], e["event"], e.get("kind", ""), e.get("sender", ""), e.get("recipient", ""),
                 f"{e['size']:,}" if "size" in e else "", e.get("file", "")] for e in entries], numeric={6}),
        "</body></html>",
    ]
    return "\n".join(parts)
