"""Checks of the numbers users pass to the public entry points.

One wording and one rule everywhere (``init_data_input_workers``,
``parallel_workers.init_workers``, ``ShardedSource``, ``RayDataSource``): a
``bool`` is not a count or a duration, although Python makes it an ``int``.
Caffe2-free, so modules loaded in worker processes can use it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_positive_int", "check_positive_seconds"]


def check_positive_int(name: str, value: Any, *, or_none: bool = False) -> None:
    """Raise ValueError unless ``value`` is an int >= 1 (or None, if ``or_none``)."""
    if or_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("%s must be a positive int%s, got %r"
                         % (name, " or None" if or_none else "", value))


def check_positive_seconds(name: str, value: Any, *, or_none: bool = False) -> None:
    """Raise ValueError unless ``value`` is an int or float > 0 (or None, if ``or_none``)."""
    if or_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError("%s must be a positive number of seconds%s, got %r"
                         % (name, " or None" if or_none else "", value))
