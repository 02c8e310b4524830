"""Split network specs: parsing, defaults, layer table, refusals, the plaintext reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vfl_cli.errors import VflError
from vfl_cli.models import split_spec as ss
from vfl_cli.models.nn import build_sequential, make_optimizers
from vfl_cli.recipes import load_recipe

TOML = """
[model]
head = "multiclass"
[[model.active]]
type = "dense"
units = 6
[[model.passive]]
type = "dense"
units = 3
mode = "plaintext"
[[model.passive]]
type = "relu"
[model.interactive]
units = 5
mode = "ciphertext"
[[model.top]]
type = "tanh"
[[model.top]]
type = "dense"
units = 4
"""


def test_defaults_when_the_model_is_absent() -> None:
    spec = ss.parse_spec(None)
    assert spec == ss.default_spec()
    assert spec.head == "binary" and spec.outputs == 1 and spec.units == 8
    # a head with no top gets the default top of that head
    assert ss.parse_spec({"head": "regression"}).top == [{"type": "relu"}, {"type": "dense", "units": 1}]


def test_a_spec_file_and_its_layer_table(tmp_path: Path) -> None:
    (tmp_path / "net.toml").write_text(TOML)
    spec = ss.parse_spec(ss.load_spec_file(tmp_path / "net.toml"))
    assert spec.outputs == 4 and spec.units == 5
    rows = spec.layers("bank", "bureau", 7, None)
    assert [(r["party"], r["part"], r["mode"]) for r in rows] == [
        ("bank", "bottom", "plaintext"), ("bureau", "bottom", "plaintext"), ("bureau", "bottom", "plaintext"),
        ("bank+bureau", "interactive", "ciphertext"), ("bank", "top", "plaintext"), ("bank", "top", "plaintext")]
    assert rows[0]["shape"] == [7, 6]
    assert rows[1]["shape"] == [None, 3]  # the passive party's input width is its own business
    assert rows[3]["shape"] == [9, 5]
    # spec -> JSON params -> spec is stable
    assert ss.parse_spec(spec.to_dict()) == spec


def test_a_recipe_may_name_a_spec_file(tmp_path: Path) -> None:
    (tmp_path / "net.toml").write_text(TOML)
    (tmp_path / "r.toml").write_text(
        'model = "net.toml"\n[recipe]\nprotocol = "split-nn"\n'
        '[[party]]\nname = "a"\nrole = "active"\ndata = "a.csv"\nid_column = "id"\nlabel_column = "y"\n'
        '[[party]]\nname = "p"\nrole = "passive"\ndata = "p.csv"\nid_column = "id"\n')
    recipe = load_recipe(tmp_path / "r.toml")
    train = recipe.stages()[1].params
    assert ss.parse_spec(train["model"]).units == 5


@pytest.mark.parametrize("raw, message", [
    ({"passive": [{"type": "lstm"}]}, "passive layers: layer 0: unknown type 'lstm'"),
    ({"active": [{"type": "dense"}]}, "missing field 'units'"),
    ({"top": [{"type": "dense", "units": 3}]}, "the binary head needs 1 output, but the network ends with width 3"),
    ({"head": "multiclass", "interactive": {"units": 4}, "top": [{"type": "dense", "units": 1}]},
     "one output per class"),
    ({"head": "ordinal"}, "unknown head 'ordinal'"),
    ({"passive": [{"type": "relu", "mode": "ciphertext"}]}, "passive layers are plaintext layers"),
    ({"passive": [{"type": "relu", "mode": "secret"}]}, "mode must be plaintext or ciphertext"),
    ({"interactive": {"units": 4, "activation": "relu"}}, "unknown field(s) ['activation']"),
    ({"interactive": {"units": 4, "type": "conv"}}, "type must be dense"),
    ({"passive": {"type": "relu"}}, "must be a list of layers"),
])
def test_bad_specs_name_what_is_wrong(raw: dict, message: str) -> None:
    with pytest.raises(VflError) as err:
        ss.parse_spec(raw)
    assert message in str(err.value)


def test_the_reference_equals_one_network_trained_with_nn() -> None:
    """With no bottoms and no top, the reference is one dense layer on [X_A, X_P] (SGD on both)."""
    rng = np.random.default_rng(0)
    XA, XP = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    y = (XA[:, 0] + XP[:, 1] > 0).astype(float)
    spec = ss.parse_spec({"head": "binary", "interactive": {"units": 1}, "top": []})
    params = {"epochs": 3, "batch_size": 16, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
              "l2": 0.0, "interactive_lr": 0.1, "interactive_momentum": 0.9, "seed": 4}
    model, history = ss.central_fit(spec, XA, XP, y, params)
    from vfl_cli.models.nn import fit
    from vfl_cli.models.optim import make_optimizer

    net = build_sequential([{"type": "dense", "units": 1}], 5)
    W_A, W_P = ss.initial_interactive(spec, 3, 2, 4)
    net.layers[0].W[...] = np.vstack([W_A, W_P])
    def factory() -> Any:
        return make_optimizer("sgd", lr=0.1, momentum=0.9)

    fit(net, "binary", np.hstack([XA, XP]), y, factory, 3, 16, 4, optimizers=make_optimizers(net, factory))
    np.testing.assert_allclose(np.vstack([model.W_A, model.W_P]), net.layers[0].W, atol=1e-12)
    np.testing.assert_allclose(model.b, net.layers[0].b, atol=1e-12)
    assert len(history) == 3


def test_lr_decay_is_an_inverse_time_schedule_on_every_layer_but_w_p() -> None:
    """``lr_decay``: step ``t`` of every party-held layer uses ``lr / (1 + d t)``; the shares of
    ``W_P`` keep ``interactive_lr``; a job stored before the parameter trains at a constant rate."""
    from vfl_cli.protocol.split_nn import DEFAULTS

    assert DEFAULTS["lr_decay"] == 0.1
    params = {**DEFAULTS, "learning_rate": 0.2, "lr_decay": 0.5}
    opt = ss.optimizer_factory(params)()
    rates = []
    for _ in range(4):
        rates.append(opt.learning_rate())
        opt.step(np.zeros(2), np.ones(2))
    np.testing.assert_allclose(rates, [0.2 / (1 + 0.5 * t) for t in range(4)])
    assert ss.interactive_optimizer(params).learning_rate() == params["interactive_lr"]
    older = {k: v for k, v in params.items() if k != "lr_decay"}
    legacy = ss.optimizer_factory(older)()
    legacy.step(np.zeros(2), np.ones(2))
    assert legacy.learning_rate() == 0.2
    assert ss.optimizer_factory({**params, "lr_decay": 0.0})().schedule.name == "constant"

    rng = np.random.default_rng(1)
    XA, XP = rng.normal(size=(80, 3)), rng.normal(size=(80, 2))
    y = (XA[:, 0] + XP[:, 1] > 0).astype(float)
    spec = ss.default_spec()
    base = {**DEFAULTS, "epochs": 6, "validation_fraction": 0.0, "label_protection": 0.0}
    decayed, _ = ss.central_fit(spec, XA, XP, y, base, seeds=(1, 2))
    constant, _ = ss.central_fit(spec, XA, XP, y, {**base, "lr_decay": 0.0}, seeds=(1, 2))
    assert not np.allclose(decayed.bottom_p.get_flat(), constant.bottom_p.get_flat())
