"""Installs the data_workers package: ``pip install -e .``.

What each part needs (docs/development.md, "The package"):

- the core (``data_workers``: the workers, ``ShardedSource``, ``parallel_workers``):
  CPython 3.9 to 3.13, numpy 1.x or 2.x, cloudpickle; no torch, no Caffe2;
- ``data_workers.torch.Loader``: the ``torch`` extra, any torch from 1.10;
- the Caffe2 drop-in (``data_workers.init_data_input_workers`` and the rest of
  upstream's API): the ``caffe2`` extra, which carries the old pins: torch 1.10.2, the
  last release whose wheels hold Caffe2, so CPython 3.8 or 3.9 and numpy < 1.24;
- the Ray Data source (``data_workers.ray_source``): the ``ray`` extra.

The two locked test environments pin the versions that were tested: requirements.txt
(CPython 3.9, the caffe2 extra) and requirements-py311.txt (CPython 3.11, torch 2.x,
numpy 2.x).  The build system is declared in pyproject.toml; ``make dist-check``
installs the wheel into a new venv of each kind and runs it there.
"""

from setuptools import find_packages, setup

# Caffe2's data_parallel_model imports networkx (through memonger).
DEMO = ["tqdm", "Pillow", "scikit-learn", "matplotlib", "networkx"]
BENCH = ["psutil", "matplotlib"]

# torch 1.10.2 publishes wheels for CPython 3.6 to 3.9 only, so on 3.10+ this extra
# fails to resolve (a loud refusal) rather than installing without Caffe2; no
# environment markers on purpose: a marker would turn that refusal into an install
# that lacks Caffe2 and fails later, at the first init_data_input_workers.
CAFFE2 = [
    "torch==1.10.2",  # the last release whose wheels carry Caffe2's Python bindings
    "numpy<1.24",  # torch 1.10.2's Caffe2 uses np.bool / np.object (removed in 1.24)
    "protobuf<4",  # caffe2_pb2 was generated for protobuf 3
    "future",
    "six",
    # torch 1.10.2 imports pkg_resources at start-up; setuptools 81 removed it.
    "setuptools<81",
]

setup(
    name="data_workers",
    version="0.1.0",
    description="A faster, safer drop-in for Caffe2's data_workers / parallel_workers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    packages=find_packages(include=["data_workers", "data_workers.*"]),
    package_data={"data_workers": ["py.typed"]},
    # 3.8+: os.memfd_create, typing.Protocol.  Tested: 3.9 (the caffe2 extra) and
    # 3.11 (the torch extra with torch 2.x); no upper bound, as pip advises.
    python_requires=">=3.8",
    install_requires=[
        # 1.x and 2.x: the caffe2 extra narrows it to < 1.24, torch 2.x takes 2.x.
        "numpy>=1.19",
        # process workers send fetch_fun by value (lambdas, closures, the script's own)
        "cloudpickle>=3.0",
    ],
    extras_require={
        "torch": ["torch>=1.10"],
        "caffe2": CAFFE2,
        # ray_source uses ray.data's iter_batches / Dataset.split / DataIterator;
        # tested with 2.51.2 (requirements.txt).
        "ray": ["ray[data]>=2.51,<2.52"],
        "demo": DEMO,
        "bench": BENCH,
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "mypy", "build"] + DEMO + BENCH,
        "docs": ["mkdocs", "mkdocs-material"],
    },
    classifiers=[
        "License :: OSI Approved :: BSD License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
