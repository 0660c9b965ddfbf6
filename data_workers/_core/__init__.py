"""The engine: an input's pipeline, its lifecycle and its errors.

Imports neither Caffe2 nor torch, and nothing outside ``_core`` (see
``tests/test_layers.py``).
"""
