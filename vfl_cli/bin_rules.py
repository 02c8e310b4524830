"""A party's own binning rules: cut points it gives for its numeric columns, and numeric columns
it wants binned by category.

They are the party's private data, like its cells: kept in its workspace (``binning.json``,
mode 0600), set with ``vfl binning cuts``, and copied into the job.json of a ``woe-binning``
or ``secureboost`` job when the party starts or accepts it (local, like the data file: never in the signed
proposal or in any artifact; a later change does not alter a running job). The job then bins
such a column at exactly these cut points (``method`` and ``bins`` apply to the other columns;
the missing bin is always there), and a column named ``categorical`` by category.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vfl_cli.artifacts.io import pretty_json, read_regular, replace_atomic
from vfl_cli.errors import VflError
from vfl_cli.models.binning import MAX_BINS

if TYPE_CHECKING:
    from vfl_cli.workspace import Workspace

__all__ = ["FILE", "BinRules", "job_rules", "load_rules", "parse_cuts", "save_rules"]

FILE = "binning.json"
#: The protocols that bin with a party's own rules.
USED_BY = ("woe-binning", "secureboost")


@dataclass(frozen=True)
class BinRules:
    """Cut points per numeric column, and the columns binned by category."""

    cuts: dict[str, tuple[float, ...]] = field(default_factory=dict)
    categorical: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.cuts or self.categorical)

    def with_cuts(self, column: str, cuts: tuple[float, ...]) -> BinRules:
        return BinRules({**self.cuts, column: cuts},
                        tuple(c for c in self.categorical if c != column))

    def with_category(self, column: str) -> BinRules:
        rest = {c: v for c, v in self.cuts.items() if c != column}
        return BinRules(rest, tuple(sorted({*self.categorical, column})))

    def without(self, column: str | None) -> BinRules:
        if column is None:
            return BinRules()
        if column not in self.cuts and column not in self.categorical:
            raise VflError(f"column {column!r} has no binning rule; see 'vfl binning cuts show'")
        return BinRules({c: v for c, v in self.cuts.items() if c != column},
                        tuple(c for c in self.categorical if c != column))

    def for_columns(self, columns: list[str]) -> tuple[dict[str, tuple[float, ...]], list[str]]:
        """The cut points and category columns among ``columns`` (others are ignored)."""
        return ({c: v for c, v in self.cuts.items() if c in columns},
                [c for c in self.categorical if c in columns])

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "cuts": {c: list(v) for c, v in sorted(self.cuts.items())},
                "categorical": list(self.categorical)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> BinRules:
        if not data:
            return cls()
        try:
            if data.get("version") != 1:
                raise ValueError("version")
            cuts = {str(c): _checked(str(c), [float(x) for x in v])
                    for c, v in dict(data["cuts"]).items()}
            return cls(cuts, tuple(str(c) for c in data["categorical"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VflError(f"the binning rules ({FILE}) are damaged ({type(exc).__name__}); "
                           "set them again with 'vfl binning cuts'") from None


def _checked(column: str, values: list[float]) -> tuple[float, ...]:
    given = sorted(set(values))
    if not given or not all(math.isfinite(v) for v in given):
        raise VflError(f"column {column!r}: cut points must be finite numbers, like 0,10,20")
    if len(given) + 2 > MAX_BINS:
        raise VflError(f"column {column!r}: at most {MAX_BINS - 2} cut points, not {len(given)}")
    return tuple(given)


def parse_cuts(column: str, text: str) -> tuple[float, ...]:
    """Cut points from ``"0,10,20"`` (any order; repeats dropped).

    Raises:
        VflError: empty, not numbers, not finite, or too many.
    """
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VflError(f"column {column!r}: cut points must be numbers separated by commas, "
                       f"like 0,10,20, not {text[:40]!r}") from None
    return _checked(column, values)


def load_rules(ws: Workspace) -> BinRules:
    path = ws.path(FILE)
    if not path.exists():
        return BinRules()
    try:
        data = json.loads(bytes(read_regular(path, max_bytes=1 << 22)))
    except ValueError:
        raise VflError(f"{path} is not JSON; set the rules again with 'vfl binning cuts'") from None
    return BinRules.from_json(data)


def save_rules(ws: Workspace, rules: BinRules) -> None:
    replace_atomic(ws.path(FILE), pretty_json(rules.to_json()), mode=0o600)


def job_rules(ws: Workspace, protocol: str) -> dict[str, Any]:
    """What a job keeps in its job.json (local) of this party's rules: ``local.bin_rules``."""
    rules = load_rules(ws) if protocol in USED_BY else BinRules()
    return {"local": {"bin_rules": rules.to_json()}} if rules else {}
