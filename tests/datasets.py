"""Moved: the synthetic data sets are ``simprune.testing`` (one copy for the tests, ``simprune
selfcheck`` and the benchmarks). This re-export remains only while tests/test_distance_kernels.py
imports ``tests.datasets``; delete it with that import."""

from simprune.testing import DATASETS as ALL  # noqa: F401
from simprune.testing import (  # noqa: F401
    chain_1d,
    channel_like,
    dead_duplicate,
    gaussian,
    mixture,
    quantised,
)
