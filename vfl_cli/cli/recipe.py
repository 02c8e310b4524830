"""``vfl recipe``: run a whole multi-party job on one machine, or write one script per party."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vfl_cli import recipes
from vfl_cli.artifacts.io import ensure_writable, replace_atomic, write_new
from vfl_cli.cli._console import emit_json, say, status_console
from vfl_cli.cli._options import force_option, json_option


@click.group()
def recipe() -> None:
    """Run recipes (whole jobs on one machine) or export them as per-party scripts.

    Example:

    \b
        vfl recipe run recipes/breast.toml --workdir /tmp/breast
    """


@recipe.command()
@click.argument("recipe_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the parties' workspaces and report.json: new, or one an earlier run of "
              "this recipe left (cleared first).")
@json_option
def run(recipe_file: Path, workdir: Path, as_json: bool) -> None:
    """Run RECIPE_FILE: one workspace per party, every step a separate vfl process.

    Files move only from one party's outbox to another's inbox. Writes WORKDIR/report.json.

    Example:

    \b
        vfl recipe run recipes/handshake.toml --workdir /tmp/demo
    """
    r = recipes.load_recipe(recipe_file)
    say(f"Running recipe {r.name} ({r.protocol}) with {', '.join(p.name for p in r.parties)}")
    with status_console().status("working...") if not as_json else _nothing():
        report = recipes.run_recipe(r, workdir, on_event=say)
    if as_json:
        emit_json(report)
    _summary(report)
    say(f"Report: {workdir / 'report.json'} and {workdir / 'report.html'}")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _summary(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"recipe {report['recipe']} ({report['protocol']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    if "alignment" in report:
        table.add_row("aligned rows", str(report["alignment"]["intersection_size"]))
    for split, metrics in report.get("metrics", {}).items():
        for k, v in metrics.items():
            table.add_row(f"{split} {k}", f"{v:.4f}" if isinstance(v, float) else str(v))
    for stage, secs in report["timings_s"].items():
        table.add_row(f"time {stage}", f"{secs:.1f} s")
    table.add_row("artifacts exchanged", str(report["exchanges"]))
    table.add_row("bytes exchanged", f"{report['bytes_exchanged']:,}")
    status_console().print(table)


@recipe.command(name="script")
@click.argument("recipe_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the scripts, one <party>.sh per party.")
@force_option
def script_(recipe_file: Path, out_dir: Path, force: bool) -> None:
    """Write one runnable shell script per party of RECIPE_FILE, each run on its party's machine.

    The parties share one exchange folder (a mounted SFTP, SMB or synced folder) holding a drop
    folder per party; each script waits for the files it needs, so they may start in any order.
    The proposer's script starts each job, waits for it with 'vfl watch --until', evaluates and
    writes the report; the others accept the recipe's proposals by a policy file.

    Example:

    \b
        vfl recipe script recipes/demo.toml --out-dir scripts
        hospital$ sh scripts/hospital.sh /mnt/exchange      lab$ sh scripts/lab.sh /mnt/exchange
    """
    files = recipes.scripts(recipes.load_recipe(recipe_file))
    for name in files:
        ensure_writable(out_dir / name, force=force)
    for name, text in files.items():
        (replace_atomic if force else write_new)(out_dir / name, text.encode())
        (out_dir / name).chmod(0o755)
        say(f"Wrote {out_dir / name}")


COMMANDS = [recipe]
