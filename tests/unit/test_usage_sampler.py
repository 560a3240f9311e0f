"""The local Cloud Run's usage sampler (local/revisions.py): limits as Cloud Run reads them, and what one
sampling round records for a real process (this one)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest

from pitstop.local.requestlog import RequestLog
from pitstop.local.revisions import DEFAULT_CPU, DEFAULT_MEMORY_BYTES, Measured, UsageSampler, parse_cpu, parse_memory


@pytest.mark.parametrize(("text", "cpus"), [(None, DEFAULT_CPU), ("", 1.0), ("2", 2.0), ("500m", 0.5),
                                            ("0.25", 0.25)])
def test_cpu_limits(text, cpus):
    assert parse_cpu(text) == cpus


@pytest.mark.parametrize(("text", "size"), [(None, DEFAULT_MEMORY_BYTES), ("512Mi", 512 * 2**20),
                                            ("1Gi", 2**30), ("2G", 2 * 10**9), ("1048576", 2**20),
                                            ("1.5Gi", 3 * 2**29)])
def test_memory_limits(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["lots", "-1Mi", "0", "12Q", "1ki"])
def test_memory_limits_that_are_no_quantity_are_refused(text):
    with pytest.raises(ValueError):
        parse_memory(text)


@pytest.mark.parametrize("text", ["0", "-1", "0m", "fast"])
def test_cpu_limits_that_are_no_quantity_are_refused(text):
    with pytest.raises(ValueError):
        parse_cpu(text)


@dataclass
class _This:
    """This test process, standing in for a revision process."""

    pid: int = os.getpid()
    running: bool = True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the sampler reads /proc")
def test_a_round_records_the_cpu_share_since_the_last_one_and_memory_over_the_limit():
    log = RequestLog()
    measured = Measured("p", "l", "s", "s-1", _This(), cpu_limit=1.0, memory_limit=2**30)  # type: ignore[arg-type]
    sampler = UsageSampler(log, lambda: [measured], clock=lambda: 1000.0)
    sampler.sample()
    assert log.usage_between(0, 2000) == [], "the first round only starts the revision's clock"
    until = time.monotonic() + 0.4
    while time.monotonic() < until:  # busy: a whole core
        pass
    sampler.sample()
    (usage,) = log.usage_between(0, 2000)
    assert (usage.at, usage.project, usage.location, usage.service, usage.revision) == (1000.0, "p", "l", "s", "s-1")
    assert 0.5 <= usage.cpu <= 1.0
    rss = int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS:")).split()[1]) * 1024
    assert usage.memory == pytest.approx(rss / 2**30, rel=0.2)


def test_a_process_that_stopped_is_not_measured():
    log = RequestLog()
    gone = Measured("p", "l", "s", "s-1", _This(running=False))  # type: ignore[arg-type]
    sampler = UsageSampler(log, lambda: [gone])
    sampler.sample()
    sampler.sample()
    assert log.usage_between(0, float("inf")) == []
