"""The Caffe2 sink and the upstream ``data_workers`` API built on it."""
