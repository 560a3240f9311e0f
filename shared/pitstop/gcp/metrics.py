"""Cloud Monitoring adapter: how each revision of a Cloud Run service did over a time window.

The same code talks to GCP and to the local Monitoring (pitstop.local.monitoring);
only the endpoint differs (`PITSTOP_MONITORING_ENDPOINT`). It measures, and
never judges: no traffic comes back as `request_count == 0` with no
latencies ("no data", which the judge must not read as healthy), and an API
failure raises `MetricsUnavailable` (retry, never "the canary failed").

One list call per metric type and window, every revision at once: request_count (grouped by response
class), request_latencies (one DISTRIBUTION per revision: its buckets for the statistical judge, and
p50/p95/p99 estimated from them the way Monitoring's percentile reducers do), container/cpu/utilizations
and container/memory/utilizations (p95 per revision, by Monitoring's REDUCE_PERCENTILE_95), and one per
custom metric of the spec (`custom_values`).

The Monitoring client is imported only when the first query runs: importing
this module stays cheap for a Cloud Function's cold start.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pitstop.core.stats import LATENCY_LAYOUT, Layout, bucket_index

if TYPE_CHECKING:
    from google.cloud.monitoring_v3 import MetricServiceClient

    from pitstop.core.models import CustomMetric

ENDPOINT_ENV = "PITSTOP_MONITORING_ENDPOINT"
REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
CPU_UTILIZATIONS = "run.googleapis.com/container/cpu/utilizations"
MEMORY_UTILIZATIONS = "run.googleapis.com/container/memory/utilizations"
LOG_METRIC_PREFIX = "logging.googleapis.com/user/"
# GCP rejects alignment periods under 60 s; a shorter window still gets one
# 60 s period ending at the window's end (the local Monitoring counts only the
# window itself; on GCP such a window is below the 60 s sampling anyway).
MIN_ALIGNMENT_SECONDS = 60
_PERCENTILES = (50, 95, 99)


class MetricsUnavailable(Exception):
    """Cloud Monitoring could not answer; the health check should be retried, not failed."""


class MetricQueryRefused(Exception):
    """Cloud Monitoring refused a custom metric's query (INVALID_ARGUMENT): asking again will not help, the
    spec must change. Until it does, the metric has no value in any sample, so its condition cannot pass."""

    def __init__(self, metric: str, filter: str, reason: str) -> None:
        self.metric, self.filter, self.reason = metric, filter, reason
        super().__init__(f"Cloud Monitoring refused the query of custom metric {metric!r} (filter: {filter}): "
                         f"{reason}")


@dataclass(frozen=True)
class RevisionHealth:
    revision: str
    request_count: int
    error_count: int  # responses with a 5xx status
    latency_p50_ms: float | None  # None: no requests, so no latency data
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    window_start: datetime
    window_end: datetime
    latency_buckets: tuple[int, ...] | None = None  # counts per bucket of stats.LATENCY_LAYOUT; None: no data
    cpu_utilization: float | None = None  # p95 over the window, 0-1 of the revision's CPU limit; None: no data
    memory_utilization: float | None = None  # p95 over the window, 0-1 of its memory limit
    metrics: Mapping[str, float] = field(default_factory=dict)  # the spec's custom metrics that had a value

    @property
    def has_data(self) -> bool:
        return self.request_count > 0


class Metrics:
    def __init__(self, endpoint: str | None = None, timeout_s: float = 30.0) -> None:
        """endpoint: host:port of a Monitoring gRPC server reached without TLS (the local one);
        None means Google Cloud Monitoring with the default credentials."""
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._client: MetricServiceClient | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Metrics:
        return cls(endpoint=env.get(ENDPOINT_ENV) or None)

    def revision_health(
        self,
        project: str,
        location: str,
        service: str,
        revisions: list[str],
        start: datetime,
        end: datetime,
    ) -> dict[str, RevisionHealth]:
        """Requests, 5xx, latency percentiles and buckets, CPU and memory utilization per revision over (start, end]."""
        query = _window(project, location, service, revisions, start, end)
        if query is None:
            return {}
        counts = {r: [0, 0] for r in revisions}  # revision -> [requests, 5xx]
        for series in self._list(query, query.filter(REQUEST_COUNT), REQUEST_COUNT, "ALIGN_DELTA", "REDUCE_SUM",
                                 ["metric.labels.response_code_class"]):
            revision = series.resource.labels["revision_name"]
            total = sum(point.value.int64_value for point in series.points)
            counts[revision][0] += total
            if series.metric.labels.get("response_code_class") == "5xx":
                counts[revision][1] += total
        latencies = self._latencies(query)
        cpu, memory = self._utilizations(query)
        health = {}
        for r in revisions:
            served = counts[r][0] > 0
            percentiles, buckets = latencies.get(r, ({}, None))
            health[r] = RevisionHealth(
                revision=r,
                request_count=counts[r][0],
                error_count=counts[r][1],
                latency_p50_ms=percentiles.get(50) if served else None,
                latency_p95_ms=percentiles.get(95) if served else None,
                latency_p99_ms=percentiles.get(99) if served else None,
                window_start=start,
                window_end=end,
                latency_buckets=buckets if served else None,
                cpu_utilization=cpu.get(r),
                memory_utilization=memory.get(r),
            )
        return health

    def _utilizations(self, query: _WindowQuery) -> tuple[dict[str, float], dict[str, float]]:
        """CPU and memory p95 per revision; when Monitoring cannot answer for them, none: the errors and latency
        just read must not wait a tick for a resource reading (a revision without one is not judged on it)."""
        try:
            return self._utilization(query, CPU_UTILIZATIONS), self._utilization(query, MEMORY_UTILIZATIONS)
        except MetricsUnavailable as err:
            from pitstop.log import log

            log("WARNING", f"CPU and memory of {query.service} not read: {err}. Judged without them this window.",
                service=query.service)
            return {}, {}

    def custom_values(
        self,
        project: str,
        location: str,
        service: str,
        revisions: list[str],
        start: datetime,
        end: datetime,
        metrics: Sequence[CustomMetric],
        on_refused: Callable[[MetricQueryRefused], None] | None = None,
    ) -> dict[str, dict[str, float]]:
        """revision -> {metric name: value} over (start, end]: each metric's filter AND this service's
        revisions, its aligner over the whole window, its reducer grouped by revision. A revision with no
        point for a metric has no value for it (no data, never zero). One list call per metric.

        A metric whose query Monitoring refuses raises MetricQueryRefused, or, given `on_refused`, is handed
        to it and left without values while the others are read. Any other failure: MetricsUnavailable."""
        query = _window(project, location, service, revisions, start, end)
        values: dict[str, dict[str, float]] = {r: {} for r in revisions}
        if query is None:
            return values
        for metric in metrics:
            try:
                self._custom(query, metric, values)
            except MetricQueryRefused as refused:
                if on_refused is None:
                    raise
                on_refused(refused)
        return values

    def _custom(self, query: _WindowQuery, metric: CustomMetric, values: dict[str, dict[str, float]]) -> None:
        """One custom metric's values into `values`, one list call."""
        from google.cloud import monitoring_v3

        if metric.log_metric is not None:
            # a log-based counter: matching entries per second per revision, as a query's default aligner reads
            base, aligner, reducer = f"metric.type = {_quote(LOG_METRIC_PREFIX + metric.log_metric)}", \
                "ALIGN_RATE", "REDUCE_SUM"
        elif metric.query is not None:
            base, aligner, reducer = metric.query.filter, metric.query.aligner, metric.query.reducer
        else:
            return  # a condition over the built-in values (canary.p99_ms, ...): nothing to read
        # Parenthesised: whatever the spec's filter says (an OR too) stays one clause next to ours.
        text = f"({base}) AND {query.resource_clauses()}"
        if aligner not in monitoring_v3.Aggregation.Aligner.__members__:
            raise MetricQueryRefused(metric.name, text, f"Cloud Monitoring has no aligner {aligner}")
        if reducer not in monitoring_v3.Aggregation.Reducer.__members__:
            raise MetricQueryRefused(metric.name, text, f"Cloud Monitoring has no reducer {reducer}")
        for series in self._list(query, text, f"custom metric {metric.name!r}", aligner, reducer, [],
                                 refused_as=metric.name):
            revision = series.resource.labels.get("revision_name")
            if revision not in values or not series.points:
                continue
            value = _number(series.points[0].value)
            if value is None:
                raise MetricQueryRefused(
                    metric.name, text, f"{aligner} and {reducer} give a distribution, not a number: use a "
                                       f"percentile or mean reducer (e.g. REDUCE_PERCENTILE_99)")
            if len(series.points) > 1 or not math.isfinite(value):
                raise MetricsUnavailable(f"custom metric {metric.name!r} for revision {revision} came back in "
                                         f"{len(series.points)} periods or not finite; expected one value")
            values[revision][metric.name] = value

    def close(self) -> None:
        if self._client is not None:
            self._client.transport.close()
            self._client = None

    def _latencies(self, query: _WindowQuery) -> dict[str, tuple[dict[int, float], tuple[int, ...] | None]]:
        """revision -> ({50: p50, 95: p95, 99: p99}, buckets in LATENCY_LAYOUT), from one DISTRIBUTION each."""
        result = {}
        for series in self._list(query, query.filter(REQUEST_LATENCIES), REQUEST_LATENCIES, "ALIGN_DELTA",
                                 "REDUCE_SUM", []):
            revision = series.resource.labels["revision_name"]
            if len(series.points) != 1:
                # distributions of separate periods are not what the window asked; one period covers it
                raise MetricsUnavailable(
                    f"{REQUEST_LATENCIES} for revision {revision} came back in "
                    f"{len(series.points)} periods, expected one covering the window"
                )
            distribution = series.points[0].value.distribution_value
            counts = list(distribution.bucket_counts)
            if not sum(counts):
                continue  # a count without buckets: no distribution to read
            bounds = bucket_bounds(distribution.bucket_options, len(counts))
            # The percentiles are read in Monitoring's own layout, before any re-binning: they are what its
            # REDUCE_PERCENTILE_xx answers, without three more list calls.
            percentiles = {p: percentile(bounds, counts, p) for p in _PERCENTILES}
            result[revision] = (percentiles, rebin(bounds, counts))
        return result

    def _utilization(self, query: _WindowQuery, metric_type: str) -> dict[str, float]:
        """revision -> p95 of the metric's ratios over the window (Monitoring reduces the distribution)."""
        result = {}
        for series in self._list(query, query.filter(metric_type), metric_type, "ALIGN_DELTA",
                                 "REDUCE_PERCENTILE_95", []):
            if len(series.points) != 1:
                raise MetricsUnavailable(f"{metric_type} for revision {series.resource.labels['revision_name']} "
                                         f"came back in {len(series.points)} periods, expected one")
            value = series.points[0].value.double_value
            if math.isfinite(value):
                # a share of the limit; a burst past the limit (or a rounding above 1) is still "all of it"
                result[series.resource.labels["revision_name"]] = min(max(value, 0.0), 1.0)
        return result

    def _list(self, query: _WindowQuery, filter_text: str, what: str, aligner: str, reducer: str,
              extra_group_by: list[str], *, refused_as: str | None = None) -> list[Any]:
        from google.api_core import exceptions as api_exceptions
        from google.api_core import retry as api_retry
        from google.auth import exceptions as auth_exceptions
        from google.cloud import monitoring_v3

        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{query.project}",
            filter=filter_text,
            interval=monitoring_v3.TimeInterval(start_time=query.start, end_time=query.end),
            aggregation=monitoring_v3.Aggregation(
                alignment_period={"seconds": query.alignment_seconds},
                per_series_aligner=monitoring_v3.Aggregation.Aligner[aligner],
                cross_series_reducer=monitoring_v3.Aggregation.Reducer[reducer],
                group_by_fields=["resource.labels.revision_name", *extra_group_by],
            ),
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        # The client's default retries UNAVAILABLE for 90 s; a health check must give up sooner.
        retry = api_retry.Retry(
            initial=0.1,
            maximum=5.0,
            multiplier=1.3,
            predicate=api_retry.if_exception_type(api_exceptions.ServiceUnavailable),
            timeout=self._timeout_s,
        )
        try:
            # list() walks every page inside the try, so paging errors are caught too
            pages = self._metric_client().list_time_series(request=request, retry=retry, timeout=self._timeout_s)
            return list(pages)
        except api_exceptions.InvalidArgument as error:
            if refused_as is not None:  # the spec's own query: the spec is wrong, not Monitoring unavailable
                raise MetricQueryRefused(refused_as, filter_text, error.message or str(error)) from error
            raise MetricsUnavailable(f"Cloud Monitoring ({self._endpoint or 'Google Cloud Monitoring'}) refused "
                                     f"the query of {what} for service {query.service}: {error}") from error
        except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as error:
            where = self._endpoint or "Google Cloud Monitoring"
            raise MetricsUnavailable(
                f"Cloud Monitoring ({where}) could not list {what} for service {query.service} "
                f"in {query.project}/{query.location}: {error}"
            ) from error

    def _metric_client(self) -> MetricServiceClient:
        if self._client is None:
            from google.cloud import monitoring_v3

            if self._endpoint:
                import grpc
                from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

                transport = MetricServiceGrpcTransport(channel=grpc.insecure_channel(self._endpoint))
                self._client = monitoring_v3.MetricServiceClient(transport=transport)
            else:
                self._client = monitoring_v3.MetricServiceClient()
        return self._client


def _window(project: str, location: str, service: str, revisions: list[str], start: datetime,
            end: datetime) -> _WindowQuery | None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError(f"health window needs timezone-aware times, got {start!r} .. {end!r}")
    if end <= start:
        raise ValueError(f"health window is empty: {start.isoformat()} .. {end.isoformat()}")
    if not revisions:
        return None
    return _WindowQuery(project, location, service, tuple(revisions), start, end)


def _number(value: Any) -> float | None:
    """A point's value as a number; None for a distribution (or anything else that is not one)."""
    kind = type(value).pb(value).WhichOneof("value")
    if kind == "int64_value":
        return float(value.int64_value)
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return float(value.bool_value)
    return None


# ---------------------------------------------------------------- distributions

Bounds = list[tuple[float, float]]


def bucket_bounds(options: Any, n: int) -> Bounds:
    """[lower, upper) of the first `n` buckets of a google.api.Distribution.BucketOptions (exponential, linear
    or explicit; bucket 0 is the underflow, the last the overflow). Latencies are never negative: an
    underflow bucket starts at 0."""
    kind = options.WhichOneof("options")
    if kind == "exponential_buckets":
        e = options.exponential_buckets
        edges = [e.scale * e.growth_factor ** i for i in range(e.num_finite_buckets + 1)]
    elif kind == "linear_buckets":
        lin = options.linear_buckets
        edges = [lin.offset + lin.width * i for i in range(lin.num_finite_buckets + 1)]
    elif kind == "explicit_buckets":
        edges = list(options.explicit_buckets.bounds)
    else:
        raise MetricsUnavailable(f"{REQUEST_LATENCIES}: a distribution without a bucket layout ({kind})")
    if n > len(edges) + 1:
        raise MetricsUnavailable(f"{REQUEST_LATENCIES}: {n} bucket counts for a layout of {len(edges) + 1} buckets")
    lows = [min(0.0, edges[0]) if edges else 0.0, *edges]
    highs = [*edges, math.inf]
    return list(zip(lows, highs))[:n]


def percentile(bounds: Bounds, counts: Sequence[int], p: float) -> float | None:
    """The p-th percentile as Cloud Monitoring estimates it: linear inside the bucket holding rank p·n
    (the overflow bucket answers its lower bound)."""
    total = sum(counts)
    if not total:
        return None
    rank, below = p * total / 100, 0
    for (lower, upper), count in zip(bounds, counts):
        if count and below + count >= rank:
            return lower if math.isinf(upper) else lower + (upper - lower) * max(rank - below, 0) / count
        below += count
    return None  # unreachable: the ranks add up


def rebin(bounds: Bounds, counts: Sequence[int], layout: Layout = LATENCY_LAYOUT) -> tuple[int, ...]:
    """Counts in Monitoring's layout -> counts in `layout` (what every sample carries), trailing zeros dropped.

    The same layout passes through. Any other is re-binned by putting each source bucket's whole count at its
    geometric midpoint (latency buckets are exponential, so that is their centre on the log scale the judge's
    rank test works on); an underflow bucket counts at half its upper bound, the overflow at its lower bound.
    A source bucket that straddles target edges lands in one target bucket: the result is as coarse as the
    coarser of the two layouts, never finer."""
    if bounds == _LAYOUT_BOUNDS.get(layout, [])[:len(bounds)]:
        out = list(counts)
    else:
        out = [0] * (layout.count + 2)
        for (lower, upper), count in zip(bounds, counts):
            if not count:
                continue
            if math.isinf(upper):
                at = lower
            elif lower <= 0:
                at = upper / 2
            else:
                at = math.sqrt(lower * upper)
            out[bucket_index(at, layout)] += count
    while out and out[-1] == 0:
        out.pop()
    return tuple(out)


def _layout_bounds(layout: Layout) -> Bounds:
    return [layout.bounds(i) for i in range(layout.count + 2)]


_LAYOUT_BOUNDS = {LATENCY_LAYOUT: _layout_bounds(LATENCY_LAYOUT)}


@dataclass(frozen=True)
class _WindowQuery:
    project: str
    location: str
    service: str
    revisions: tuple[str, ...]
    start: datetime
    end: datetime

    @property
    def alignment_seconds(self) -> int:
        # one period reaching back over the whole window: one point per series
        return max(MIN_ALIGNMENT_SECONDS, math.ceil((self.end - self.start).total_seconds()))

    def filter(self, metric_type: str) -> str:
        return " AND ".join([f"metric.type = {_quote(metric_type)}", 'resource.type = "cloud_run_revision"',
                             self.resource_clauses()])

    def resource_clauses(self) -> str:
        revisions = ",".join(_quote(r) for r in self.revisions)
        return " AND ".join(
            [
                f"resource.labels.project_id = {_quote(self.project)}",
                f"resource.labels.location = {_quote(self.location)}",
                f"resource.labels.service_name = {_quote(self.service)}",
                f"resource.labels.revision_name = one_of({revisions})",
            ]
        )


def _quote(value: str) -> str:
    """A double-quoted filter string; backslash escapes the next character."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
