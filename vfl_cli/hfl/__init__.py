"""Multi-node (horizontal) training: nodes hold the same columns for different rows.

Pure, file-free cores that a protocol calls (seeds 002 and 003):

* :mod:`~vfl_cli.hfl.worker`: a training worker trains the master model on its rows and returns
  a :class:`~vfl_cli.hfl.worker.Delta` (trained minus snapshot, sample count, statistics).
* :mod:`~vfl_cli.hfl.aggregation`: the parameter server weights the deltas (FedAvg or a learned
  Actor-Critic policy) and adds their weighted sum to the master model.
* :mod:`~vfl_cli.hfl.strategy`: the weightings as Flower-style strategies (one hook per round
  phase), used by the file-based job and the simulation alike.
* :mod:`~vfl_cli.hfl.updates`: the server publishes sparse real-time updates and exact full
  updates; a prediction worker applies them strictly in order.
* :mod:`~vfl_cli.hfl.simulation`: all parties in one process, for tests and benchmarks.

See ``docs/protocols/hfl.md`` for the algorithms and what each party learns.
"""

from vfl_cli.hfl.aggregation import (
    ActorCritic,
    aggregate,
    apply_sum,
    fedavg_weights,
    node_features,
    weighted_sum,
)
from vfl_cli.hfl.model import LOGISTIC_SPEC, init_model, mlp_spec, model_loss, model_predict
from vfl_cli.hfl.simulation import SimulationResult, simulate
from vfl_cli.hfl.strategy import ActorCriticStrategy, FedAvg, Strategy, make_strategy
from vfl_cli.hfl.updates import (
    FullUpdate,
    PredictionReplica,
    SparseUpdate,
    UpdatePublisher,
    full_update,
    realtime_update,
    update_from_bytes,
)
from vfl_cli.hfl.worker import STAT_NAMES, Delta, local_train, node_seed

__all__ = [
    "LOGISTIC_SPEC",
    "STAT_NAMES",
    "ActorCritic",
    "ActorCriticStrategy",
    "Delta",
    "FedAvg",
    "FullUpdate",
    "PredictionReplica",
    "SimulationResult",
    "SparseUpdate",
    "Strategy",
    "UpdatePublisher",
    "aggregate",
    "apply_sum",
    "fedavg_weights",
    "full_update",
    "init_model",
    "local_train",
    "make_strategy",
    "mlp_spec",
    "model_loss",
    "model_predict",
    "node_features",
    "node_seed",
    "realtime_update",
    "simulate",
    "update_from_bytes",
    "weighted_sum",
]
