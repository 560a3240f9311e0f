"""Re-binning Monitoring's latency histograms into the one layout samples carry (gcp/metrics.py). Pure."""

from __future__ import annotations

import math
import random

import pytest
from google.api.distribution_pb2 import Distribution

from pitstop.core import stats
from pitstop.core.stats import LATENCY_LAYOUT, Layout
from pitstop.gcp.metrics import MetricsUnavailable, bucket_bounds, percentile, rebin

Options = Distribution.BucketOptions


def exponential(scale: float, growth: float, n: int) -> Options:
    return Options(exponential_buckets=Options.Exponential(scale=scale, growth_factor=growth, num_finite_buckets=n))


def counts_in(options: Options, values: list[float]) -> list[int]:
    """What Monitoring would send for these values: counts per bucket, trailing zeros dropped."""
    kind = options.WhichOneof("options")
    if kind == "exponential_buckets":
        e = options.exponential_buckets
        edges = [e.scale * e.growth_factor ** i for i in range(e.num_finite_buckets + 1)]
    elif kind == "linear_buckets":
        lin = options.linear_buckets
        edges = [lin.offset + lin.width * i for i in range(lin.num_finite_buckets + 1)]
    else:
        edges = list(options.explicit_buckets.bounds)
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[sum(1 for edge in edges if v >= edge)] += 1
    while counts and counts[-1] == 0:
        counts.pop()
    return counts


LATENCIES = [random.Random(7).lognormvariate(4, 0.8) for _ in range(5000)]  # ~55 ms median, heavy tail


def test_the_layout_samples_use_passes_through_unchanged():
    options = exponential(1.0, 1.25, 70)
    counts = counts_in(options, LATENCIES)
    bounds = bucket_bounds(options, len(counts))
    assert rebin(bounds, counts) == tuple(counts) == stats.buckets_of(LATENCIES)
    assert rebin(bounds, counts + [0, 0]) == tuple(counts)  # trailing zeros dropped either way


def test_percentiles_read_in_the_source_layout_match_the_judges():
    counts = list(stats.buckets_of(LATENCIES))
    bounds = bucket_bounds(exponential(1.0, 1.25, 70), len(counts))
    for p in (50, 95, 99):
        assert percentile(bounds, counts, p) == pytest.approx(stats.percentile(tuple(counts), p))
    assert percentile(bounds, [], 99) is None


@pytest.mark.parametrize("options", [
    exponential(1.0, 2.0, 20),  # coarser
    exponential(0.5, 1.1, 140),  # finer, another scale
    exponential(10.0, 1.5, 30),  # nothing under 10 ms is told apart
    Options(linear_buckets=Options.Linear(offset=0.0, width=25.0, num_finite_buckets=80)),
    Options(explicit_buckets=Options.Explicit(bounds=[5, 10, 20, 50, 100, 200, 500, 1000, 2000])),
])
def test_another_layout_is_rebinned_keeping_every_request_and_the_percentiles_within_a_bucket(options):
    counts = counts_in(options, LATENCIES)
    bounds = bucket_bounds(options, len(counts))
    out = rebin(bounds, counts)
    assert sum(out) == len(LATENCIES)
    assert len(out) <= LATENCY_LAYOUT.count + 2 and (not out or out[-1] > 0)
    for p in (50, 99):
        # The re-binned percentile stays inside the source bucket that holds the true one (bucket resolution
        # is all the source had), give or take one bucket of the target layout.
        source = percentile(bounds, counts, p)
        lower, upper = next(b for b in bounds if b[0] <= source <= b[1])
        rebinned = stats.percentile(out, p)
        assert lower / LATENCY_LAYOUT.growth <= rebinned <= upper * LATENCY_LAYOUT.growth


def test_each_source_bucket_lands_at_its_geometric_midpoint():
    options = exponential(1.0, 4.0, 5)  # [1,4) [4,16) [16,64) [64,256) [256,1024)
    counts = [3, 1, 2, 0, 5, 0, 7]  # underflow, five finite, overflow (>= 1024)
    out = rebin(bucket_bounds(options, len(counts)), counts)
    expected = [0] * (LATENCY_LAYOUT.count + 2)
    expected[stats.bucket_index(0.5)] += 3  # underflow [0, 1): half its upper bound
    expected[stats.bucket_index(2.0)] += 1  # sqrt(1*4)
    expected[stats.bucket_index(8.0)] += 2  # sqrt(4*16)
    expected[stats.bucket_index(128.0)] += 5  # sqrt(64*256)
    expected[stats.bucket_index(1024.0)] += 7  # overflow: its lower bound
    while expected[-1] == 0:
        expected.pop()
    assert out == tuple(expected)


def test_an_explicit_layout_starting_above_zero_puts_its_underflow_at_half_its_first_bound():
    options = Options(explicit_buckets=Options.Explicit(bounds=[40.0, 80.0]))
    out = rebin(bucket_bounds(options, 3), [2, 0, 1])
    assert out[stats.bucket_index(20.0)] == 2 and out[stats.bucket_index(80.0)] == 1 and sum(out) == 3


def test_into_another_target_layout():
    coarse = Layout(scale=1.0, growth=2.0, count=20)
    counts = list(stats.buckets_of(LATENCIES))
    out = rebin(bucket_bounds(exponential(1.0, 1.25, 70), len(counts)), counts, coarse)
    assert sum(out) == len(LATENCIES) and len(out) <= coarse.count + 2
    assert abs(math.log2(stats.percentile(out, 50, coarse) / stats.percentile(tuple(counts), 50))) <= 1


def test_more_counts_than_the_layout_has_buckets_is_not_a_distribution_to_trust():
    with pytest.raises(MetricsUnavailable, match="bucket counts"):
        bucket_bounds(exponential(1.0, 2.0, 3), 6)
