"""Shared fixtures of the test suite."""
from __future__ import annotations

import pytest


@pytest.fixture
def reliability(record_property):
    """`rec = reliability("2. open CSV quote")`: the counts of one reliability test of issue 23
    (tests/reliability.py), recorded at teardown for `benchmarks/reliability.py`, pass or fail."""
    from reliability import Reliability

    recs = []

    def make(defect: str) -> Reliability:
        recs.append(Reliability(defect))
        return recs[-1]

    yield make
    for rec in recs:
        rec.record(record_property)
