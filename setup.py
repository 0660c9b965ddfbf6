"""Installs the data_workers package: ``pip install -e .`` (extras: ray, demo, bench, test, docs).

The build system is declared in pyproject.toml; ``python -m build`` makes the sdist and
the wheel, and ``make dist-check`` installs the wheel into a new venv and runs it there.
"""

from setuptools import find_packages, setup

# Caffe2's data_parallel_model imports networkx (through memonger).
DEMO = ["tqdm", "Pillow", "scikit-learn", "matplotlib", "networkx"]
BENCH = ["psutil", "matplotlib"]

setup(
    name="data_workers",
    version="0.1.0",
    description="A faster, safer drop-in for Caffe2's data_workers / parallel_workers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    packages=find_packages(include=["data_workers", "data_workers.*"]),
    package_data={"data_workers": ["py.typed"]},
    # 3.8+: os.memfd_create, typing.Protocol. torch 1.10.2 has wheels up to 3.9 only.
    python_requires=">=3.8,<3.10",
    install_requires=[
        "torch==1.10.2",  # the last release whose wheels carry Caffe2's Python bindings
        "numpy<1.24",
        "protobuf<4",
        "future",
        "six",
        # process workers send fetch_fun by value (lambdas, closures, the script's own)
        "cloudpickle>=3.0",
        # torch 1.10.2 imports pkg_resources at start-up; setuptools 81 removed it.
        "setuptools<81",
    ],
    extras_require={
        "ray": ["ray[data]==2.51.2"],
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
    ],
)
