"""Checks of the numbers users pass to the public entry points.

One wording and one rule everywhere (``init_data_input_workers``,
``reset_data_input``, ``parallel_workers.init_workers``, ``ShardedSource``,
``RayDataSource``):

* a count is any integral number (``int``, ``np.int64``, anything with
  ``__index__``) except ``bool``, which Python makes an ``int`` but nobody
  means as one; it is stored as a plain ``int``;
* a duration is any real number except ``bool``, stored as a ``float``;
* a value of the wrong type is a ``TypeError``, a value out of range a
  ``ValueError``; both name the parameter.

Caffe2-free, so modules loaded in worker processes can use it.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Iterable, List, Literal, Optional, Sequence, overload

__all__ = ["check_int", "check_positive_int", "check_positive_seconds", "check_batch_columns"]


def check_int(name: str, value: Any, *, minimum: Optional[int] = None) -> int:
    """``value`` as a plain ``int``.

    Raises:
        TypeError: ``value`` is a ``bool`` or not integral (``"2"``, ``2.0``).
        ValueError: ``value`` is below ``minimum``.
    """
    if isinstance(value, bool):
        raise TypeError("%s must be an int, got the bool %r" % (name, value))
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError("%s must be an int, got %s %r"
                        % (name, type(value).__name__, value)) from None
    if minimum is not None and number < minimum:
        raise ValueError("%s must be an int >= %d, got %r" % (name, minimum, value))
    return number


@overload
def check_positive_int(name: str, value: Any, *, or_none: Literal[False] = ...) -> int: ...


@overload
def check_positive_int(name: str, value: Any, *, or_none: bool) -> Optional[int]: ...


def check_positive_int(name: str, value: Any, *, or_none: bool = False) -> Optional[int]:
    """``value`` as a plain ``int`` >= 1 (or None, if ``or_none`` and it is None).

    Raises:
        TypeError: not an integral number (or None, if ``or_none``), or a ``bool``.
        ValueError: an integral number below 1.
    """
    if or_none and value is None:
        return None
    if isinstance(value, bool) or not _is_integral(value):
        raise TypeError("%s must be a positive int%s, got %s %r"
                        % (name, " or None" if or_none else "", type(value).__name__, value))
    number = operator.index(value)
    if number < 1:
        raise ValueError("%s must be a positive int%s, got %r"
                         % (name, " or None" if or_none else "", value))
    return number


@overload
def check_positive_seconds(name: str, value: Any, *, or_none: Literal[False] = ...) -> float: ...


@overload
def check_positive_seconds(name: str, value: Any, *, or_none: bool) -> Optional[float]: ...


def check_positive_seconds(name: str, value: Any, *, or_none: bool = False) -> Optional[float]:
    """``value`` as a ``float`` > 0; ``inf`` is allowed (or None, if ``or_none``).

    Raises:
        TypeError: not a real number (or None, if ``or_none``), or a ``bool``.
        ValueError: zero, negative or NaN.
    """
    if or_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be a positive number of seconds%s, got %s %r"
                        % (name, " or None" if or_none else "", type(value).__name__, value))
    seconds = float(value)
    if math.isnan(seconds) or not seconds > 0:
        raise ValueError("%s must be a positive number of seconds%s, got %r"
                         % (name, " or None" if or_none else "", value))
    return seconds


def _is_integral(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_batch_columns(batch_columns: Any, blob_names: Sequence[str]) -> List[int]:
    """One batch column per blob, as plain ``int`` s (all 0 if ``batch_columns`` is None).

    Raises:
        TypeError: not a list of integral numbers.
        ValueError: a negative column, or not one per blob.
    """
    if batch_columns is None:
        return [0] * len(blob_names)
    if isinstance(batch_columns, (str, bytes)) or not isinstance(batch_columns, Iterable):
        raise TypeError("batch_columns must be None or a list of one non-negative int per blob "
                        "%s, got %r" % (list(blob_names), batch_columns))
    columns = [check_int("batch_columns[%d]" % i, c, minimum=0)
               for i, c in enumerate(batch_columns)]
    if len(columns) != len(blob_names):
        raise ValueError("batch_columns must list one non-negative int per blob %s, got %r"
                         % (list(blob_names), batch_columns))
    return columns
