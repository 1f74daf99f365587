"""The DAQ example's fast-monitoring reactor samples STFs by their sequence number alone."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

FASTMON = Path(__file__).resolve().parents[2] / "examples/daq/actions/daq/fastmon/10_fastmon.py"
_spec = importlib.util.spec_from_file_location("daq_fastmon", FASTMON)
assert _spec is not None and _spec.loader is not None
fastmon = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fastmon)


@given(
    count=st.integers(min_value=1, max_value=2000),
    every=st.integers(min_value=1, max_value=100),
)
def test_a_run_of_n_stfs_has_ceil_n_over_the_period_samples_the_first_among_them(
    count: int, every: int
) -> None:
    """At rate 1/k, STFs 1, 1+k, 1+2k, ... are samples: ceil(N/k) of N, STF 1 always."""
    samples = [s for s in range(1, count + 1) if fastmon.sampled(s, 1 / every)]
    assert len(samples) == math.ceil(count / every)
    assert samples[0] == 1 and all(b - a == every for a, b in itertools.pairwise(samples))


def test_a_rate_of_zero_samples_nothing() -> None:
    """rate 0 (or less) turns fast monitoring off."""
    assert not any(fastmon.sampled(s, rate) for s in range(1, 50) for rate in (0, -0.5))
