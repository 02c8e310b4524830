"""Recipes: a whole multi-party job on one machine, through the real ``vfl`` command.

A recipe is a TOML file::

    [recipe]
    name = "breast"
    protocol = "hetero-lr"          # handshake | align | hetero-lr | ...
    key_bits = 2048                 # optional; [train] key_bits wins

    [[party]]
    name = "bank"
    role = "active"
    data = "../sample_data/breast_active.csv"   # relative to the recipe file
    id_column = "id"
    label_column = "label"
    # optional, as 'vfl init' takes them: exclude = ["region"], features = ["a", "b"],
    # encode = {region = "onehot"}, positive_label = "yes", sep = ";", decimal = ",", encoding

    [align]      # options of each stage, passed to its job as parameters
    [train]
    [evaluate]   # test_fraction, seed

``run_recipe`` gives every party its own workspace under the work folder and runs every step as
a separate ``vfl`` process for that party. Files move only from one party's outbox to another's
inbox, exactly as an operator would carry them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfl_cli.errors import VflError
from vfl_cli.protocol.registry import REGISTRY
from vfl_cli.protocol.registry import names as protocol_names

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

STAGE_TABLES = ("align", "binning", "train", "evaluate", "model")
DEFAULT_KEY_BITS = 2048
#: Written into a recipe's work folder, so that a rerun knows what it may clear.
RUN_MARKER = ".vfl-recipe.json"


@dataclass(frozen=True)
class PartySpec:
    name: str
    role: str
    data: Path
    id_column: str
    label_column: str | None = None
    #: the party's other 'vfl init' options (--exclude, --encode, --sep, ...), as arguments
    init_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    """One job of a recipe: a name, the protocol it runs and its parameters."""

    name: str
    protocol: str
    params: dict[str, Any]


@dataclass
class Recipe:
    path: Path
    name: str
    protocol: str
    parties: list[PartySpec]
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def key_bits(self) -> int:
        default = self.tables["recipe"].get("key_bits", DEFAULT_KEY_BITS)
        return int(self.tables.get("train", {}).get("key_bits", default))

    @property
    def active(self) -> PartySpec:
        """The party that proposes every job: the active party, or the server."""
        return next(p for p in self.parties if p.role in ("active", "server"))

    def paillier_parties(self) -> set[str]:
        """The parties whose Paillier key some job of this recipe uses; the others make none.

        Alignment and the handshake use none; hfl uses the workers' keys (the holder of the
        secure sum is a worker) only with secure aggregation; every other protocol uses them all.
        """
        from vfl_cli.keyring import paillier_roles

        roles = {p.role for p in self.parties}
        needed = {r for s in self.stages() for r in paillier_roles(s.protocol, s.params, roles)}
        return {p.name for p in self.parties if p.role in needed}

    def keygen_args(self, party: str) -> list[str]:
        """'vfl keygen' arguments for ``party``: a Paillier key only where a job needs one."""
        if party not in self.paillier_parties():
            return ["keygen", "--no-paillier"]
        bits = self.key_bits
        return ["keygen", "--key-bits", str(bits), *(["--insecure-test-keys"] if bits < 1024 else [])]

    def stages(self) -> list[Stage]:
        """The jobs this recipe runs, in order. A later job names the earlier ones it uses."""
        align = dict(self.tables.get("align", {}))
        if self.protocol == "handshake":
            return [Stage("handshake", "handshake", {})]
        if self.protocol == "align":
            return [Stage("align", "psi", align)]
        train = {k: v for k, v in self.tables.get("train", {}).items() if k != "key_bits"}
        train.update(self.tables.get("evaluate", {}))
        entry = REGISTRY.get(self.protocol)
        if entry is not None and not entry.needs_alignment:  # hfl: same columns, nothing to align
            return [Stage("train", self.protocol, train)]
        if "model" in self.tables:
            train["model"] = self.tables["model"]
        train["alignment"] = f"{self.name}-align"
        stages = [Stage("align", "psi", align)]
        if "binning" in self.tables:  # woe-binning first; the training job selects and encodes by it
            split: dict[str, Any] = {k: train[k] for k in ("test_fraction", "seed") if k in train}
            stages.append(Stage("binning", "woe-binning", {**split, **self.tables["binning"],
                                                           "alignment": train["alignment"]}))
            train["binning"] = f"{self.name}-binning"
        return [*stages, Stage("train", self.protocol, train)]


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe file; relative data paths are relative to the recipe."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise VflError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise VflError(f"{path} is not valid TOML: {exc}") from exc
    head = raw.get("recipe")
    if not isinstance(head, dict) or "protocol" not in head:
        raise VflError(f"{path} needs a [recipe] table with name and protocol")
    unknown = set(raw) - {"recipe", "party", *STAGE_TABLES}
    if unknown:
        raise VflError(f"{path}: unknown table(s) {sorted(unknown)}; known: recipe, party, {', '.join(STAGE_TABLES)}")
    parties = []
    for i, p in enumerate(raw.get("party", []), 1):
        missing = [k for k in ("name", "role", "data", "id_column") if k not in p]
        if missing:
            raise VflError(f"{path}: [[party]] number {i} lacks {', '.join(missing)}")
        data = Path(p["data"])
        if not data.is_absolute():
            data = (path.parent / data).resolve()
        parties.append(PartySpec(p["name"], p["role"], data, p["id_column"], p.get("label_column"),
                                 _init_options(p, f"{path}: [[party]] {p['name']}")))
    roles = [p.role for p in parties]
    if len(parties) < 2 or (roles.count("active") + roles.count("server")) != 1:
        raise VflError(
            f"{path}: a recipe needs one active party and at least one passive party "
            "(or, for multi-node training, one server and workers)"
        )
    if isinstance(raw.get("model"), str):  # model = "file.toml": a spec file next to the recipe
        from vfl_cli.models.split_spec import load_spec_file

        raw["model"] = load_spec_file(path.parent / raw["model"])
    tables = {k: dict(v) for k, v in raw.items() if k != "party"}
    name = str(head.get("name", path.stem)).lower().replace(" ", "-")
    return Recipe(path, name, str(head["protocol"]), parties, tables)


def _init_options(party: dict[str, Any], what: str) -> tuple[str, ...]:
    """A recipe party's data options as 'vfl init' arguments (checked by 'vfl init' itself)."""
    args: list[str] = []
    for key in ("positive_label", "sep", "decimal", "encoding", "memory"):
        if key in party:
            args += [f"--{key.replace('_', '-')}", str(party[key])]
    for key in ("exclude", "features"):
        value = party.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise VflError(f"{what}: {key} must be a list of column names")
        if key == "exclude":
            args += [a for v in value for a in ("--exclude", v)]
        elif value:
            args += ["--features", ",".join(value)]
    encode = party.get("encode", {})
    if not isinstance(encode, dict):
        raise VflError(f"{what}: encode must be a table of column = kind (onehot, ordinal, frequency)")
    args += [a for col, kind in encode.items() for a in ("--encode", f"{col}={kind}")]
    return tuple(args)


def vfl_command() -> list[str]:
    """How to start the ``vfl`` command as a child process."""
    return [sys.executable, "-m", "vfl_cli"]


@dataclass
class Runner:
    """Runs a recipe party by party, carrying files between outboxes and inboxes."""

    recipe: Recipe
    workdir: Path
    on_event: Callable[[str], None] = lambda msg: None
    exchanges: int = 0
    bytes_exchanged: int = 0
    commands: int = 0

    def ws(self, party: str) -> Path:
        return self.workdir / party

    def vfl(self, party: str | None, *args: str) -> Any:
        """Run one ``vfl`` process (for ``party``'s workspace) and return its JSON output."""
        argv = [*vfl_command(), "--quiet"]
        if party is not None:
            argv += ["-w", str(self.ws(party))]
        argv += list(args)
        self.commands += 1
        # Let the children cache their bytecode even where the environment forbids it: a
        # recipe starts hundreds of short vfl processes.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            error = next((line for line in lines if line.startswith("Error:")), lines[-1] if lines else "")
            raise VflError(f"{party or 'vfl'}: 'vfl {' '.join(args[:3])}' failed: {error.removeprefix('Error: ')}")
        out = proc.stdout.strip()
        return json.loads(out) if out else None

    def setup(self) -> None:
        self.clear_earlier_run()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / RUN_MARKER).write_text(json.dumps(
            {"recipe": self.recipe.name, "parties": [p.name for p in self.recipe.parties]}) + "\n")
        cards = self.workdir / "cards"
        cards.mkdir(parents=True, exist_ok=True)
        bits = self.recipe.key_bits
        for p in self.recipe.parties:
            init = ["init", str(self.ws(p.name)), "--name", p.name, "--role", p.role,
                    "--data", str(p.data), "--id-column", p.id_column]
            if p.label_column:
                init += ["--label-column", p.label_column]
            self.vfl(None, *init, *p.init_options)
            keygen = self.recipe.keygen_args(p.name)
            self.vfl(p.name, *keygen)
            self.vfl(p.name, "keys", "export", "--out", str(cards / f"{p.name}.card"))
            made = ("signing key (no Paillier key: no job here uses it)" if "--no-paillier" in keygen
                    else f"{bits}-bit keys")
            self.on_event(f"{p.name}: workspace and {made} ready")
        for p in self.recipe.parties:
            for q in self.recipe.parties:
                if p.name != q.name:
                    self.vfl(p.name, "keys", "import", str(cards / f"{q.name}.card"))

    def clear_earlier_run(self) -> None:
        """Empty a work folder that an earlier run of this recipe left (a failed run is rerun in place).

        Only what a run creates is removed: its marker file, cards/, the reports and the
        workspaces of the recipe's parties. Anything else in the folder (or a folder that no
        recipe run made) is refused, so a mistyped --workdir never deletes a user's files.
        """
        if not self.workdir.exists() or not any(self.workdir.iterdir()):
            return
        marker = self.workdir / RUN_MARKER
        if not marker.is_file():
            raise VflError(f"{self.workdir} is not empty and no recipe run made it; choose a new --workdir")
        ours = {RUN_MARKER, "cards", "report.json", "report.html", *(p.name for p in self.recipe.parties)}
        others = sorted(f.name for f in self.workdir.iterdir() if f.name not in ours)
        if others:
            raise VflError(f"{self.workdir} holds files a recipe run did not make ({', '.join(others[:5])}); "
                           "move them or choose a new --workdir")
        for p in self.recipe.parties:
            ws = self.ws(p.name)
            if ws.exists() and not (ws / "vfl.json").is_file():
                raise VflError(f"{ws} is not a workspace of an earlier run; move it or choose a new --workdir")
        for name in sorted(ours - {RUN_MARKER}):
            target = self.workdir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        marker.unlink()
        self.on_event(f"cleared the earlier run in {self.workdir}")

    def deliver(self) -> set[str]:
        """Move every outbox file to its recipient's inbox; return who received something."""
        receivers: set[str] = set()
        names = {p.name for p in self.recipe.parties}
        for p in self.recipe.parties:
            for f in sorted((self.ws(p.name) / "outbox").glob("*.zip")):
                recipient = f.name.rsplit("-to-", 1)[-1].removesuffix(".zip")
                if recipient not in names:
                    raise VflError(f"{f} names an unknown recipient {recipient!r}")
                self.bytes_exchanged += f.stat().st_size
                self.exchanges += 1
                shutil.move(str(f), self.ws(recipient) / "inbox" / f.name)
                receivers.add(recipient)
        return receivers

    def run_stage(self, stage: Stage) -> dict[str, dict[str, Any]]:
        """Run one job to completion; return each party's job id and results."""
        job = f"{self.recipe.name}-{stage.name}"
        active = self.recipe.active.name
        args = ["job", "start", "--protocol", stage.protocol, "--job", job, "--json"]
        for k, v in stage.params.items():
            args += ["--param", f"{k}={json.dumps(v)}"]
        started = self.vfl(active, *args)
        accepted = {active}
        # each party's report of the step that finished the job: its results, without one more
        # 'vfl job show' process per party
        finals: dict[str, dict[str, Any]] = {}
        for r in started:
            if r["done"] and r["job"] == job:
                finals[active] = r
        done: set[str] = set(finals)
        while len(done) < len(self.recipe.parties):
            # only a party that received something has anything to do: no idle processes
            receivers = self.deliver()
            progressed = False
            for p in self.recipe.parties:
                if p.name in done or p.name not in receivers:
                    continue
                progressed = self._advance(p.name, job, accepted, done, finals) or progressed
            if not progressed and not receivers:
                raise VflError(f"job {job} is stuck: no party can make progress (parties done: {sorted(done)})")
        return {p.name: {"job": job, "results": finals[p.name]["results"]} for p in self.recipe.parties}

    def _advance(self, party: str, job: str, accepted: set[str], done: set[str],
                 finals: dict[str, dict[str, Any]]) -> bool:
        """One party accepts the job or steps it; whether any file moved (``done``, ``finals`` updated)."""
        if party not in accepted:
            reports = self.vfl(party, "job", "accept", job, "--json")
            accepted.add(party)
        else:
            reports = self.vfl(party, "step", "--job", job, "--json")
        progressed = False
        for r in reports:
            progressed = progressed or bool(r["sent"] or r["received"])
            if r["done"] and r["job"] == job:
                done.add(party)
                finals[party] = r
            for s in r["sent"]:
                self.on_event(f"{party} -> {s['recipient']}: {s['file']}")
        return progressed


def run_recipe(recipe: Recipe, workdir: Path, *, on_event: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run every stage of ``recipe`` under ``workdir`` and write ``workdir/report.json``."""
    runner = Runner(recipe, workdir, on_event)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    runner.setup()
    timings["setup"] = round(time.perf_counter() - t0, 3)
    report: dict[str, Any] = {
        "recipe": recipe.name,
        "protocol": recipe.protocol,
        "parties": [{"name": p.name, "role": p.role} for p in recipe.parties],
        "metrics": {},
    }
    for stage in recipe.stages():
        t = time.perf_counter()
        views = runner.run_stage(stage)
        timings[stage.name] = round(time.perf_counter() - t, 3)
        active_view = views[recipe.active.name]
        results = active_view.get("results", {})
        report.setdefault("jobs", {})[stage.name] = active_view["job"]
        if "metrics" in results:
            report["metrics"] = results["metrics"]
        for key in ("split", "history", "model", "node_weights", "privacy"):
            if key in results:
                report[key] = results[key]
        if stage.protocol == "psi":
            report["alignment"] = alignment_summary(views)
        on_event(f"stage {stage.name} done in {timings[stage.name]:.1f} s")
    last_job = report["jobs"][recipe.stages()[-1].name]
    report.update(party_summaries(runner, last_job))
    runner.vfl(recipe.active.name, "report", last_job, "--out", str(workdir / "report.html"))
    report["report_html"] = str(workdir / "report.html")
    timings["total"] = round(time.perf_counter() - t0, 3)
    report["timings_s"] = timings
    report["exchanges"] = runner.exchanges
    report["bytes_exchanged"] = runner.bytes_exchanged
    report["vfl_processes"] = runner.commands
    (workdir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def party_summaries(runner: Runner, job: str) -> dict[str, Any]:
    """Each party's own data facts for ``job`` (its data file's hash, its columns and their
    encoding), its ``vfl audit verify`` result, and what the loss figures are.

    A recipe runs every party on one machine, so its report.json may show each party's own
    facts side by side; no party's report.html shows another's.
    """
    from vfl_cli.protocol.registry import loss_label
    from vfl_cli.report import audit_summary, data_summary
    from vfl_cli.report_scorecard import scorecard_summary
    from vfl_cli.workspace import Workspace

    data, audit = {}, {}
    for p in runner.recipe.parties:
        ws = Workspace(runner.ws(p.name))
        data[p.name] = data_summary(ws, job)
        audit[p.name] = audit_summary(ws)
    sizes = {d["intersection_size"] for d in data.values()} - {None}
    params = {k: v for k, v in runner.recipe.tables.get("train", {}).items()}
    out: dict[str, Any] = {"data": data, "audit": audit,
                           "loss_names": {"train.loss": loss_label(runner.recipe.protocol, params),
                                          "test.log_loss":
                                              "test log-loss (cross-entropy of the predicted probability)"}}
    if len(sizes) == 1:
        out["intersection_size"] = sizes.pop()
    cards = {p.name: scorecard_summary(Workspace(runner.ws(p.name)), job) for p in runner.recipe.parties}
    if any(cards.values()):  # a scorecard recipe: each party's own points table, the score histogram
        out["scorecard"] = {name: c for name, c in cards.items() if c is not None}
    from vfl_cli.report_trees import job_tree_summary

    forest = {p.name: job_tree_summary(Workspace(runner.ws(p.name)), job) for p in runner.recipe.parties}
    if any(forest.values()):  # boosted trees: loss per round, each party's splits (and A's gains)
        out["trees"] = {name: t for name, t in forest.items() if t is not None}
    return out


def alignment_summary(views: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Intersection size and each party's keyed fingerprint, from its own alignment result.

    The fingerprint is a MAC under a key only the aligned parties hold (never a plain hash of the
    ids, which a reader of the report could test a guessed intersection against).
    """
    per_party = {name: v["results"] for name, v in views.items()}
    sizes = {r.get("intersection_size") for r in per_party.values()}
    first = next(iter(per_party.values()))
    return {
        "intersection_size": first.get("intersection_size") if len(sizes) == 1 else sorted(sizes),
        "fingerprint": {name: r.get("fingerprint") for name, r in per_party.items()},
    }


#: Protocols whose finished job has metrics for the proposer ('vfl evaluate').
EVALUATED = tuple(protocol_names(evaluated=True))


def _script_head(recipe: Recipe, p: PartySpec) -> list[str]:
    """Set up the party's workspace, swap cards through the exchange folder, name the folders."""
    q = shlex.quote
    others = [o.name for o in recipe.parties if o.name != p.name]
    init = (f'$VFL init "$WORK/{p.name}" --name {q(p.name)} --role {p.role} --data {q(str(p.data))} '
            f"--id-column {q(p.id_column)}")
    if p.label_column:
        init += f" --label-column {q(p.label_column)}"
    init += "".join(f" {q(a)}" for a in p.init_options)
    lines = [
        "#!/bin/sh",
        f"# Recipe {recipe.name} ({recipe.protocol}): the commands of {p.name} ({p.role}), on its machine.",
        "# Usage: sh " + f"{p.name}.sh EXCHANGE [WORK]",
        "#   EXCHANGE holds one drop folder per party (to-<party>/): a mounted SFTP, SMB or synced",
        "#   folder shared with the others. WORK is where the workspace goes (default: here).",
        "# Each party runs its own script; each waits for the files it needs, in any start order.",
        "set -eu",
        'VFL=${VFL:-vfl}',
        'mkdir -p "$1"',
        'EXCHANGE=$(cd "$1" && pwd)',
        'WORK=$(cd "${2:-.}" && pwd)',
        "mkdir -p " + " ".join(f'"$EXCHANGE/to-{o.name}"' for o in recipe.parties),
        "",
        "# ----- once: workspace, keys, cards -----",
        init,
        f'cd "$WORK/{p.name}"',
        "$VFL " + " ".join(recipe.keygen_args(p.name)),
    ]
    for o in others:
        lines.append(f'$VFL keys export --out "$EXCHANGE/to-{o}/{p.name}.card" --force')
    for o in others:
        card = f'"$EXCHANGE/to-{p.name}/{o}.card"'
        lines += [f"while [ ! -f {card} ]; do sleep 1; done   # wait for {o}'s card",
                  f"$VFL keys import {card}   # compare its fingerprint with {o} by phone",
                  f'$VFL peers set-drop {q(o)} "$EXCHANGE/to-{o}"']
    lines.append(f'$VFL peers set-pickup "$EXCHANGE/to-{p.name}"')
    return lines


def _proposer_jobs(recipe: Recipe) -> list[str]:
    """The proposer starts each job, then watches until it is done; evaluates and reports."""
    q = shlex.quote
    lines: list[str] = []
    stages = recipe.stages()
    for stage in stages:
        job = f"{recipe.name}-{stage.name}"
        params = " ".join(f"--param {q(f'{k}={json.dumps(v)}')}" for k, v in stage.params.items())
        lines += ["", f"# ----- job {job} ({stage.protocol}) -----",
                  f"$VFL job start --protocol {stage.protocol} --job {job} {params}".rstrip(),
                  f"$VFL watch --until {job} --interval 1"]
        if stage.protocol in EVALUATED:
            lines.append(f"$VFL evaluate {job}")
    last = f"{recipe.name}-{stages[-1].name}"
    lines += ["", "# ----- the report -----", f"$VFL report {last} --out report.html",
              f'echo "{recipe.active.name}: done; report in $WORK/{recipe.active.name}/report.html"']
    return lines


def _responder_jobs(recipe: Recipe) -> list[str]:
    """Any other party accepts exactly this recipe's proposals (a policy) and watches until done."""
    jobs = [f"{recipe.name}-{s.name}" for s in recipe.stages()]
    protocols = sorted({s.protocol for s in recipe.stages()})
    policy = [f'peers = ["{recipe.active.name}"]', "protocols = [" + ", ".join(f'"{x}"' for x in protocols) + "]"]
    lines = ["", "# ----- the jobs: accepted by this policy, run by vfl watch -----",
             "cat > policy.toml <<'EOF'", *policy, "EOF",
             "$VFL watch --policy policy.toml --interval 1 " + " ".join(f"--until {j}" for j in jobs)]
    return lines


def scripts(recipe: Recipe) -> dict[str, str]:
    """One runnable shell script per party (``<party>.sh``), each waiting for its own files.

    Cards and artifacts travel through one drop folder per party under a shared exchange folder;
    the proposer starts each job and waits for it with ``vfl watch --until``; every other party
    accepts the recipe's proposals by a policy. The scripts may start in any order.
    """
    out = {}
    for p in recipe.parties:
        body = _script_head(recipe, p)
        body += _proposer_jobs(recipe) if p.name == recipe.active.name else _responder_jobs(recipe)
        if p.name != recipe.active.name:
            body.append(f'echo "{p.name}: done"')
        out[f"{p.name}.sh"] = "\n".join(body) + "\n"
    return out
