"""The numpy dtypes a Caffe2 blob can hold: the one table the validator and the feed share.

Measured with ``workspace.FeedBlob`` of the Caffe2 in torch 1.10.2 (the test
``tests/test_boundary.py::test_dtype_table_matches_feedblob`` measures it again):

=====================================  ==========================================
numpy dtype                            Caffe2 blob
=====================================  ==========================================
bool, int8, int16, int32, int64,       a tensor of the same type
uint8, uint16, float16, float32,
float64 (native byte order)
object arrays of ``str`` / ``bytes``   a string tensor (``str`` stored as UTF-8)
uint32, uint64, float128, complex,     refused by FeedBlob ("This numpy data type
datetime64, timedelta64, void /        is not supported")
structured
big-endian numeric                     accepted by FeedBlob, but the bytes are read
                                       as little-endian: the values are garbage
``U`` / ``S`` (fixed-width strings)    accepted by FeedBlob as string tensors;
                                       refused here (``.astype(object)`` first):
                                       their width is part of the dtype, so chunks
                                       of one input would disagree and could not
                                       be stacked
object array holding a ``str`` that    refused by FeedBlob ("cannot convert it to
is not UTF-8-encodable (a lone         a string")
surrogate such as ``"\\udc80"``)
object array holding anything else     refused by FeedBlob ("Unsupported python
(int, None, dict)                      object type")
=====================================  ==========================================

Caffe2-free: worker processes apply ``CAFFE2_DTYPE_RULE`` to their output and
unpickle it without importing Caffe2.  ``_caffe2/feed.py`` maps the type names
below to ``core.DataType`` values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._core.validate import DtypeRule

__all__ = ["TENSOR_DTYPES", "CAFFE2_DTYPE_RULE", "SUPPORTED_DTYPES_TEXT", "unsupported_element"]

#: numpy dtype -> name of the ``caffe2.python.core.DataType`` a blob of it holds.
#: Native byte order only: ``np.dtype(">f8")`` is not equal to any key.
TENSOR_DTYPES: dict[np.dtype, str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.float16): "FLOAT16",
    np.dtype(np.float32): "FLOAT",
    np.dtype(np.float64): "DOUBLE",
}


def unsupported_element(item: Any) -> str | None:
    """Why an element of an object array cannot go into a string tensor, or None if it can."""
    if isinstance(item, bytes):
        return None
    if isinstance(item, str):
        if item.isascii():
            return None
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            return "the str %s, which is not valid UTF-8 (%s)" % (ascii(item[:40]), exc.reason)
        return None
    return "an element of type %s" % type(item).__name__


#: What the Caffe2 feed takes; the validator enforces it at the first chunk.
CAFFE2_DTYPE_RULE = DtypeRule(
    holder="a Caffe2 blob", dtypes=frozenset(TENSOR_DTYPES),
    object_arrays="Caffe2 string tensors and may hold only bytes or UTF-8-encodable str",
    object_element=unsupported_element)

#: What error messages say is supported.
SUPPORTED_DTYPES_TEXT = CAFFE2_DTYPE_RULE.supported_text()
