"""The statistical judge: the canary against the stable revision over the same window. Pure.

Two tests, plus today's absolute limits as hard limits (`judge_statistically` combines them):

- **Error rate: Bayesian beta-binomial**, read as a sequential test. Each revision's error rate gets a
  Beta posterior; the canary's prior is the stable revision's observed rate worth `prior_requests`
  requests ("a new revision is presumed like the old one until it shows otherwise"), so one unlucky first
  request on a 1 req/s service is not a verdict. The test computes
  P(p_canary > p_stable·(1+δ) + ε): it fails when that reaches `confidence` (0.99), passes when the
  opposite reaches `pass_confidence` (0.95: a pass only lets the step go on, and every later minute is
  judged again) and the canary served `min_requests`, and is inconclusive in between. Chosen over an SPRT
  because it needs no fixed alternative hypothesis (an SPRT must name "bad" as one rate, while stable
  rates range over 0.1-2 % and failures over ×2..×30), it reads the same on any window so it can be
  asked again every minute, and its statistic is a probability a person understands. Repeated looks
  inflate its false rollback rate; `bench/judge.py` measures that and the defaults are tuned there.
  Deterministic: the posterior is integrated on a fixed grid around the stable posterior's mean.
- **Latency: Mann–Whitney U on histogram buckets** (what Cloud Monitoring returns for
  request_latencies). Requests in one bucket tie; the tie-corrected normal approximation gives a
  one-sided p-value ("the canary is slower"). The effect size is the probability that a canary request
  is slower than a stable one (ties count half): 0.5 is no difference. It fails only when the slowdown is
  significant (p < 1 − confidence) AND large (effect ≥ `allowed_effect`), so with a million requests a
  2 % shift does not roll back; it passes when the effect's upper bound (at `pass_confidence`) is below
  the allowed effect. Fewer than `min_latency_requests` canary requests make no distribution: inconclusive.
  Closed form, no scipy.
- **Hard limits** (today's max_error_rate, max_p99_ms) fail on their own whatever stable does, judged with the
  same confidence on the rate itself (a beta posterior with a prior at the limit), not on a noisy minute.
- No requests, or too few, is inconclusive: never a pass.

Defaults (`Settings`) were tuned with bench/judge.py: ≤ 5 false rollbacks per 1,000 healthy canaries judged
every minute. scipy and numpy are imported inside `prob_worse` and `prob_above` only: cold start does not pay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Decision = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Layout:
    """Exponential histogram buckets as Cloud Monitoring describes them: bucket 0 is the underflow
    (< scale), bucket i in 1..count holds [scale·growth^(i-1), scale·growth^i), bucket count+1 the overflow."""

    scale: float = 1.0
    growth: float = 1.25
    count: int = 70

    def bounds(self, index: int) -> tuple[float, float]:
        lower = 0.0 if index == 0 else self.scale * self.growth ** (index - 1)
        upper = math.inf if index > self.count else self.scale * self.growth ** index
        return lower, upper


# Cloud Run does not publish its layout for request_latencies; the local Monitoring (local/monitoring.py,
# LATENCY_BUCKETS) serves this one: 1 ms .. ~103 min in 70 buckets, each 25 % wider than the one before.
LATENCY_LAYOUT = Layout()


def buckets_of(latencies_ms, layout: Layout = LATENCY_LAYOUT) -> tuple[int, ...]:
    """Raw latencies (ms) -> counts per bucket [underflow, finite..., overflow], trailing zeros dropped."""
    counts = [0] * (layout.count + 2)
    for value in latencies_ms:
        counts[bucket_index(value, layout)] += 1
    while counts and counts[-1] == 0:
        counts.pop()
    return tuple(counts)


def bucket_index(value: float, layout: Layout = LATENCY_LAYOUT) -> int:
    if value < layout.scale:
        return 0
    index = min(int(math.log(value / layout.scale, layout.growth)) + 1, layout.count + 1)
    # log() can land a hair off at a bucket edge: settle on the bucket whose bounds hold the value
    while index > 1 and value < layout.bounds(index)[0]:
        index -= 1
    while index <= layout.count and value >= layout.bounds(index)[1]:
        index += 1
    return index


def percentile(buckets: tuple[int, ...], p: float, layout: Layout = LATENCY_LAYOUT) -> float | None:
    """The p-th percentile as Cloud Monitoring estimates it: linear inside the bucket holding rank p·n."""
    total = sum(buckets)
    if not total:
        return None
    rank, below = p * total / 100, 0
    for index, count in enumerate(buckets):
        if count and below + count >= rank:
            lower, upper = layout.bounds(index)
            return lower if math.isinf(upper) else lower + (upper - lower) * max(rank - below, 0) / count
        below += count
    return None  # unreachable: the ranks add up


@dataclass(frozen=True)
class Traffic:
    """One revision over one window: what Monitoring counted."""

    requests: int
    errors: int
    latency_buckets: tuple[int, ...] = ()  # per bucket of `Settings.layout`; () when not measured

    def __post_init__(self) -> None:
        if self.requests < 0 or self.errors < 0 or self.errors > self.requests:
            raise ValueError(f"bad counts: {self.errors} errors in {self.requests} requests")
        if any(c < 0 for c in self.latency_buckets):
            raise ValueError("a latency bucket cannot hold a negative count")

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class Settings:
    """The judge's knobs. Defaults tuned with bench/judge.py (see its table in the README)."""

    confidence: float = 0.99  # fail at this posterior probability / 1 − p-value
    # Pass at this one: a pass only lets the step continue, and the next minutes are judged again.
    pass_confidence: float = 0.95
    delta: float = 0.4  # the canary may be up to 40 % worse than stable ...
    epsilon: float = 0.0005  # ... plus 0.05 percentage points, before it counts as worse
    prior_requests: int = 100  # weight of the priors: "like stable" (canary), "at the limit" (hard limits)
    allowed_effect: float = 0.6  # latency fails only when the canary is slower in ≥ 60 % of pairs
    min_requests: int = 50  # fewer canary requests never pass
    # Latency needs more: the shape of 50 heavy-tailed latencies is mostly its tail's luck, and judged every
    # minute, such samples rolled back 4 in 1,000 healthy canaries in the bench.
    min_latency_requests: int = 100
    max_error_rate: float = 0.05  # hard limits, as today's judge (Health.max_error_rate, max_p99_ms)
    max_p99_ms: float = 1000.0
    layout: Layout = LATENCY_LAYOUT


@dataclass(frozen=True)
class Result:
    """One test's outcome, with everything the sentence quotes."""

    test: str  # beta-binomial, mann-whitney, max_error_rate, max_p99_ms
    statistic: str  # what `value` is: "P(worse)", "z", "error rate", "p99 ms"
    value: float | None
    p: float | None  # posterior probability (beta-binomial) or p-value (Mann–Whitney)
    confidence: float
    effect: float | None  # rate ratio canary/stable; P(canary slower); None for hard limits
    decision: Decision
    counts: dict = field(default_factory=dict)
    sentence: str = ""


@dataclass(frozen=True)
class Judgment:
    decision: Decision
    sentence: str  # the deciding result's sentence
    results: tuple[Result, ...]


def judge_statistically(canary: Traffic, stable: Traffic | None, settings: Settings = Settings()) -> Judgment:
    """One decision from the hard limits and both tests: any fail fails; all passing passes; else inconclusive."""
    results = (*hard_limits(canary, settings), error_rate_test(canary, stable, settings),
               latency_test(canary, stable, settings))
    failed = [r for r in results if r.decision == "fail"]
    if failed:
        return Judgment("fail", failed[0].sentence, results)
    tests = results[-2:]
    if all(r.decision == "pass" for r in tests):
        return Judgment("pass", "; ".join(r.sentence for r in tests), results)
    waiting = [r for r in tests if r.decision == "inconclusive"]
    return Judgment("inconclusive", waiting[0].sentence, results)


def hard_limits(canary: Traffic, s: Settings) -> tuple[Result, ...]:
    """Today's absolute limits, failing on their own whatever stable does; they never pass anything (the tests do).

    Read with the same confidence as the tests, on the rate itself rather than on its noisy estimate: the
    error rate fails when P(rate > max_error_rate) ≥ confidence, the p99 when P(more than 1 % of requests are
    slower than max_p99_ms) ≥ confidence. A minute of 40 requests at a healthy 2 % shows 3 errors (7.5 %) now and
    then; that is no evidence of 5 %, while 10 errors in 40 requests are."""
    n = canary.requests
    counts = {"canary_requests": n, "canary_errors": canary.errors}
    rate = canary.error_rate
    p = prob_above(canary.errors, n, s.max_error_rate, s.prior_requests) if n else None
    rate_fails = p is not None and p >= s.confidence
    rate_result = Result(
        test="max_error_rate", statistic="error rate", value=rate, p=p, confidence=s.confidence, effect=None,
        decision="fail" if rate_fails else "inconclusive", counts=counts,
        sentence=f"error rate {_pct(rate)} ({canary.errors} errors in {n:,} requests): P(above the hard limit "
                 f"{_pct(s.max_error_rate)}) = {p:.4f} {'≥' if rate_fails else '<'} {s.confidence:g} (beta) → "
                 f"{'fail' if rate_fails else 'no verdict'}" if p is not None else "error rate unmeasured")
    p99 = percentile(canary.latency_buckets, 99, s.layout)
    total = sum(canary.latency_buckets)
    slower = _count_above(canary.latency_buckets, s.max_p99_ms, s.layout)
    # As today's judge: a p99 needs min_requests requests to be one.
    p_slow = prob_above(round(slower), total, 0.01, s.prior_requests) if total >= max(s.min_requests, 1) else None
    p99_fails = p_slow is not None and p_slow >= s.confidence
    counts = {**counts, "canary_slower_than_limit": round(slower)}
    p99_result = Result(
        test="max_p99_ms", statistic="p99 ms", value=p99, p=p_slow, confidence=s.confidence, effect=None,
        decision="fail" if p99_fails else "inconclusive", counts=counts,
        sentence=f"p99 latency {p99:.0f} ms ({round(slower):,} of {total:,} requests over {s.max_p99_ms:.0f} ms): "
                 f"P(p99 above the hard limit) = {p_slow:.4f} {'≥' if p99_fails else '<'} {s.confidence:g} (beta) "
                 f"→ {'fail' if p99_fails else 'no verdict'}" if p_slow is not None else
                 f"p99 latency: {total} requests, {s.min_requests} needed for a p99")
    return rate_result, p99_result


def _count_above(buckets: tuple[int, ...], limit: float, layout: Layout) -> float:
    """Requests slower than `limit`, linear inside the bucket that holds it (as Monitoring's percentiles)."""
    above = 0.0
    for index, count in enumerate(buckets):
        lower, upper = layout.bounds(index)
        if lower >= limit:
            above += count
        elif upper > limit:
            above += count * (1.0 if math.isinf(upper) else (upper - limit) / (upper - lower))
    return above


def error_rate_test(canary: Traffic, stable: Traffic | None, s: Settings) -> Result:
    nc, ec = canary.requests, canary.errors
    ns, es = (stable.requests, stable.errors) if stable else (0, 0)
    counts = {"canary_requests": nc, "canary_errors": ec, "stable_requests": ns, "stable_errors": es}
    worse = f"P(canary worse by > {s.delta:.0%} + {s.epsilon * 100:g} pt)"

    def result(decision: Decision, p: float | None, effect: float | None, sentence: str) -> Result:
        return Result(test="beta-binomial", statistic="P(worse)", value=p, p=p, confidence=s.confidence,
                      effect=effect, decision=decision, counts=counts, sentence=sentence)

    if not nc or not ns:
        which = "the canary" if not nc else "the stable revision"
        return result("inconclusive", None, None, f"error rate: no requests to {which} in the window, "
                                                   f"no comparison (beta-binomial) → inconclusive")
    p = prob_worse(ec, nc, es, ns, s)
    rc, rs = ec / nc, es / ns
    effect = rc / rs if rs else (math.inf if rc else 1.0)
    if p >= s.confidence:
        decision, cmp = "fail", f"= {p:.4f} ≥ {s.confidence:g}"
    elif 1 - p >= s.pass_confidence and nc >= s.min_requests:
        decision, cmp = "pass", f"= {p:.4f}, the opposite {1 - p:.4f} ≥ {s.pass_confidence:g}"
    else:
        decision = "inconclusive"
        cmp = f"= {p:.4f}: under {s.confidence:g} to fail, its opposite under {s.pass_confidence:g} to pass" \
            if nc >= s.min_requests else \
            f"= {p:.4f} < {s.confidence:g}, and {nc} requests, {s.min_requests} needed to pass"
    ratio = "×∞" if math.isinf(effect) else f"×{effect:.2g}"
    return result(decision, p, effect, f"error rate {_pct(rc)} vs stable {_pct(rs)} ({ratio}): {worse} {cmp} "
                                       f"(beta-binomial, {nc:,} vs {ns:,} requests) → {decision}")


def prob_worse(ec: int, nc: int, es: int, ns: int, s: Settings, grid: int = 200) -> float:
    """P(p_canary > p_stable·(1+δ) + ε) under the posteriors: the canary's survival function averaged over the
    stable posterior, on a fixed grid ±8 standard deviations around its mean (deterministic; the integrand is
    smooth, so a few hundred points are exact to far below the confidences used)."""
    import numpy as np  # late: only judging pays for numpy and scipy
    from scipy.special import betaincc, betaln

    a_s, b_s = 1 + es, 1 + ns - es
    prior_rate = es / ns
    a_c = 1 + ec + s.prior_requests * prior_rate
    b_c = 1 + (nc - ec) + s.prior_requests * (1 - prior_rate)
    mean = a_s / (a_s + b_s)
    sd = math.sqrt(a_s * b_s / ((a_s + b_s) ** 2 * (a_s + b_s + 1)))
    lo, hi = max(0.0, mean - 8 * sd), min(1.0, mean + 8 * sd)
    x = lo + (hi - lo) * (np.arange(grid) + 0.5) / grid
    density = np.exp((a_s - 1) * np.log(x) + (b_s - 1) * np.log1p(-x) - betaln(a_s, b_s))
    tail = betaincc(a_c, b_c, np.minimum(1.0, x * (1 + s.delta) + s.epsilon))
    return float(np.clip((density * tail).sum() / density.sum(), 0.0, 1.0))


def prob_above(hits: int, requests: int, limit: float, prior_requests: int) -> float:
    """P(the true share > limit) after `hits` in `requests`, from a prior at the limit worth `prior_requests`
    (undecided at the start, so two requests with one error are no verdict, and 10 errors in 12 are)."""
    from scipy.special import betaincc  # late, as above

    return float(betaincc(1 + hits + limit * prior_requests, 1 + requests - hits + (1 - limit) * prior_requests,
                          limit))


def latency_test(canary: Traffic, stable: Traffic | None, s: Settings) -> Result:
    a, b = canary.latency_buckets, stable.latency_buckets if stable else ()
    na, nb = sum(a), sum(b)
    counts = {"canary_requests": na, "stable_requests": nb}

    def result(decision: Decision, z=None, p=None, effect=None, sentence="") -> Result:
        return Result(test="mann-whitney", statistic="z", value=z, p=p, confidence=s.confidence, effect=effect,
                      decision=decision, counts=counts, sentence=sentence)

    if not na or not nb:
        which = "the canary" if not na else "the stable revision"
        return result("inconclusive", sentence=f"latency: no latencies of {which} in the window, no comparison "
                                               f"(Mann–Whitney) → inconclusive")
    if na < s.min_latency_requests:  # a few requests make no distribution
        return result("inconclusive", sentence=f"latency: {na} canary requests, {s.min_latency_requests} needed to "
                                               f"compare distributions (Mann–Whitney) → inconclusive")
    u, z, effect, se = mann_whitney(a, b)
    p = 0.5 * math.erfc(z / math.sqrt(2))  # one-sided: the canary is slower
    alpha = 1 - s.confidence
    bound = effect + _z(s.pass_confidence) * se  # upper confidence bound of the effect
    if p < alpha and effect >= s.allowed_effect:
        decision, why = "fail", f"p = {p:.2g} < {alpha:.2g} and ≥ the allowed {s.allowed_effect:.0%}"
    elif bound < s.allowed_effect:
        decision, why = "pass", (f"at most {bound:.1%} at {s.pass_confidence:g} confidence, below the allowed "
                                 f"{s.allowed_effect:.0%}")
    else:
        decision = "inconclusive"
        why = f"p = {p:.2g}, up to {bound:.1%} at {s.pass_confidence:g} confidence, allowed {s.allowed_effect:.0%}"
    return result(decision, z, p, effect,
                  f"latency: canary slower in {effect:.1%} of request pairs (Mann–Whitney U = {u:,.0f}, z = {z:.2f}; "
                  f"{why}; {na:,} vs {nb:,} requests) → {decision}")


def mann_whitney(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[float, float, float, float]:
    """U of canary over stable from bucket counts (a request ties with the other revision's requests in its
    bucket), its tie-corrected z, the effect P(canary slower) + ½P(tie), and that effect's standard error."""
    size = max(len(a), len(b))
    a, b = list(a) + [0] * (size - len(a)), list(b) + [0] * (size - len(b))
    na, nb = sum(a), sum(b)
    n = na + nb
    u, below, ties = 0.0, 0, 0
    for ca, cb in zip(a, b):
        u += ca * (below + cb / 2)
        below += cb
        t = ca + cb
        ties += t * t * t - t
    variance = na * nb / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    sd = math.sqrt(max(variance, 0.0))
    mean = na * nb / 2
    z = (u - mean) / sd if sd else 0.0
    return u, z, u / (na * nb), sd / (na * nb)


def _z(confidence: float) -> float:
    """The standard normal quantile, by bisection on erfc (no scipy here)."""
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < confidence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _pct(rate: float | None) -> str:
    return "unmeasured" if rate is None else f"{rate * 100:.2g} %" if rate < 0.1 else f"{rate * 100:.1f} %"
