"""Small checks on untrusted values, shared by every layer (parameters, manifests, states).

A bool is an ``int`` to Python, never a count to us: ``True`` epochs is a mistake to refuse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # narrowing for mypy only: no runtime dependency on typing_extensions
    from typing_extensions import TypeIs


def _in(value: Any, low: int | None, high: int | None) -> bool:
    return bool((low is None or value >= low) and (high is None or value <= high))


def whole(value: Any, low: int | None = None, high: int | None = None) -> TypeIs[int]:
    """Whether ``value`` is a Python ``int`` (never a bool) in ``low..high`` (a bound left out:
    unbounded on that side). For values read from JSON: manifests, parameters, job states.

    >>> whole(3, 1), whole(True), whole(2.0), whole(5, 0, 4)
    (True, False, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool) and _in(value, low, high)


def np_whole(value: Any, low: int | None = None, high: int | None = None) -> TypeIs[int | np.integer]:
    """:func:`whole`, numpy integers accepted too (values computed in this process).

    >>> np_whole(np.int64(3), 1), np_whole(np.bool_(True)), whole(np.int64(3))
    (True, False, False)
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        return False
    return _in(value, low, high)
