"""The committed sample data is what make_sample_data.py writes, and is split as documented."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
FILES = ("breast_active.csv", "breast_passive.csv")


def _load_script() -> ModuleType:
    script = SAMPLE_DIR / "make_sample_data.py"
    spec = importlib.util.spec_from_file_location("make_sample_data", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    active = pd.read_csv(SAMPLE_DIR / FILES[0], dtype={"id": str})
    passive = pd.read_csv(SAMPLE_DIR / FILES[1], dtype={"id": str})
    return active, passive


def test_script_reproduces_committed_files_byte_for_byte(tmp_path: Path) -> None:
    _load_script().main(["--out", str(tmp_path)])
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name


def test_columns(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    active, passive = frames
    assert list(active.columns[:3]) == ["id", "label", "mean_radius"]
    assert active.shape[1] == 2 + 10
    assert passive.columns[0] == "id"
    assert passive.shape[1] == 1 + 20
    assert "label" not in passive.columns
    assert not set(active.columns[1:]) & set(passive.columns[1:])
    assert set(active["label"]) == {0, 1}
    assert not active.isna().any().any() and not passive.isna().any().any()


def test_ids_unique_well_formed_and_partly_overlapping(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    active, passive = frames
    for frame in (active, passive):
        assert frame["id"].is_unique
        assert frame["id"].str.fullmatch(r"p\d{5}").all()
        assert 0.80 < len(frame) / 569 < 0.90
    both = set(active["id"]) & set(passive["id"])
    assert 0.65 < len(both) / 569 < 0.75
    assert set(active["id"]) - both and set(passive["id"]) - both
    # Rows are shuffled independently: the shared ids do not come in the same order.
    shared_active = [i for i in active["id"] if i in both]
    shared_passive = [i for i in passive["id"] if i in both]
    assert shared_active != shared_passive
    assert shared_active != sorted(shared_active)


def test_values_are_the_raw_source_values(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    active, passive = frames
    row = active.iloc[0]
    source = int(row["id"][1:])
    assert row["mean_radius"] == pytest.approx(data.data[source, 0], rel=1e-9)
    assert row["label"] == 1 - data.target[source]
    row = passive.iloc[0]
    source = int(row["id"][1:])
    assert row["worst_fractal_dimension"] == pytest.approx(data.data[source, 29], rel=1e-9)


# ----------------------------------------------------------------- recipes from a fresh clone
ROOT = SAMPLE_DIR.parent


def test_every_recipe_reads_only_files_inside_the_repository() -> None:
    from vfl_cli.recipes import load_recipe

    for recipe_file in sorted((ROOT / "recipes").glob("*.toml")):
        for party in load_recipe(recipe_file).parties:
            assert party.data.is_file(), f"{recipe_file.name}: {party.data}"
            assert party.data.resolve().is_relative_to(ROOT), f"{recipe_file.name}: {party.data}"


def test_fate_copies_are_listed_with_their_checksums_in_sources() -> None:
    import hashlib

    fate = SAMPLE_DIR / "fate"
    sources = (fate / "SOURCES.md").read_text()
    files = sorted(fate.glob("*.csv"))
    assert files
    for f in files:
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        assert f"{digest}  {f.name}" in sources, f.name
    assert "Apache" in (fate / "LICENSE-FATE-Apache-2.0.txt").read_text()


def test_nothing_reads_data_from_beside_the_repository() -> None:
    needles = ("shared/data", '"shared" / "data"')
    for folder in ("recipes", "tests", "docs"):
        for f in (ROOT / folder).rglob("*"):
            if f.suffix in {".py", ".toml", ".md"} and f.name != "test_sample_data.py":
                text = f.read_text(encoding="utf-8")
                assert not any(n in text for n in needles), f


def test_a_failed_recipe_run_is_rerun_in_the_same_workdir(tmp_path: Path) -> None:
    from conftest import error_line, run

    recipe = (ROOT / "recipes" / "handshake.toml").read_text().replace(
        '"../sample_data/', f'"{SAMPLE_DIR}/').replace("key_bits = 1024", "key_bits = 512")
    good = tmp_path / "handshake.toml"
    good.write_text(recipe)
    bad = tmp_path / "bad.toml"
    bad.write_text(recipe.replace('label_column = "label"', 'label_column = "nope"'))
    work = tmp_path / "w"
    assert "no label column 'nope'" in error_line(run("recipe", "run", str(bad), "--workdir", str(work), ok=False))
    assert any(work.iterdir())
    report = json.loads(run("recipe", "run", str(good), "--workdir", str(work), "--json").stdout)
    assert report["recipe"] == "handshake"
    assert len(list((work / "bank" / "jobs").iterdir())) == 1
    # a folder with the user's own files in it is never cleared
    (work / "notes.txt").write_text("mine")
    assert "notes.txt" in error_line(run("recipe", "run", str(good), "--workdir", str(work), ok=False))
    assert (work / "notes.txt").read_text() == "mine"
