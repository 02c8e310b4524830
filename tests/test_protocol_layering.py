"""The protocol layer is written one way (issue #13, "Done when"), checked from the source.

Fast and file-only: the modules under ``vfl_cli/protocol`` and ``vfl_cli/crypto`` are parsed
with :mod:`ast` (the registry's protocol classes and the state classes are imported, no job
runs). Each rule has a test that plants a violation in a snippet and sees the checker find it,
so that a checker that quietly finds nothing fails too.

- every protocol in the registry is a :class:`~vfl_cli.protocol.kit.KitProtocol`;
- nothing in ``vfl_cli/protocol`` reads or writes the engine's string-keyed
  :class:`~vfl_cli.protocol.base.JobState` (its ``data`` and ``arrays``) outside the ``load`` and
  ``store`` of a :class:`~vfl_cli.protocol.kit.PartyState` subclass (``base.py``, which defines
  the engine's side, is not scanned);
- no protocol module imports another protocol module's private names (``from m import _x``,
  or ``m._x`` on an imported protocol module);
- no function in ``vfl_cli/protocol`` or ``vfl_cli/crypto`` is longer than 60 lines.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfl_cli.protocol.kit import KitProtocol, PartyState
from vfl_cli.protocol.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "vfl_cli" / "protocol"
CRYPTO = ROOT / "vfl_cli" / "crypto"
MAX_LINES = 60
PACKAGE = "vfl_cli.protocol"

#: base.py defines JobState and the engine-facing Protocol: the engine's side of the contract
NOT_SCANNED_FOR_STATE = {"base.py"}


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


# ----- (a) every registered protocol is on the kit ---------------------------------------------
def on_the_kit(target: str) -> bool:
    """Whether the registry target ``"module:Class"`` is a kit.KitProtocol subclass (imported
    here, lazily, as the registry itself does when a job runs it)."""
    module, cls = target.split(":")
    protocol = getattr(importlib.import_module(module), cls)
    return inspect.isclass(protocol) and issubclass(protocol, KitProtocol)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_protocol_is_a_kit_protocol(name: str) -> None:
    assert on_the_kit(REGISTRY[name].target), f"{name} ({REGISTRY[name].target}) is not a kit.KitProtocol"


def test_a_protocol_off_the_kit_is_found() -> None:
    assert not on_the_kit("vfl_cli.protocol.base:Protocol")
    assert not on_the_kit("vfl_cli.protocol.kit:PartyState")
    assert on_the_kit("vfl_cli.protocol.kit:KitProtocol")


# ----- (b) JobState's data and arrays only in PartyState.load/store ----------------------------
def _annotation_names(node: ast.expr | None) -> set[str]:
    """The names an annotation mentions (``"JobState | None"`` as a string included)."""
    if node is None:
        return set()
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return set()
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _is_job_state(node: ast.expr | None) -> bool:
    return "JobState" in _annotation_names(node)


def _made_job_state(value: ast.expr) -> bool:
    """``JobState(...)`` or ``base.JobState(...)``."""
    return isinstance(value, ast.Call) and _is_job_state(value.func)


def _pairs(target: ast.expr, value: ast.expr) -> Iterator[tuple[ast.expr, ast.expr]]:
    """Target/value pairs of an assignment (``a, b = x, y`` pairwise)."""
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
        for t, v in zip(target.elts, value.elts, strict=True):
            yield from _pairs(t, v)
    else:
        yield target, value


class _Receivers:
    """Which expressions of a module hold a JobState: names annotated ``JobState`` (parameters,
    variables), names and ``self`` attributes assigned one, and class fields annotated
    ``JobState`` (read as ``<anything>.<field>``)."""

    def __init__(self, tree: ast.Module) -> None:
        self.fields = {
            n.target.id
            for c in ast.walk(tree)
            if isinstance(c, ast.ClassDef)
            for n in c.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and _is_job_state(n.annotation)
        }
        self.self_attrs: set[str] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                names = self.names_in(fn)
                for t, v in self._assignments(fn):
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self" \
                            and (_made_job_state(v) or (isinstance(v, ast.Name) and v.id in names)):
                        self.self_attrs.add(t.attr)

    @staticmethod
    def _assignments(fn: ast.AST) -> Iterator[tuple[ast.expr, ast.expr]]:
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    yield from _pairs(target, node.value)

    def names_in(self, fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
        """The local names of ``fn`` that hold a JobState."""
        args = fn.args
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        names = {a.arg for a in every if a is not None and _is_job_state(a.annotation)}
        for node in ast.walk(fn):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _is_job_state(node.annotation):
                names.add(node.target.id)
        for t, v in self._assignments(fn):
            if isinstance(t, ast.Name) and _made_job_state(v):
                names.add(t.id)
        return names

    def holds_state(self, node: ast.expr, names: set[str]) -> bool:
        if isinstance(node, ast.Name):
            return node.id in names
        if isinstance(node, ast.Attribute):
            if node.attr in self.fields:
                return True
            return isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in self.self_attrs
        return False


def _party_state_classes(module: str, tree: ast.Module) -> set[str]:
    """The names of the module's top-level classes that subclass kit.PartyState."""
    loaded = importlib.import_module(module)
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            cls = getattr(loaded, node.name, None)
            if inspect.isclass(cls) and issubclass(cls, PartyState):
                out.add(node.name)
    return out


def _functions(tree: ast.Module) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str | None]]:
    """Every function with the name of the top-level class it is a method of (None otherwise)."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield sub, node.name
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield sub, None


def state_accesses(source: str, module: str, party_states: set[str] | None = None) -> list[str]:
    """``line: text`` of every use of a JobState's ``data`` or ``arrays`` outside the ``load``
    and ``store`` methods of the module's PartyState subclasses."""
    tree = ast.parse(source)
    if party_states is None:
        party_states = _party_state_classes(module, tree)
    receivers = _Receivers(tree)
    lines = source.splitlines()
    found: dict[int, str] = {}
    for fn, owner in _functions(tree):
        if owner in party_states and fn.name in ("load", "store"):
            continue
        names = receivers.names_in(fn)
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and node.attr in ("data", "arrays") \
                    and receivers.holds_state(node.value, names):
                found[node.lineno] = lines[node.lineno - 1].strip()
    return [f"{line}: {text}" for line, text in sorted(found.items())]


@pytest.mark.parametrize(
    "path", [p for p in _modules(PROTOCOL) if p.name not in NOT_SCANNED_FOR_STATE], ids=lambda p: p.name
)
def test_no_string_keyed_job_state_outside_the_state_classes(path: Path) -> None:
    found = state_accesses(path.read_text(), f"{PACKAGE}.{path.stem}")
    assert not found, f"{path.name} touches JobState.data/arrays outside PartyState.load/store:\n" + "\n".join(found)


# ----- (c) no protocol imports another protocol's private names --------------------------------
def _absolute(node: ast.ImportFrom) -> str:
    """The module an ``import from`` names, relative imports resolved inside vfl_cli.protocol."""
    if not node.level:
        return node.module or ""
    parts = PACKAGE.split(".")[: len(PACKAGE.split(".")) - node.level + 1]
    return ".".join([*parts, node.module or ""]).rstrip(".")


def _imports(tree: ast.Module, own: str) -> tuple[dict[str, str], list[str]]:
    """The local names bound to protocol modules, and the private names imported from others."""
    aliases: dict[str, str] = {}  # local name -> protocol module's short name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(node)
            other = base.startswith(PACKAGE + ".") and base.rsplit(".", 1)[-1] != own
            for a in node.names:
                if base == PACKAGE:  # from vfl_cli.protocol import psi
                    aliases[a.asname or a.name] = a.name
                elif other and a.name.startswith("_"):
                    found.append(f"{node.lineno}: from {base} import {a.name}")
        elif isinstance(node, ast.Import):
            aliases.update({a.asname: a.name.rsplit(".", 1)[-1] for a in node.names
                            if a.name.startswith(PACKAGE + ".") and a.asname})
    return aliases, found


def private_imports(source: str, module: str) -> list[str]:
    """``line: name`` of each private name of another protocol module this module imports
    (``from vfl_cli.protocol.m import _x``, relative imports too) or reads (``m._x`` where ``m``
    is an imported protocol module)."""
    tree = ast.parse(source)
    own = module.rsplit(".", 1)[-1]
    aliases, found = _imports(tree, own)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and aliases[node.value.id] != own and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return sorted(set(found), key=lambda s: (int(s.split(":")[0]), s))


@pytest.mark.parametrize("path", _modules(PROTOCOL), ids=lambda p: p.name)
def test_no_protocol_imports_another_protocols_private_names(path: Path) -> None:
    found = private_imports(path.read_text(), f"{PACKAGE}.{path.stem}")
    assert not found, f"{path.name} uses private names of other protocol modules:\n" + "\n".join(found)


# ----- (d) no function over 60 lines ------------------------------------------------------------
def long_functions(source: str, limit: int = MAX_LINES) -> list[str]:
    """``name (lines)`` of every function (methods and nested ones too) longer than ``limit``
    lines, counted from its ``def`` line to its last line (decorators not counted)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                out.append(f"{node.name} at line {node.lineno} ({length} lines)")
    return out


@pytest.mark.parametrize("path", _modules(PROTOCOL) + _modules(CRYPTO), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_function_over_60_lines(path: Path) -> None:
    found = long_functions(path.read_text())
    assert not found, f"{path.parent.name}/{path.name}: functions over {MAX_LINES} lines: " + "; ".join(found)


# ----- the checkers find what they are meant to find --------------------------------------------
PLANTED_STATE = """
from vfl_cli.protocol.base import JobState
from vfl_cli.protocol.kit import PartyState


class Kept(PartyState):
    def store(self, job: JobState) -> None:
        job.data["t"] = 1  # allowed: the state class's own store

    def peek(self, job: JobState) -> int:
        return job.data.get("t")  # planted (line 11)


class Sealed:
    def load(job: "JobState | None") -> bytes:
        return job.arrays["blob"].tobytes()  # planted (line 16): load of no PartyState


def step(ctx, state: JobState, members) -> None:
    state.data.pop("t", None)  # planted (line 20)
    inner = JobState()
    inner.arrays["x"] = 1  # planted (line 22)
    members[0].data[0:8]  # a Member's bytes: not the job state
    other.data["t"]  # unknown receiver: not reported


class Runner:
    def __init__(self, ctx, state: JobState) -> None:
        self.ctx, self.state = ctx, state

    def run(self) -> None:
        self.state.data["t"] += 1  # planted (line 32)
        self.ctx.data["t"]  # the context: not the job state
"""


def test_the_state_check_finds_planted_accesses_and_nothing_else() -> None:
    found = state_accesses(PLANTED_STATE, "planted", party_states={"Kept"})
    assert [int(f.split(":")[0]) for f in found] == [11, 16, 20, 22, 32], found


def test_the_import_check_finds_planted_private_names() -> None:
    source = """
from vfl_cli.protocol.psi import _same_job, encode_ids
from .split_nn import _big
from vfl_cli.protocol import psi
from vfl_cli.protocol.planted import _own_helper
import vfl_cli.protocol.psi as p
from vfl_cli.crypto.paillier import _private_kernel

psi._bar(p._take(psi.encode_ids, psi.__name__))
"""
    found = private_imports(source, "vfl_cli.protocol.planted")
    assert found == [
        "2: from vfl_cli.protocol.psi import _same_job",
        "3: from vfl_cli.protocol.split_nn import _big",
        "9: p._take",
        "9: psi._bar",
    ], found


def test_the_length_check_finds_a_planted_long_function() -> None:
    def method(lines: int) -> str:  # a method of ``lines`` lines, its def line included
        return "class C:\n    def m(self):\n" + "".join(f"        x = {i}\n" for i in range(lines - 1))

    assert long_functions(method(MAX_LINES)) == []
    assert long_functions(method(MAX_LINES + 1)) == [f"m at line 2 ({MAX_LINES + 1} lines)"]
