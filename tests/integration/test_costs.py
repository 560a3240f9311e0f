"""A whole rollout's Firestore bill stays within issue 7's target, with other rollouts in flight.

The harness of bench/firestore_ops.py (pitstop.local.costs): the real engine and Store on the Firestore
emulator, a simulated clock (tick every 60 s, Monitoring lag 180 s), Cloud Run and Monitoring faked;
reads and writes counted at the Firestore client. Counts, not time: the run is deterministic.
"""

from __future__ import annotations

import pytest

from pitstop.local import costs

pytestmark = pytest.mark.emulators


def test_whole_canary_costs_at_most_60_reads_and_40_writes(firestore_clean):
    harness = costs.Harness(firestore_clean.project)
    harness.check()  # a get is 1 read, a commit of 3 writes is 3 writes, an empty query 1 read...

    # One rollout measured with 3 others in flight (all 4 billed apart), and 20 other services registered.
    result = harness.run(4, specs=20, probes=False)

    assert result.unexpected() == []
    assert result.states == {s: "succeeded" for s in result.clean} and len(result.clean) == 4
    bills = {s: result.bill(s) for s in result.clean}
    detail = "\n".join(f"{kind:<10} {op:<17} {collection:<16} {n:.1f}" for kind, op, collection, n in result.by_call())
    for service, bill in bills.items():
        assert bill["reads"] <= costs.TARGET_READS, f"{service}: {bill}\nper whole rollout:\n{detail}"
        assert bill["writes"] <= costs.TARGET_WRITES, f"{service}: {bill}\nper whole rollout:\n{detail}"
    # Registered specs of services that are not built cost nothing.
    assert not [key for key in result.meter.counts if key[1].startswith("other-")]
