"""Which columns of a party's data file a job uses, and the checks made before any alignment.

What ``vfl init`` records is the data file, its id and label columns, how the file is written
(``csv``: separator, decimal mark, encoding, when given) and the party's column choice
(``exclude``, or an explicit ``features`` list), never a frozen copy of the header: the feature
columns are read from the file when a job starts, so a column dropped from the file, or left
out with ``vfl columns --exclude``, is simply not used by the next job. A job keeps the list it
started with (in its own job.json), so changing the choice never disturbs a running job.

Labels written as text (``yes``/``no``) are turned into 1 for ``positive_label`` and 0 for the
other value when the file is read; a label column with more than two text values is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfl_cli.errors import DataError, VflError
from vfl_cli.tables import check_options, read_header, read_table, read_table_chunks
from vfl_cli.tables import near as _near

if TYPE_CHECKING:
    import pandas as pd

    from vfl_cli.workspace import Workspace

MAX_LISTED = 5


def choose_features(columns: list[str], *, id_column: str, label_column: str | None, exclude: list[str],
                    features: list[str] | None, what: str) -> list[str]:
    """The feature columns of a file with header ``columns``, after the party's choice.

    ``features`` (an explicit list) must name columns of the file; ``exclude`` may name columns
    the file no longer has (dropping a column from the file and excluding it agree).

    Raises:
        DataError: an explicit feature is not in the file, or is the id or label column.
    """
    reserved = {id_column, label_column}
    if features is not None:
        for name in features:
            if name in reserved:
                raise DataError(f"{name!r} is the {'id' if name == id_column else 'label'} column of {what}, "
                                "not a feature; leave it out of --features")
            if name not in columns:
                raise DataError(f"{what} has no column {name!r}{_near(name, columns)}; its columns are: "
                                f"{', '.join(columns[:12])}. Choose again with 'vfl columns --features ...' "
                                "or 'vfl columns --all'")
        chosen = list(dict.fromkeys(features))
    else:
        chosen = [c for c in columns if c not in reserved]
    return [c for c in chosen if c not in set(exclude)]


def check_exclusions(columns: list[str], exclude: list[str], *, id_column: str, label_column: str | None,
                     what: str) -> None:
    """Refuse excluding a column the file does not have (a typo) or the id/label column."""
    for name in exclude:
        if name in (id_column, label_column):
            raise DataError(f"{name!r} is the {'id' if name == id_column else 'label'} column of {what}; "
                            "it cannot be excluded")
        if name not in columns:
            raise DataError(f"{what} has no column {name!r} to exclude{_near(name, columns)}; its columns are: "
                            f"{', '.join(columns[:12])}")


def text_columns(df: pd.DataFrame, columns: list[str]) -> dict[str, str]:
    """The columns among ``columns`` holding cells that are not numbers, each with an example cell."""
    import pandas as pd

    out = {}
    for col in columns:
        values = df[col]
        if pd.api.types.is_numeric_dtype(values):
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() & values.notna() & (values.astype(str).str.strip() != "")
        if bad.any():
            out[col] = str(values[bad].iloc[0])
    return out


def refuse_text_columns(df: pd.DataFrame, columns: list[str], *, what: str, fix: str) -> None:
    """One error naming every text column and the command that leaves them out."""
    refuse_text(text_columns(df, columns), what=what, fix=fix)


def refuse_text(text: dict[str, str], *, what: str, fix: str) -> None:
    """:func:`refuse_text_columns` for the text columns found already (column -> example cell)."""
    if not text:
        return
    listed = ", ".join(f"{c!r} (e.g. {v!r})" for c, v in list(text.items())[:MAX_LISTED])
    excludes = " ".join(f"--exclude {c}" for c in text)
    encodes = " ".join(f"--encode {c}=onehot" for c in text)
    raise DataError(f"{what}: column{'s' if len(text) > 1 else ''} {listed} "
                    f"{'are' if len(text) > 1 else 'is'} text, not numbers; leave "
                    f"{'them' if len(text) > 1 else 'it'} out with '{fix} {excludes}', "
                    f"or encode {'them' if len(text) > 1 else 'it'} with '{fix} {encodes}' "
                    "(or ordinal, frequency)")


def label_values(df: pd.DataFrame, label: str, positive: str | None, *, what: str,
                 allow_missing: bool = False) -> pd.Series:
    """The label column as numbers: as written, or 1 for ``positive`` and 0 for the other value.

    ``allow_missing`` (another file of the party, e.g. new rows to score, whose labels may be
    unknown yet): empty cells stay missing, and ``positive`` need not occur.

    Raises:
        DataError: missing labels, text labels without ``positive``, or ``positive`` not a label.
    """
    import numpy as np
    import pandas as pd

    scan = LabelScan(label, positive)
    text, missing, numbers = scan.add(df, 0)
    scan.check(what=what, allow_missing=allow_missing)
    if positive is not None:
        hit = (text == positive).to_numpy(dtype=bool, na_value=False)
        return pd.Series(np.where(missing, np.nan, hit.astype("float64")), index=df.index)
    return numbers.astype("float64")


class LabelScan:
    """The label column's checks (:func:`label_values`) over a file read a chunk at a time.

    Held between chunks: the count and first lines of empty labels, the first cell that is not a
    number, whether ``positive`` was seen, the label's values (the set while it is small, else a
    64-bit hash per distinct value of each chunk, and the five smallest values).
    """

    SMALL = 1000  # distinct values kept as text; past this, hashed (a regression label's numbers)

    def __init__(self, label: str, positive: str | None) -> None:
        self.label, self.positive = label, positive
        self.missing = 0
        self.missing_lines: list[int] = []
        self.not_number: str | None = None
        self.values: set[str] | None = set()
        self.hashed: list[Any] = []
        self.smallest: list[str] = []
        self.positive_seen = False

    def add(self, df: pd.DataFrame, first: int) -> tuple[pd.Series, Any, pd.Series]:
        """Take one chunk (its first row is data row ``first + 1``); return its labels as text,
        the mask of empty ones and the labels as numbers (NaN where not a number)."""
        import heapq

        import pandas as pd

        text = df[self.label].astype("string").str.strip()
        missing = (text.isna() | (text == "")).to_numpy(dtype=bool)
        self.missing += int(missing.sum())
        room = MAX_LISTED + 1 - len(self.missing_lines)
        self.missing_lines += [first + int(i) + 2 for i in missing.nonzero()[0][:room]]
        values = set(text[~missing])
        self.positive_seen = self.positive_seen or self.positive in values
        self.smallest = heapq.nsmallest(MAX_LISTED, set(self.smallest) | values)
        if self.values is not None:
            self.values |= values
            if len(self.values) > self.SMALL:
                self.hashed, self.values = [_distinct_hashes(self.values)], None
        else:
            self.hashed.append(_distinct_hashes(values))
        numbers = pd.to_numeric(text.where(~missing, None), errors="coerce")
        not_numbers = numbers.isna().to_numpy(dtype=bool) & ~missing
        if self.not_number is None and not_numbers.any():
            self.not_number = str(text[not_numbers].iloc[0])
        return text, missing, numbers

    def distinct(self) -> int:
        if self.values is not None:
            return len(self.values)
        import numpy as np

        return len(np.unique(np.concatenate(self.hashed)))

    def check(self, *, what: str, allow_missing: bool = False) -> None:
        """Raise :func:`label_values`'s errors for the chunks taken."""
        label, positive = self.label, self.positive
        if self.missing and not allow_missing:
            rows = ", ".join(map(str, self.missing_lines[:MAX_LISTED]))
            raise DataError(f"{what}: the label column {label!r} is empty in {self.missing} row(s) "
                            f"(lines {rows}{', ...' if self.missing > MAX_LISTED else ''}); fill in or delete "
                            "those rows")
        count, values = self.distinct(), self.smallest  # the values, sorted, as far as they are shown
        if positive is not None:
            if count > 2:
                raise DataError(f"{what}: the label column {label!r} holds {count} different values "
                                f"({', '.join(map(repr, values[:MAX_LISTED]))}); a yes/no label has two")
            if not self.positive_seen and (count == 2 or not allow_missing):
                raise DataError(f"{what}: --positive-label {positive!r} is not a value of the label column "
                                f"{label!r} (its values: {', '.join(map(repr, values[:MAX_LISTED]))})")
            return
        if self.not_number is not None:
            if count == 2:
                raise DataError(f"{what}: the label column {label!r} holds text ({values[0]!r}, {values[1]!r}); "
                                f"say which value is the positive class with --positive-label, e.g. "
                                f"--positive-label {values[1]!r}")
            raise DataError(f"{what}: the label column {label!r} holds {count} different text values "
                            f"(e.g. {self.not_number!r}); a classifier needs two classes, a regression numbers")


def _distinct_hashes(values: set[str]) -> Any:
    import numpy as np
    import pandas as pd

    return np.unique(pd.util.hash_array(np.asarray(sorted(values), dtype=object), categorize=False))


def missing_cells(df: pd.DataFrame, columns: list[str]) -> dict[str, int]:
    """How many cells of each of ``columns`` are empty (only columns with any)."""
    counts = df[columns].isna().sum()
    return {str(c): int(n) for c, n in counts.items() if n}


# ----- a party's configuration -------------------------------------------------------------------
def _csv(config: dict[str, Any]) -> dict[str, str]:
    return dict(config.get("csv") or {})


def read_party_table(config: dict[str, Any], path: Path | None = None) -> pd.DataFrame:
    """A party's data file (or another file of it) read as vfl.json says, labels as numbers."""
    path = path or Path(config["data"])
    df = read_table(path, config["id_column"], **_csv(config))
    label = config.get("label_column")
    if label and label in df.columns:
        other_file = path.resolve() != Path(config["data"]).resolve()  # new rows may lack their labels
        df[label] = label_values(df, label, config.get("positive_label"), what=str(path),
                                 allow_missing=other_file).to_numpy()
    return df


def feature_columns(config: dict[str, Any], path: Path | None = None) -> list[str]:
    """The feature columns a job of this party uses now: the file's header after the party's choice."""
    path = path or Path(config["data"])
    return choose_features(read_header(path, **_csv(config)), id_column=config["id_column"],
                           label_column=config.get("label_column"), exclude=list(config.get("exclude", [])),
                           features=config.get("features"), what=str(path))


def check_rows(memory: int, columns: int) -> int:
    """Rows of a data file :func:`check_data` reads at once under a memory bound of ``memory``
    bytes: the streamed alignment's chunk of ids (:attr:`vfl_cli.protocol.psi_stream.Budget.chunk`,
    about 3 kB per id in flight), fewer for a wide file (about 600 bytes per cell while a chunk is
    parsed and checked)."""
    from vfl_cli.protocol.psi_stream import Budget

    budget = Budget(memory)
    return max(256, min(budget.chunk, budget.usable // (600 * max(1, columns))))


def memory_bound(memory: int | str | None = None) -> int:
    """``memory`` (bytes, or a size such as ``"512MB"``: ``vfl init --memory``, vfl.json's
    ``memory``), else the environment's ``VFL_MEMORY``, else the default bound (2 GB)."""
    import os

    from vfl_cli.protocol.psi_stream import DEFAULT_MEMORY, parse_memory

    if isinstance(memory, int):
        return memory
    value = memory or os.environ.get("VFL_MEMORY")
    return DEFAULT_MEMORY if value in (None, "") else parse_memory(value)


def check_data(data: Path, *, role: str, id_column: str, label_column: str | None,
               csv: dict[str, str | None] | None = None, exclude: list[str] | None = None,
               features: list[str] | None = None, positive_label: str | None = None,
               encode: dict[str, str] | None = None, memory: int | None = None) -> dict[str, Any]:
    """Check a party's data file before it is used, and return what vfl.json keeps about it.

    Checked: the file's format; the id column (present, no empty or repeated ids); the label
    column (present, no empty cells, numbers or two values with ``positive_label``); the chosen
    feature columns (present, numbers only unless encoded: text columns are named with the
    options that leave them out or encode them).

    The file is read :func:`check_rows` rows at a time under the memory bound (``memory``, else
    ``VFL_MEMORY``, else 2 GB: :func:`memory_bound`), never whole; the errors are those of a
    whole read, ids repeated in different chunks included (:class:`vfl_cli.protocol.psi.IdScan`).

    Raises:
        DataError: naming the column and the fix.
    """
    options = check_options(**(csv or {}))
    config: dict[str, Any] = {"data": str(data.resolve()), "id_column": id_column, "label_column": label_column}
    if options:
        config["csv"] = options
    if positive_label is not None:
        if not label_column:
            raise DataError("--positive-label names a value of the label column: give --label-column too")
        config["positive_label"] = positive_label
    columns = read_header(data, **options)
    rows = check_rows(memory_bound(memory), len(columns))
    scan = _scan_data(data, id_column, label_column if label_column in columns else None, positive_label,
                      rows, options)
    if label_column is not None and label_column not in columns:
        raise DataError(f"{data} has no label column {label_column!r}{_near(label_column, columns)}; "
                        f"its columns are: {', '.join(columns[:12])}")
    scan.ids.finish(lambda: ((first + 1, frame[id_column].tolist())
                             for first, frame in read_table_chunks(data, id_column, rows, **options)))
    check_exclusions(columns, exclude or [], id_column=id_column, label_column=label_column, what=str(data))
    chosen = choose_features(columns, id_column=id_column, label_column=label_column, exclude=exclude or [],
                             features=features, what=str(data))
    if not chosen and role == "passive":
        raise DataError(f"{data} has no feature columns besides the id column")
    encode = {c: k for c, k in (encode or {}).items() if k != "none"}
    check_encodings(columns, encode, id_column=id_column, label_column=label_column, what=str(data))
    refuse_text({c: scan.text[c] for c in chosen if c not in encode and c in scan.text}, what=str(data),
                fix="vfl init ...")
    if scan.label is not None:
        scan.label.check(what=str(data))
    if exclude:
        config["exclude"] = list(dict.fromkeys(exclude))
    if features is not None:
        config["features"] = chosen
    if encode:
        config["encode"] = encode
    return config


@dataclass
class _DataScan:
    ids: Any  # vfl_cli.protocol.psi.IdScan
    label: LabelScan | None
    text: dict[str, str] = field(default_factory=dict)  # text column -> its first cell not a number


def _scan_data(data: Path, id_column: str, label_column: str | None, positive_label: str | None, rows: int,
               options: dict[str, str]) -> _DataScan:
    """One pass over the file, ``rows`` rows at a time: what :func:`check_data` checks, gathered."""
    from vfl_cli.protocol.psi import IdScan

    scan = _DataScan(IdScan(id_column), LabelScan(label_column, positive_label) if label_column else None)
    for first, frame in read_table_chunks(data, id_column, rows, **options):
        scan.ids.add(frame[id_column].tolist(), first + 1)
        others = [str(c) for c in frame.columns if c != id_column and c not in scan.text]
        for column, example in text_columns(frame, others).items():
            scan.text[column] = example
        if scan.label is not None:
            scan.label.add(frame, first)
    return scan


def data_notes(config: dict[str, Any]) -> list[str]:
    """What a party should know about its data before a job: missing cells that will be imputed.

    The file is read a chunk at a time under the memory bound, as :func:`check_data` reads it."""
    path = Path(config["data"])
    encoded = set(config.get("encode") or {})  # an empty cell of an encoded column is a category
    counted = [c for c in feature_columns(config) if c not in encoded]
    counts = dict.fromkeys(counted, 0)
    rows = check_rows(memory_bound(config.get("memory")), len(read_header(path, **_csv(config))))
    for _, frame in read_table_chunks(path, config["id_column"], rows, **_csv(config)):
        for column, n in missing_cells(frame, counted).items():
            counts[column] += n
    missing = {c: n for c, n in counts.items() if n}
    if not missing:
        return []
    listed = ", ".join(f"{c}: {n}" for c, n in list(missing.items())[:MAX_LISTED])
    return [(f"{sum(missing.values())} empty cell(s) in {len(missing)} feature column(s) ({listed}"
             f"{', ...' if len(missing) > MAX_LISTED else ''}) will be filled with the column's mean over "
             "the training rows")]


def change_choice(config: dict[str, Any], *, exclude: list[str] = (), include: list[str] = (),  # type: ignore[assignment]
                  features: list[str] | None = None, every: bool = False,
                  encode: dict[str, str] | None = None) -> dict[str, Any]:
    """The party's column choice after ``vfl columns`` options, checked against the file now.

    Returns the new ``exclude``/``features``/``encode`` entries of vfl.json (a key mapped to
    ``None`` is removed). ``every`` resets the column choice, not the encodings.
    """
    path = Path(config["data"])
    header = read_header(path, **_csv(config))
    id_column, label = config["id_column"], config.get("label_column")
    new_exclude = [] if every else [c for c in config.get("exclude", []) if c not in include]
    new_features = None if every else config.get("features")
    if features is not None:
        choose_features(header, id_column=id_column, label_column=label, exclude=[], features=features, what=str(path))
        new_features = list(dict.fromkeys(features))
    elif include and new_features is not None:
        new_features = list(dict.fromkeys([*new_features, *include]))
    check_exclusions(header, list(exclude), id_column=id_column, label_column=label, what=str(path))
    check_exclusions(header, list(include), id_column=id_column, label_column=label, what=str(path))
    new_exclude = list(dict.fromkeys([*new_exclude, *exclude]))
    chosen = choose_features(header, id_column=id_column, label_column=label, exclude=new_exclude,
                             features=new_features, what=str(path))
    if not chosen and config.get("role") == "passive":
        raise DataError(f"that leaves {path} with no feature column; a passive party needs at least one")
    new_encode = dict(config.get("encode") or {})
    check_encodings(header, dict(encode or {}), id_column=id_column, label_column=label, what=str(path))
    for col, kind in (encode or {}).items():
        if kind == "none":
            new_encode.pop(col, None)
        else:
            new_encode[col] = kind
    return {"exclude": new_exclude or None, "features": new_features, "encode": new_encode or None}


def describe(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every column of the party's file: its use (id, label, feature, excluded), type and empty cells."""
    df = read_party_table(config)
    chosen = set(feature_columns(config))
    text = text_columns(df, [str(c) for c in df.columns])
    rows = []
    for col in df.columns:
        name = str(col)
        use = ("id" if name == config["id_column"] else "label" if name == config.get("label_column")
               else "feature" if name in chosen else "excluded")
        rows.append({"column": name, "use": use, "type": "text" if name in text or use == "id" else "number",
                     "encoding": (config.get("encode") or {}).get(name),
                     "empty_cells": int(df[col].isna().sum())})
    return rows


def save_choice(ws: Workspace, **options: Any) -> list[str]:
    """Apply :func:`change_choice` to a workspace's vfl.json (under its lock); return its features now."""
    from vfl_cli.artifacts.io import pretty_json, replace_atomic
    from vfl_cli.jobs import locked
    from vfl_cli.workspace import CONFIG

    with locked(ws):
        config = dict(ws.config)
        for key, value in change_choice(config, **options).items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        replace_atomic(ws.path(CONFIG), pretty_json(config))
        ws.config = config
    return ws.features


def job_features(config: dict[str, Any], *, exclude: list[str], features: list[str] | None) -> list[str]:
    """The feature columns of one job: the party's choice, or ``features``, less ``exclude``.

    Raises:
        DataError: a named column is not in the file, or nothing would be left for a passive party.
    """
    path = Path(config["data"])
    header = read_header(path, **_csv(config))
    id_column, label = config["id_column"], config.get("label_column")
    check_exclusions(header, exclude, id_column=id_column, label_column=label, what=str(path))
    base = feature_columns(config) if features is None else choose_features(
        header, id_column=id_column, label_column=label, exclude=[], features=features, what=str(path))
    chosen = [c for c in base if c not in set(exclude)]
    if not chosen and config.get("role") == "passive":
        raise DataError(f"that leaves {path} with no feature column; a passive party needs at least one")
    return chosen


# ----- encoding text columns per job -------------------------------------------------------------
def parse_encodings(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``COLUMN=KIND`` options as a mapping; KIND ``none`` removes an encoding."""
    from vfl_cli.models.features import ENCODINGS

    out = {}
    for item in items:
        column, sep, kind = item.rpartition("=")
        if not sep or not column.strip() or kind not in (*ENCODINGS, "none"):
            raise DataError(f"--encode takes COLUMN=KIND with KIND one of {', '.join(ENCODINGS)} or none, "
                            f"not {item!r}")
        out[column.strip()] = kind
    return out


def check_encodings(columns: list[str], encode: dict[str, str], *, id_column: str, label_column: str | None,
                    what: str) -> None:
    """Refuse encoding a column the file does not have, or the id or label column."""
    check_exclusions(columns, list(encode), id_column=id_column, label_column=label_column, what=what)


def _aligned(ws: Workspace, alignment: Any) -> pd.DataFrame | None:
    """This party's rows of a finished alignment job, or None (the protocol then says why)."""
    from vfl_cli import jobs
    from vfl_cli.models.features import aligned_rows

    if not isinstance(alignment, str):
        return None
    try:
        info = jobs.load_info(ws, alignment)
        state, _ = jobs.load_state(ws, alignment)
        if info.get("protocol") != "psi" or not state.done:
            return None
        df = ws.read_data(Path(info["data"])) if info.get("data") else ws.read_data()
        return aligned_rows(df, state.arrays, ws.config["id_column"], alignment)
    except VflError:
        return None


def _scores_a_model(protocol: str) -> bool:
    """Whether ``protocol`` scores rows with another job's model (``predict``, a tree predictor):
    its job then uses that model's columns and encoders."""
    from vfl_cli.protocol.registry import REGISTRY

    return any(entry.predictor == protocol for entry in REGISTRY.values())


def job_columns(ws: Workspace, protocol: str, params: dict[str, Any], *, features: list[str] | None = None,
                encode: dict[str, str] | None = None) -> dict[str, Any]:
    """What a job keeps in its job.json about this party's columns: ``features``, ``encoders``
    and ``imputed_cells`` (the empty cells per column of the rows it uses, filled by the job).

    A training job on an alignment fits the party's encoders of its text columns on its own
    training rows (the job's split of the aligned rows); a predict job reuses its model's. The
    column names and categories stay with the party: none of this is in the proposal.
    """
    from vfl_cli import jobs
    from vfl_cli.models.features import Encoders, split_rows

    out: dict[str, Any]
    if _scores_a_model(protocol) and isinstance(params.get("model"), str):
        try:
            model = jobs.load_info(ws, params["model"])
        except VflError:
            return {"features": ws.features}
        out = {k: model[k] for k in ("features", "encoders") if k in model}
    else:
        out = {"features": ws.features if features is None else features}
    picked = _aligned(ws, params.get("alignment"))
    if picked is None:
        return out
    woe: dict[str, Any] = {}
    if params.get("binning"):  # each party selects and WOE-encodes its own columns
        from vfl_cli.woe_select import select_columns

        out["features"], woe = select_columns(ws, params, out["features"])
    choice = dict(ws.config.get("encode") or {}) if encode is None else encode
    kinds = {c: k for c, k in choice.items() if c in out["features"] and k != "none" and c not in woe}
    if protocol == "woe-binning":
        kinds = {}  # it bins a text column by category itself: no encoder
    if kinds and "encoders" not in out:
        ids = picked[ws.config["id_column"]].astype(str).str.strip().to_numpy(dtype=str)
        split = split_rows(len(picked), float(params.get("test_fraction", 0.2)), int(params.get("seed", 42)),
                           ids=ids)  # the training job's split: drawn from the ids, not their order
        encoders = Encoders.fit(picked.iloc[split.train], kinds)
        out = {"features": encoders.expand(out["features"]), "encoders": encoders.to_json()}
    if woe:
        out["encoders"] = {**out.get("encoders", {}), **woe}
    frame = encode_frame(picked, out.get("encoders"))
    missing = missing_cells(frame, [c for c in out.get("features", []) if c in frame.columns])
    if missing:
        out["imputed_cells"] = missing
    return out


def imputed_line(info: dict[str, Any]) -> str | None:
    """A job's empty cells, as told to its party when the job starts (None when there are none)."""
    missing = info.get("imputed_cells") or {}
    if not missing:
        return None
    listed = ", ".join(f"{c}: {n}" for c, n in list(missing.items())[:MAX_LISTED])
    return (f"{sum(missing.values())} empty cell(s) of this party's rows in job {info.get('job')} ({listed}"
            f"{', ...' if len(missing) > MAX_LISTED else ''}) will be filled with the column's mean over the "
            "training rows")


def encode_frame(df: pd.DataFrame, encoders: dict[str, Any] | None) -> pd.DataFrame:
    """A party's table with a job's encoders applied (unchanged without encoders)."""
    if not encoders:
        return df
    from vfl_cli.models.features import Encoders

    return Encoders.from_json(encoders).transform(df)
