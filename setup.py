"""Installs the data_workers package: ``pip install -e .`` (extras: ray, demo, test)."""

from setuptools import find_packages, setup

setup(
    name="data_workers",
    version="0.1.0",
    description="A faster, safer drop-in for Caffe2's data_workers / parallel_workers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    packages=find_packages(include=["data_workers", "data_workers.*"]),
    package_data={"data_workers": ["py.typed"]},
    python_requires=">=3.7,<3.10",
    install_requires=["torch==1.10.2", "numpy<1.24", "protobuf<4", "future", "six"],
    extras_require={
        "ray": ["ray[data]==2.51.2"],
        "demo": ["tqdm", "Pillow", "scikit-learn", "matplotlib", "networkx"],
        "test": ["pytest", "pytest-timeout", "hypothesis", "psutil", "networkx"],
    },
    classifiers=[
        "License :: OSI Approved :: BSD License",
        "Programming Language :: Python :: 3.9",
    ],
)
