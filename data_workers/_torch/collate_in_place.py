"""``default_collate``'s batch, written by a process worker straight into its ring.

Why: a batch of 64 float32 images of 3x224x224 is 38.5 MB.  ``default_collate``
stacks it into freshly allocated memory (shared memory, in a worker process),
and the worker then copied it into the ring the trainer reads: two passes over
the batch and the page faults of fresh memory, every batch.  Here each sample's
leaves are copied once, into ring memory the worker lends (``OutputBuffers``,
``_core/backend.py``), whose pages stay mapped from batch to batch.

Only where the result equals ``default_collate``'s, checked for every batch:

* the probe's template has tensor leaves alone (no strings, no other objects);
* every sample has the probe's structure: a sequence (list or tuple, not a
  named tuple) of the same length where the template has a list, the same
  named-tuple type, a mapping holding the template's keys (the first sample's
  keys in the template's order: ``default_collate`` takes them from it);
* each leaf is, in every sample, a CPU tensor or a numpy array of one dtype and
  one shape, a numpy scalar of one dtype, or a Python bool, int or float
  (collated to bool, int64 and float64), and that dtype is the template's.

Anything else returns None: the caller collates as before, and a bad batch
raises ``default_collate``'s own error there.
"""

from __future__ import annotations

import collections.abc
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch

from .._core.backend import OutputBuffers

__all__ = ["tensor_leaves_only", "collate_into"]

#: ``default_collate``'s dtype for Python scalars.
_SCALAR_DTYPES = {bool: np.dtype(np.bool_), int: np.dtype(np.int64), float: np.dtype(np.float64)}


def tensor_leaves_only(template: tuple[Any, ...]) -> bool:
    """Whether every leaf of ``template`` (``dataset.flatten``) is a tensor, in
    containers a batch of samples can be checked against."""
    kind = template[0]
    if kind == "T":
        return True
    if kind in ("N", "O", "tuple"):
        return False
    children = template[2] if kind in ("dict", "named") else template[1]
    return all(tensor_leaves_only(child) for child in children)


def _gather(template: tuple[Any, ...], sample: Any, columns: list[list[Any]], first: bool) -> bool:
    """Append each leaf of ``sample`` to its column; False where ``sample``
    does not have the template's structure."""
    kind = template[0]
    if kind == "T":
        columns[template[1]].append(sample)
        return True
    if kind == "dict":
        keys = template[1]
        if not isinstance(sample, collections.abc.Mapping) \
                or (first and tuple(sample.keys()) != keys):
            return False
        try:
            values = [sample[key] for key in keys]
        except Exception:  # noqa: BLE001 - default_collate will raise it with its own words
            return False
        return all(_gather(c, v, columns, first) for c, v in zip(template[2], values))
    if kind == "named":
        if type(sample) is not template[1]:
            return False
        children = template[2]
    else:  # "list": default_collate makes a list of any sequence of samples
        if not isinstance(sample, (list, tuple)) or hasattr(sample, "_fields"):
            return False
        children = template[1]
    if len(sample) != len(children):
        return False
    return all(_gather(c, v, columns, first) for c, v in zip(children, sample))


def _column_layout(values: Sequence[Any]) -> tuple[str, np.dtype, tuple[int, ...]] | None:
    """(how to copy, dtype, shape of one sample's leaf) if ``values`` stack as one."""
    head = values[0]
    if isinstance(head, torch.Tensor):
        if head.device.type != "cpu" or head.layout != torch.strided:
            return None
        dtype, shape = head.dtype, head.shape
        if not all(isinstance(v, torch.Tensor) and v.device.type == "cpu"
                   and v.layout == torch.strided and v.dtype == dtype and v.shape == shape
                   for v in values):
            return None
        try:
            return "tensor", head.detach().numpy().dtype, tuple(shape)
        except (TypeError, RuntimeError):  # no numpy twin (bfloat16), or a conjugate view
            return None
    if isinstance(head, np.ndarray):
        if head.dtype.kind not in "biufc":
            return None
        if not all(isinstance(v, np.ndarray) and v.dtype == head.dtype and v.shape == head.shape
                   for v in values):
            return None
        return "array", head.dtype, head.shape
    if isinstance(head, np.generic):
        if head.dtype.kind not in "biufc" or not all(
                isinstance(v, np.generic) and v.dtype == head.dtype for v in values):
            return None
        return "scalars", head.dtype, ()
    dtype = _SCALAR_DTYPES.get(type(head))
    if dtype is None or not all(type(v) is type(head) for v in values):
        return None
    return "scalars", dtype, ()


def collate_into(buffers: OutputBuffers, template: tuple[Any, ...], dtypes: Sequence[str],
                 samples: Sequence[Any], head: np.ndarray) -> list[np.ndarray] | None:
    """``[head, leaves...]`` in lent memory: ``head`` (the message's header row)
    and the leaves ``default_collate(samples)`` would give, in template order;
    None where that is not certain (the module docstring) or no memory was lent.

    ``dtypes``: the template's leaf dtypes (``dataset.leaf_dtypes``).
    """
    if not samples:
        return None
    columns: list[list[Any]] = [[] for _ in dtypes]
    for i, sample in enumerate(samples):
        if not _gather(template, sample, columns, i == 0):
            return None
    plans = []
    for values, dtype in zip(columns, dtypes):
        plan = _column_layout(values)
        if plan is None or plan[1] != np.dtype(dtype):
            return None
        plans.append(plan)
    layouts = [(head.dtype, head.shape)] + [(leaf_dtype, (len(samples),) + shape)
                                            for _, leaf_dtype, shape in plans]
    out = buffers.take(layouts)
    if out is None:
        return None
    out[0][...] = head
    try:
        for dest, values, (how, leaf_dtype, _) in zip(out[1:], columns, plans):
            if how == "tensor":
                for j, value in enumerate(values):
                    dest[j] = value.detach().numpy()
            elif how == "array":
                for j, value in enumerate(values):
                    dest[j] = value
            else:
                dest[...] = np.asarray(values, leaf_dtype)
    except (OverflowError, ValueError, TypeError, RuntimeError):
        # An int beyond int64 (default_collate raises its own error), a tensor
        # numpy cannot view (a lazily negated one): collated the usual way.
        return None
    return out
