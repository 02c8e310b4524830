"""Rich output on stderr; stdout carries only machine-readable results (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False)
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def say(message: str) -> None:
    """A status line on stderr (suppressed by --quiet)."""
    if not _state["quiet"]:
        console.print(message, markup=False, soft_wrap=True)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int | None], Callable[[int], None]]]:
    """Yield a factory of progress callbacks; bars show only on an interactive stderr."""
    if _state["quiet"] or not sys.stderr.isatty():
        yield lambda description, total=None: (lambda n: None)
        return
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
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
