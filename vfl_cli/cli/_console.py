"""Status on stderr (rich); results (tables, ``--json``) on stdout, full width when piped."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # rich is imported on first use: most vfl processes (a recipe's steps) print
    from rich.console import Console  # nothing and would pay ~0.1 s for it

_consoles: dict[str, Console] = {}


def status_console() -> Console:
    """The stderr console of status lines and progress bars (rich, made on first use)."""
    if "status" not in _consoles:
        from rich.console import Console

        _consoles["status"] = Console(stderr=True, highlight=False)
    return _consoles["status"]


def __getattr__(name: str) -> Any:
    """``console``: :func:`status_console`, for ``from vfl_cli.cli._console import console``."""
    if name == "console":
        return status_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: Width of results written to a file or pipe: rich never truncates a table that fits.
RESULT_WIDTH = 100_000
_state = {"quiet": False}


#: Characters a terminal acts on instead of showing: C0 and C1 controls (ESC starts every ANSI
#: sequence, CSI is U+009B), DEL, line and paragraph separators, zero-width and bidi overrides.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value: object) -> str:
    """An untrusted value as one inert line: every control character (newline, ESC of an ANSI
    sequence, bidi override...) shown as a visible escape such as ``\\n`` or ``\\x1b``.

    For text printed without rich markup (``markup=False``, ``click.echo``, HTML after
    ``html.escape``).
    """
    return _UNSAFE.sub(_visible, str(value))


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe(value: object) -> str:
    """An untrusted value for rich output with markup on: :func:`printable`, then rich markup
    escaped, so ``[bold]`` or ``[/]`` in a received field prints as itself and never fails."""
    from rich.markup import escape

    return escape(printable(value))


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def say(message: str) -> None:
    """A status line on stderr (suppressed by --quiet): one line, whatever values it holds."""
    if not _state["quiet"]:
        status_console().print(printable(message), markup=False, soft_wrap=True)


def result_console() -> Console:
    """A console for results on stdout: full width when piped, so tables are never cut."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(file=sys.stdout, highlight=False)
    # Not a terminal: no colour codes, and wide enough that no column is ever cut to "…".
    return Console(file=sys.stdout, highlight=False, width=RESULT_WIDTH, color_system=None)


def print_result(*renderables: Any) -> None:
    """Print a result (a table, a heading) on stdout; results are never silenced by --quiet."""
    out = result_console()
    for r in renderables:
        out.print(r, soft_wrap=isinstance(r, str))


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int | None], Callable[[int], None]]]:
    """Yield a factory of progress callbacks; bars show only on an interactive stderr."""
    if _state["quiet"] or not sys.stderr.isatty():
        def silent(description: str, total: int | None = None) -> Callable[[int], None]:
            return lambda n: None

        yield silent
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),  # estimated from the rate so far (long alignments, issue #17)
        console=status_console(),
        transient=True,
        # no refresh thread: the PSI workers fork only from a single-threaded process
        auto_refresh=False,
    )
    with bars:

        def factory(description: str, total: int | None = None) -> Callable[[int], None]:
            task = bars.add_task(description, total=total)

            def advance(n: int) -> None:
                bars.advance(task, n)
                bars.refresh()

            return advance

        yield factory
