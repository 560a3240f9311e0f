"""The statistical judge (core/stats.py): never a pass without evidence, monotonic in evidence, every
result quoting its test, statistic, confidence, effect size and decision; the bench's corpus is seeded."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitstop.core import stats
from pitstop.core.stats import Settings, Traffic, judge_statistically

S = Settings()
RNG = random.Random(12)
STABLE_MS = [RNG.lognormvariate(4.6, 0.5) for _ in range(5000)]


def traffic(requests: int, errors: int, latencies=None) -> Traffic:
    return Traffic(requests, errors, stats.buckets_of(latencies) if latencies is not None else ())


STABLE = traffic(5000, 25, STABLE_MS)  # 0.5 % errors


def test_no_data_is_inconclusive_never_pass():
    assert judge_statistically(Traffic(0, 0), STABLE).decision == "inconclusive"
    assert judge_statistically(Traffic(0, 0), None).decision == "inconclusive"
    assert judge_statistically(traffic(400, 2, STABLE_MS[:400]), None).decision == "inconclusive"
    assert judge_statistically(traffic(400, 2, STABLE_MS[:400]), Traffic(0, 0)).decision == "inconclusive"


def test_too_few_requests_is_inconclusive():
    few = traffic(20, 0, STABLE_MS[:20])
    j = judge_statistically(few, STABLE)
    assert j.decision == "inconclusive"
    assert {r.test: r.decision for r in j.results}["beta-binomial"] == "inconclusive"
    assert "needed" in j.sentence


@settings(max_examples=60, deadline=None)
@given(requests=st.integers(0, 3000), errors=st.integers(0, 3000), stable_n=st.integers(0, 20000),
       stable_e=st.integers(0, 400))
def test_never_passes_below_min_requests(requests, errors, stable_n, stable_e):
    errors, stable_e = min(errors, requests), min(stable_e, stable_n)
    j = judge_statistically(Traffic(requests, errors), Traffic(stable_n, stable_e))
    if requests < S.min_requests or not stable_n:
        assert j.decision != "pass"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2000), e=st.integers(0, 2000), more=st.integers(1, 200), stable_n=st.integers(1, 20000),
       stable_rate=st.floats(0, 0.05))
def test_more_errors_never_turn_fail_into_pass(n, e, more, stable_n, stable_rate):
    e = min(e, n)
    stable = Traffic(stable_n, round(stable_n * stable_rate))
    rank = {"pass": 0, "inconclusive": 1, "fail": 2}
    before = stats.error_rate_test(Traffic(n, e), stable, S)
    after = stats.error_rate_test(Traffic(n, min(n, e + more)), stable, S)
    assert rank[after.decision] >= rank[before.decision]
    assert after.p >= before.p - 1e-9


@settings(max_examples=40, deadline=None)
@given(n=st.integers(50, 2000), rate=st.floats(0.02, 0.5), scale=st.integers(2, 10), stable_rate=st.floats(0, 0.01))
def test_more_requests_at_a_higher_rate_never_weaken_a_fail(n, rate, scale, stable_rate):
    stable = Traffic(20000, round(20000 * stable_rate))
    before = judge_statistically(Traffic(n, round(n * rate)), stable)
    after = judge_statistically(Traffic(n * scale, round(n * scale * rate)), stable)
    if before.decision == "fail":
        assert after.decision == "fail"


def test_a_clear_error_regression_fails_early_and_a_healthy_canary_passes():
    bad = judge_statistically(traffic(412, 13, STABLE_MS[:412]), Traffic(9870, 10, STABLE.latency_buckets))
    assert bad.decision == "fail" and "beta-binomial" in bad.sentence
    rng = random.Random(3)
    more = [rng.lognormvariate(4.6, 0.5) for _ in range(20000)]
    healthy = judge_statistically(traffic(5000, 24, STABLE_MS), traffic(20000, 100, more))
    assert healthy.decision == "pass", healthy.sentence


def test_identical_latency_distributions_never_fail():
    for start in range(0, 4000, 500):
        same = traffic(500, 2, STABLE_MS[start:start + 500])
        assert stats.latency_test(same, STABLE, S).decision != "fail"
    assert stats.latency_test(STABLE, STABLE, S).decision == "pass"


def test_a_shifted_latency_distribution_fails_and_a_tiny_shift_does_not():
    slower = traffic(400, 2, [ms * 1.5 for ms in STABLE_MS[:400]])
    r = stats.latency_test(slower, STABLE, S)
    assert r.decision == "fail" and r.effect >= S.allowed_effect and r.p < 1 - S.confidence
    # With many requests, a 2 % slowdown is significant but below the allowed effect: not a rollback.
    many = traffic(5000, 0, [ms * 1.02 for ms in STABLE_MS])
    assert stats.latency_test(many, STABLE, S).decision != "fail"


def test_mann_whitney_from_buckets_matches_scipy_on_expanded_data():
    from scipy.stats import mannwhitneyu

    a, b = stats.buckets_of([ms * 1.2 for ms in STABLE_MS[:300]]), stats.buckets_of(STABLE_MS[300:1300])
    expand = lambda counts: [i for i, c in enumerate(counts) for _ in range(c)]  # noqa: E731
    u, z, effect, _ = stats.mann_whitney(a, b)
    ref = mannwhitneyu(expand(a), expand(b), alternative="greater", use_continuity=False, method="asymptotic")
    assert u == pytest.approx(ref.statistic)
    assert 0.5 * __import__("math").erfc(z / 2 ** 0.5) == pytest.approx(ref.pvalue, rel=1e-6)
    assert effect == pytest.approx(u / (300 * 1000))


def test_hard_limits_still_fail_on_their_own():
    # An error rate far over 5 % fails even when stable is as bad (no relative regression).
    both_bad = judge_statistically(traffic(1000, 200, STABLE_MS[:1000]), Traffic(5000, 1000, STABLE.latency_buckets))
    assert both_bad.decision == "fail" and "hard limit" in both_bad.sentence
    assert {r.test: r.decision for r in both_bad.results}["beta-binomial"] != "fail"
    # A p99 over 1000 ms fails though stable is as slow.
    slow = [ms * 10 for ms in STABLE_MS]
    j = judge_statistically(traffic(1000, 0, slow[:1000]), traffic(5000, 0, slow))
    assert j.decision == "fail" and "p99 latency" in j.sentence and "hard limit" in j.sentence
    # 10 errors in 12 requests are already a verdict; 1 in 2 is not.
    assert judge_statistically(Traffic(12, 10), STABLE).decision == "fail"
    assert judge_statistically(Traffic(2, 1), STABLE).decision == "inconclusive"


def test_the_sentence_names_test_statistic_confidence_effect_and_decision():
    j = judge_statistically(traffic(412, 13, STABLE_MS[:412]), Traffic(9870, 10, STABLE.latency_buckets))
    rate = {r.test: r for r in j.results}["beta-binomial"]
    assert rate.decision == "fail" and rate.effect == pytest.approx((13 / 412) / (10 / 9870))
    for part in ("error rate 3.2 % vs stable 0.1 %", "×31", "P(canary worse by > 40% + 0.05 pt) = 1.0000",
                 "≥ 0.99", "beta-binomial, 412 vs 9,870 requests", "→ fail"):
        assert part in rate.sentence, (part, rate.sentence)
    lat = stats.latency_test(traffic(400, 0, [ms * 1.5 for ms in STABLE_MS[:400]]), STABLE, S)
    for part in ("Mann–Whitney U =", "z =", "canary slower in", "of request pairs", "allowed 60%", "→ fail"):
        assert part in lat.sentence, (part, lat.sentence)
    assert lat.confidence == 0.99 and lat.statistic == "z"


def test_buckets_follow_the_monitoring_layout():
    assert stats.buckets_of([0.5, 1.0, 1.24, 1.25, 2000.0]) [:3] == (1, 2, 1)
    assert stats.percentile(stats.buckets_of([100.0] * 100), 99) == pytest.approx(100, rel=0.25)
    assert stats.percentile((), 99) is None


def test_scipy_is_not_imported_with_the_module():
    code = "import sys, pitstop.core.stats; print('scipy' in sys.modules, 'numpy' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------- the bench's corpus

def _bench():
    path = Path(__file__).resolve().parents[2] / "bench" / "judge.py"
    spec = importlib.util.spec_from_file_location("bench_judge", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_judge"] = module
    spec.loader.exec_module(module)
    return module


def test_the_seeded_corpus_gives_the_same_counts_every_run():
    bench = _bench()

    def counts(seed):
        corpus = bench.make_corpus(seed, healthy=3, per_kind=1)
        return [[(m.canary.requests, m.canary.errors, m.stable.requests, m.stable.errors, m.canary.latency_buckets)
                 for m in bench.simulate(c, seed)] for c in corpus]

    first = counts(7)
    assert first == counts(7)
    assert first != counts(8)
    assert sum(m[0] for c in first for m in c) > 0
    # A canary's traffic does not depend on the corpus size around it.
    assert bench.simulate(bench.make_corpus(7, 3, 1)[0], 7) == bench.simulate(bench.make_corpus(7, 50, 5)[0], 7)


def test_the_bench_judges_the_same_corpus_with_all_judges():
    bench = _bench()
    figures = bench.evaluate(seed=3, healthy=4, per_kind=2)
    assert set(figures) == set(bench.JUDGES)
    for f in figures.values():
        assert sum(f[k]["n"] for k in bench.KINDS) == 2 * len(bench.KINDS)
    assert "false rollbacks / 1,000 healthy" in bench.table(figures, 4)
