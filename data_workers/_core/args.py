"""Checks of the numbers users pass to the public entry points.

One wording and one rule everywhere (``init_data_input_workers``,
``reset_data_input``, ``parallel_workers.init_workers``, ``ShardedSource``,
``RayDataSource``):

* a count is any integral number (``int``, ``np.int64``, anything with
  ``__index__``) except ``bool``, which Python makes an ``int`` but nobody
  means as one; it is stored as a plain ``int``;
* a duration is any real number except ``bool``, stored as a ``float``;
* a value of the wrong type is a ``TypeError``, a value out of range a
  ``ValueError``; both name the parameter;
* ``dtypes`` (the expected dtype of some or all blobs) is a mapping from
  blob name to anything ``np.dtype`` takes, stored as a tuple with one
  ``np.dtype`` or None per blob.

Caffe2-free, so modules loaded in worker processes can use it.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Literal, overload
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["check_int", "check_positive_int", "check_positive_seconds", "check_batch_columns",
           "check_max_fetch_failures", "check_dtypes"]


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
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
def check_positive_int(name: str, value: Any, *, or_none: bool) -> int | None: ...


def check_positive_int(name: str, value: Any, *, or_none: bool = False) -> int | None:
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
def check_positive_seconds(name: str, value: Any, *, or_none: bool) -> float | None: ...


def check_positive_seconds(name: str, value: Any, *, or_none: bool = False) -> float | None:
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


def check_batch_columns(batch_columns: Any, blob_names: Sequence[str]) -> list[int]:
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


def check_max_fetch_failures(value: Any) -> int | float:
    """``max_fetch_failures`` as an ``int`` >= 0 or a ``float`` in (0, 1)
    (``_core/budget.py``).  Unlike other counts, an integral float (``2.0``) is refused:
    it would read as a fraction.

    Raises:
        TypeError: a ``bool``, or neither an integral nor a real number.
        ValueError: a negative count, or a float outside (0, 1).
    """
    what = ("max_fetch_failures must be an int >= 0 (fetcher exceptions to skip) or a float "
            "in (0, 1) (a fraction of fetch calls), got")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s %s %r" % (what, type(value).__name__, value))
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise ValueError("%s %r" % (what, value))
        return int(value)
    fraction = float(value)
    if math.isnan(fraction) or not 0.0 < fraction < 1.0:
        raise ValueError("%s %r" % (what, value))
    return fraction


def check_dtypes(dtypes: Any, blob_names: Sequence[str]) -> tuple[np.dtype | None, ...] | None:
    """The expected dtype of each blob (None: any), or None if ``dtypes`` is None.

    Args:
        dtypes: None, or a mapping from blob name to a dtype (``np.float32``,
            ``"int32"``, ``np.dtype("f4")``); blobs it leaves out may have any dtype.
        blob_names: the input's blobs, in fetcher output order.

    Raises:
        TypeError: not a mapping, or a value numpy cannot read as a dtype.
        ValueError: a key that is not one of ``blob_names``.
    """
    if dtypes is None:
        return None
    if not isinstance(dtypes, Mapping):
        raise TypeError("dtypes must be None or a dict from blob name to dtype, e.g. "
                        "{%r: np.float32}, got %r" % (blob_names[0], dtypes))
    unknown = [k for k in dtypes if k not in blob_names]
    if unknown:
        raise ValueError("dtypes names %r, which is not one of the blobs %s"
                         % (unknown[0], list(blob_names)))
    expected: list[np.dtype | None] = []
    for name in blob_names:
        if name not in dtypes:
            expected.append(None)
            continue
        if dtypes[name] is None:  # np.dtype(None) would mean float64
            raise TypeError("dtypes[%r] must be a numpy dtype such as np.float32, got None; "
                            "leave the blob out to accept any dtype" % name)
        try:
            expected.append(np.dtype(dtypes[name]))
        except TypeError as exc:
            raise TypeError("dtypes[%r] must be a numpy dtype such as np.float32, got %r (%s)"
                            % (name, dtypes[name], exc)) from exc
    return tuple(expected)
