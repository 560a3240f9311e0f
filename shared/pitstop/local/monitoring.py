"""A local Cloud Monitoring: `ListTimeSeries` for Cloud Run's request and container metrics.

It answers from the `RequestLog` the local router and the revisions' usage
sampler fill, over gRPC, so the production `monitoring_v3.MetricServiceClient`
talks to it unchanged:

    server = start_monitoring_server(log, "127.0.0.1", 0, lag=3.0)
    addr = f"127.0.0.1:{server.bound_port}"   # the port actually bound
    ...
    server.stop(grace=None)

What it serves (resource `cloud_run_revision`, labels project_id, location,
service_name, revision_name; metric labels response_code, response_code_class):
- `run.googleapis.com/request_count`     DELTA INT64
- `run.googleapis.com/request_latencies` DELTA DISTRIBUTION, ms, exponential
  buckets (`LATENCY_BUCKETS`: scale 1, growth 1.25, 70 finite buckets)
- `run.googleapis.com/container/cpu/utilizations` and
  `run.googleapis.com/container/memory/utilizations` DELTA DISTRIBUTION of
  ratios (0-1, linear buckets of 0.01: `UTILIZATION_BUCKETS`), no metric
  labels: one value per usage sample of a revision's processes (about every
  0.5 s, revisions.UsageSampler): CPU time over wall time of its CPU limit
  (1 vCPU unless set), resident memory over its memory limit (512 MiB unless
  set). GCP's own sampling and layout differ; the percentiles mean the same.

Semantics, chosen to match Cloud Monitoring where it matters to pitstop:
- Interval: start exclusive, end inclusive; a missing start means start = end
  (nothing).
- Ingestion lag (`lag`, 0 by default; the local stack runs with 3 s, GCP's up
  to 180 s scaled like its 1 s ticks for Cloud Scheduler's minute): a request
  served less than `lag` seconds ago is not visible yet, as if its point were
  not ingested. Every query answers from what was served at or before
  now - lag: a window ending now holds only what is older than that; one that
  ended `lag` or more ago is complete. Periods still end at interval.end: data
  is missing, never shifted. (GCP ingests a minute's point at once; here each
  request becomes visible on its own.)
- ALIGN_NONE returns the raw points: one per series per wall-clock minute
  (Cloud Run writes one a minute), clipped to the interval.
- Other aligners: periods end at interval.end, end - P, end - 2P, ... while
  they end after interval.start; one point per period with data, newest first.
  Only requests inside the interval count. alignment_period must be >= 1 s
  (GCP requires >= 60 s; short periods are a local convenience).
- Percentiles are estimated from the histogram buckets the way Cloud
  Monitoring does: find the bucket holding rank p*n, interpolate linearly
  inside it (the underflow bucket starts at 0; the overflow bucket answers its
  lower bound). So they are exact to within one bucket.
- ALIGN_COUNT counts raw (per-minute) points, as on GCP — not requests.
- REDUCE_MEAN over distributions is the mean of all their values.
- The lag hides usage samples exactly like requests.
- Anything outside this subset (other metrics, log-based metrics
  `logging.googleapis.com/user/...`, labels, aligners, reducers,
  filter syntax, order_by, secondary_aggregation, group_by_fields without a
  reducer) is INVALID_ARGUMENT with a message naming it, never ignored.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from google.api import distribution_pb2, metric_pb2
from google.cloud import monitoring_v3
from google.protobuf import timestamp_pb2

from pitstop.local.monitoring_filter import FilterError, parse_filter
from pitstop.local.requestlog import RequestLog, Served, Usage

SERVICE_NAME = "google.monitoring.v3.MetricService"
REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
CPU_UTILIZATIONS = "run.googleapis.com/container/cpu/utilizations"
MEMORY_UTILIZATIONS = "run.googleapis.com/container/memory/utilizations"
CLOUD_RUN_REVISION = "cloud_run_revision"
RESOURCE_LABELS = ("project_id", "location", "service_name", "revision_name")
METRIC_LABELS = ("response_code", "response_code_class")
RAW_POINT_SECONDS = 60  # Cloud Run writes one point a minute per series
MAX_PAGE_SIZE = 100_000

# Cloud Run's exact layout is not published; this one is exponential like it:
# 1 ms .. ~103 min in 70 buckets, each 25 % wider than the one before.
LATENCY_BUCKETS = distribution_pb2.Distribution.BucketOptions(
    exponential_buckets=distribution_pb2.Distribution.BucketOptions.Exponential(
        num_finite_buckets=70, growth_factor=1.25, scale=1.0
    )
)
# Utilizations are ratios: 1 % wide buckets make a p95 exact to within a point.
UTILIZATION_BUCKETS = distribution_pb2.Distribution.BucketOptions(
    linear_buckets=distribution_pb2.Distribution.BucketOptions.Linear(num_finite_buckets=100, width=0.01, offset=0.0)
)

Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer
ValueType = int  # google.api.MetricDescriptor.ValueType (a plain protobuf enum: ints)
_VALUE_TYPES = metric_pb2.MetricDescriptor.ValueType
INT64, DOUBLE, DISTRIBUTION = _VALUE_TYPES.INT64, _VALUE_TYPES.DOUBLE, _VALUE_TYPES.DISTRIBUTION
DELTA, GAUGE = metric_pb2.MetricDescriptor.MetricKind.DELTA, metric_pb2.MetricDescriptor.MetricKind.GAUGE


def _type_name(value_type: ValueType) -> str:
    return _VALUE_TYPES.Name(value_type)



@dataclass(frozen=True)
class _MetricDef:
    value_type: ValueType
    unit: str
    labels: tuple[str, ...]  # metric labels its series carry
    buckets: distribution_pb2.Distribution.BucketOptions | None  # a DISTRIBUTION's layout
    source: str  # "served" (the router's requests) or "usage" (the revisions' usage samples)


_METRICS = {
    REQUEST_COUNT: _MetricDef(INT64, "1", METRIC_LABELS, None, "served"),
    REQUEST_LATENCIES: _MetricDef(DISTRIBUTION, "ms", METRIC_LABELS, LATENCY_BUCKETS, "served"),
    CPU_UTILIZATIONS: _MetricDef(DISTRIBUTION, "10^2.%", (), UTILIZATION_BUCKETS, "usage"),
    MEMORY_UTILIZATIONS: _MetricDef(DISTRIBUTION, "10^2.%", (), UTILIZATION_BUCKETS, "usage"),
}
# Aligner and Reducer are IntEnums whose numbers overlap: never mix them in one dict.
_ALIGNER_PERCENTILE = {
    Aligner.ALIGN_PERCENTILE_99: 99.0,
    Aligner.ALIGN_PERCENTILE_95: 95.0,
    Aligner.ALIGN_PERCENTILE_50: 50.0,
    Aligner.ALIGN_PERCENTILE_05: 5.0,
}
_REDUCER_PERCENTILE = {
    Reducer.REDUCE_PERCENTILE_99: 99.0,
    Reducer.REDUCE_PERCENTILE_95: 95.0,
    Reducer.REDUCE_PERCENTILE_50: 50.0,
    Reducer.REDUCE_PERCENTILE_05: 5.0,
}
# (input value type, aligner) -> value type of the aligned points
_ALIGNED_TYPE = {
    (INT64, Aligner.ALIGN_DELTA): INT64,
    (INT64, Aligner.ALIGN_SUM): INT64,
    (INT64, Aligner.ALIGN_RATE): DOUBLE,
    (INT64, Aligner.ALIGN_COUNT): INT64,
    (DISTRIBUTION, Aligner.ALIGN_DELTA): DISTRIBUTION,
    (DISTRIBUTION, Aligner.ALIGN_SUM): DISTRIBUTION,
    **{(DISTRIBUTION, a): DOUBLE for a in _ALIGNER_PERCENTILE},
}
# (aligned value type, reducer) -> value type of the reduced points
_REDUCED_TYPE = {
    **{(t, r): t for t in (INT64, DOUBLE) for r in (Reducer.REDUCE_SUM, Reducer.REDUCE_MAX)},
    (INT64, Reducer.REDUCE_MEAN): DOUBLE,
    (DOUBLE, Reducer.REDUCE_MEAN): DOUBLE,
    (DISTRIBUTION, Reducer.REDUCE_SUM): DISTRIBUTION,
    (DISTRIBUTION, Reducer.REDUCE_MEAN): DOUBLE,
    **{(DISTRIBUTION, r): DOUBLE for r in _REDUCER_PERCENTILE},
}
_GAUGE_ALIGNERS = {Aligner.ALIGN_RATE, Aligner.ALIGN_COUNT, *_ALIGNER_PERCENTILE}


class QueryError(ValueError):
    """A request the local Monitoring cannot answer; sent as INVALID_ARGUMENT."""


def start_monitoring_server(log: RequestLog, host: str = "127.0.0.1", port: int = 0, lag: float = 0.0,
                            clock: Callable[[], float] = time.time) -> grpc.Server:
    """Serve ListTimeSeries from `log` on host:port (0 = any free port); returns the started server.

    Requests served less than `lag` seconds before `clock()` (epoch seconds) are not visible yet
    (see the module doc). The port actually bound is `server.bound_port`. Stop it with
    `server.stop(grace)`.
    """
    service = LocalMetricService(log, lag=lag, clock=clock)
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
                service.handle_list_time_series,
                request_deserializer=monitoring_v3.ListTimeSeriesRequest.deserialize,
                response_serializer=monitoring_v3.ListTimeSeriesResponse.serialize,
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="local-monitoring"))
    server.add_generic_rpc_handlers((handler,))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"local Monitoring could not listen on {address}")
    server.start()
    server.bound_port = bound  # type: ignore[attr-defined]
    return server


class LocalMetricService:
    """ListTimeSeries over a RequestLog, hiding what was served less than `lag` seconds ago."""

    def __init__(self, log: RequestLog, lag: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        if not (math.isfinite(lag) and lag >= 0):
            raise ValueError(f"the ingestion lag must be a finite number of seconds >= 0, got {lag!r}")
        self._log = log
        self.lag = lag
        self._clock = clock

    def handle_list_time_series(
        self, request: monitoring_v3.ListTimeSeriesRequest, context: grpc.ServicerContext
    ) -> monitoring_v3.ListTimeSeriesResponse:
        try:
            return self.list_time_series(request)
        except (QueryError, FilterError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise  # abort() raises; this line only satisfies type checkers

    def list_time_series(self, request: monitoring_v3.ListTimeSeriesRequest) -> monitoring_v3.ListTimeSeriesResponse:
        query = _Query.from_request(request)
        ingested_until = self._clock() - self.lag  # newer requests and usage samples are not visible yet
        read = self._log.between if query.metric.source == "served" else self._log.usage_between
        series = _select(read(query.start, min(query.end, ingested_until)), query)
        if query.aligner == Aligner.ALIGN_NONE:
            out = _raw_series(series, query)
        else:
            out = _reduce(_align(series, query), query)
        out.sort(key=lambda s: (s.resource, s.metric))
        first = query.offset
        page = out[first : first + query.page_size]
        more = first + query.page_size < len(out)
        return monitoring_v3.ListTimeSeriesResponse(
            time_series=[s.to_proto(query) for s in page],
            next_page_token=str(first + query.page_size) if more else "",
        )


@dataclass(frozen=True)
class _Query:
    project: str
    metric_type: str
    matches: Callable[[dict[str, str]], bool]
    start: float
    end: float
    period: float
    aligner: Aligner
    reducer: Reducer
    group_by: tuple[str, ...]
    headers_only: bool
    page_size: int
    offset: int

    @classmethod
    def from_request(cls, request: monitoring_v3.ListTimeSeriesRequest) -> _Query:
        project = re.fullmatch(r"projects/([^/]+)", request.name)
        if project is None:
            raise QueryError(f"name must be projects/PROJECT_ID, got {request.name!r}")
        flt = parse_filter(request.filter)
        if flt.metric_type.startswith("logging.googleapis.com/user/"):
            raise QueryError(f"metric type {flt.metric_type!r}: the local Monitoring keeps no log-based metrics "
                             f"(only {', '.join(_METRICS)})")
        if flt.metric_type not in _METRICS:
            raise QueryError(
                f"metric type {flt.metric_type!r} is not served by the local Monitoring "
                f"(only {', '.join(_METRICS)})"
            )
        metric = _METRICS[flt.metric_type]
        for field in flt.label_fields():
            _check_label_field(field, "filter", metric)
        if "end_time" not in request.interval:
            raise QueryError("interval.end_time is required")
        end = request.interval.end_time.timestamp()
        start = request.interval.start_time.timestamp() if "start_time" in request.interval else end
        if start > end:
            raise QueryError("interval.start_time is after interval.end_time")
        if "secondary_aggregation" in request:
            raise QueryError("secondary_aggregation is not supported by the local Monitoring")
        if request.order_by:
            raise QueryError("order_by is not supported by the local Monitoring")
        if request.page_size < 0:
            raise QueryError(f"page_size must not be negative, got {request.page_size}")
        if request.page_token and not request.page_token.isdigit():
            raise QueryError(f"page_token {request.page_token!r} was not issued by this server")
        aggregation = request.aggregation
        aligner, reducer = Aligner(aggregation.per_series_aligner), Reducer(aggregation.cross_series_reducer)
        period = aggregation.alignment_period.total_seconds()
        group_by = tuple(aggregation.group_by_fields)
        _check_aggregation(metric.value_type, flt.metric_type, aligner, reducer, period, group_by)
        return cls(
            project=project.group(1),
            metric_type=flt.metric_type,
            matches=flt.matches,
            start=start,
            end=end,
            period=period,
            aligner=aligner,
            reducer=reducer,
            group_by=tuple(_canonical_group_field(f, metric) for f in group_by),
            headers_only=request.view == monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.HEADERS,
            page_size=request.page_size or MAX_PAGE_SIZE,
            offset=int(request.page_token or 0),
        )

    @property
    def metric(self) -> _MetricDef:
        return _METRICS[self.metric_type]

    @property
    def value_type(self) -> ValueType:
        return self.metric.value_type


def _check_label_field(field: str, where: str, metric: _MetricDef) -> None:
    scope, _, name = field.partition(".labels.")
    known = RESOURCE_LABELS if scope == "resource" else metric.labels
    if name not in known:
        raise QueryError(
            f"{where}: the local Monitoring has no label {field} "
            f"(known {scope} labels: {', '.join(known) or 'none'})"
        )


def _canonical_group_field(field: str, metric: _MetricDef) -> str:
    match = re.fullmatch(r"(resource|metric)\.labels?\.([A-Za-z_][A-Za-z0-9_]*)", field)
    if match is None:
        raise QueryError(
            f"group_by_fields: {field!r} is not supported by the local Monitoring "
            "(only resource.labels.NAME and metric.labels.NAME)"
        )
    canonical = f"{match.group(1)}.labels.{match.group(2)}"
    _check_label_field(canonical, "group_by_fields", metric)
    return canonical


def _check_aggregation(
    value_type: ValueType, metric: str, aligner: Aligner, reducer: Reducer, period: float, group_by: tuple[str, ...]
) -> None:
    if group_by and reducer == Reducer.REDUCE_NONE:
        raise QueryError("group_by_fields need a cross_series_reducer (Cloud Monitoring ignores them without one)")
    if aligner == Aligner.ALIGN_NONE:
        if reducer != Reducer.REDUCE_NONE:
            raise QueryError(f"{reducer.name} needs a per_series_aligner other than ALIGN_NONE")
        return
    if period < 1:
        raise QueryError(f"{aligner.name} needs an alignment_period of at least 1 s, got {period:g} s")
    aligned = _ALIGNED_TYPE.get((value_type, aligner))
    if aligned is None:
        raise QueryError(
            f"{aligner.name} is not supported for {metric} ({_type_name(value_type)}) by the local Monitoring"
        )
    if reducer != Reducer.REDUCE_NONE and (aligned, reducer) not in _REDUCED_TYPE:
        raise QueryError(
            f"{reducer.name} after {aligner.name} ({_type_name(aligned)} values) "
            "is not supported by the local Monitoring"
        )


# --- selecting, aligning and reducing ---------------------------------------------------------

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _SeriesKey:
    resource: Labels
    metric: Labels


@dataclass(frozen=True, slots=True)
class _Sample:
    """One measurement of a series: when, and its value (a latency, a ratio; unused for counts)."""

    at: float
    value: float


def _select(items: Iterable[Served | Usage], query: _Query) -> dict[_SeriesKey, list[_Sample]]:
    series: dict[_SeriesKey, list[_Sample]] = defaultdict(list)
    for item in items:
        if item.project != query.project:
            continue
        key = _series_key(item)
        fields = {"resource.type": CLOUD_RUN_REVISION}
        fields.update((f"resource.labels.{k}", v) for k, v in key.resource)
        fields.update((f"metric.labels.{k}", v) for k, v in key.metric)
        if query.matches(fields):
            series[key].append(_Sample(item.at, _sample_value(item, query.metric_type)))
    return series


def _sample_value(item: Served | Usage, metric_type: str) -> float:
    if isinstance(item, Usage):
        return item.cpu if metric_type == CPU_UTILIZATIONS else item.memory
    return item.latency_ms


def _series_key(item: Served | Usage) -> _SeriesKey:
    resource = (
        ("project_id", item.project),
        ("location", item.location),
        ("service_name", item.service),
        ("revision_name", item.revision),
    )
    if isinstance(item, Usage):
        return _SeriesKey(resource, ())
    metric = (("response_code", str(item.status)), ("response_code_class", f"{item.status // 100}xx"))
    return _SeriesKey(resource, metric)


@dataclass(frozen=True)
class _Values:
    """A distribution value, kept as the raw values until it is sent, with its bucket layout."""

    values: tuple[float, ...]
    buckets: distribution_pb2.Distribution.BucketOptions


Value = int | float | _Values


@dataclass
class _Series:
    resource: Labels
    metric: Labels
    kind: int
    value_type: ValueType
    points: dict[int, Value]  # period index (0 = newest) or raw minute -> value
    raw: bool = False

    def to_proto(self, query: _Query) -> monitoring_v3.TimeSeries:
        unit = "1/s" if query.aligner == Aligner.ALIGN_RATE else query.metric.unit
        series = monitoring_v3.TimeSeries(
            metric={"type": query.metric_type, "labels": dict(self.metric)},
            resource={"type": CLOUD_RUN_REVISION, "labels": dict(self.resource)},
            metric_kind=self.kind,
            value_type=self.value_type,
            unit=unit,
        )
        if not query.headers_only:
            order = sorted(self.points, reverse=self.raw)  # newest first
            series.points = [self._point(i, query) for i in order]
        return series

    def _point(self, index: int, query: _Query) -> monitoring_v3.Point:
        if self.raw:
            start = max((index - 1) * RAW_POINT_SECONDS, query.start)
            end = min(index * RAW_POINT_SECONDS, query.end)
        else:
            end = query.end - index * query.period
            start = end - query.period if self.kind == DELTA else end
        return monitoring_v3.Point(
            interval={"start_time": _timestamp(start), "end_time": _timestamp(end)},
            value=_typed_value(self.points[index]),
        )


def _raw_series(series: dict[_SeriesKey, list[_Sample]], query: _Query) -> list[_Series]:
    out = []
    for key, items in series.items():
        by_minute: dict[int, list[_Sample]] = defaultdict(list)
        for item in items:
            by_minute[math.ceil(item.at / RAW_POINT_SECONDS)].append(item)  # minute (m-1, m] in minutes
        points = {m: _delta(query, group) for m, group in by_minute.items()}
        out.append(_Series(key.resource, key.metric, DELTA, query.value_type, points, raw=True))
    return out


def _align(series: dict[_SeriesKey, list[_Sample]], query: _Query) -> list[_Series]:
    aligner = query.aligner
    kind = GAUGE if aligner in _GAUGE_ALIGNERS else DELTA
    value_type = _ALIGNED_TYPE[(query.value_type, aligner)]
    out = []
    for key, items in series.items():
        by_period: dict[int, list[_Sample]] = defaultdict(list)
        for item in items:
            # period k covers (end - (k+1)P, end - kP]
            by_period[math.floor((query.end - item.at) / query.period)].append(item)
        points = {k: _aligned_value(query, group) for k, group in by_period.items()}
        out.append(_Series(key.resource, key.metric, kind, value_type, points))
    return out


def _delta(query: _Query, items: list[_Sample]) -> Value:
    if query.value_type == DISTRIBUTION:
        return _Values(tuple(i.value for i in items), query.metric.buckets)
    return len(items)


def _aligned_value(query: _Query, items: list[_Sample]) -> Value:
    aligner = query.aligner
    if aligner in (Aligner.ALIGN_DELTA, Aligner.ALIGN_SUM):
        return _delta(query, items)
    if aligner == Aligner.ALIGN_RATE:
        return len(items) / query.period
    if aligner == Aligner.ALIGN_COUNT:
        return len({math.ceil(i.at / RAW_POINT_SECONDS) for i in items})
    return percentile(_Values(tuple(i.value for i in items), query.metric.buckets), _ALIGNER_PERCENTILE[aligner])


def _reduce(aligned: list[_Series], query: _Query) -> list[_Series]:
    reducer = query.reducer
    if reducer == Reducer.REDUCE_NONE:
        return aligned
    groups: dict[_SeriesKey, list[_Series]] = defaultdict(list)
    for series in aligned:
        groups[_group_key(series, query.group_by)].append(series)
    out = []
    for key, members in groups.items():
        value_type = _REDUCED_TYPE[(members[0].value_type, reducer)]
        periods = sorted({k for s in members for k in s.points})
        points = {k: _reduced_value(reducer, [s.points[k] for s in members if k in s.points]) for k in periods}
        out.append(_Series(key.resource, key.metric, members[0].kind, value_type, points))
    return out


def _group_key(series: _Series, group_by: tuple[str, ...]) -> _SeriesKey:
    resource = tuple((k, v) for k, v in series.resource if f"resource.labels.{k}" in group_by)
    metric = tuple((k, v) for k, v in series.metric if f"metric.labels.{k}" in group_by)
    return _SeriesKey(resource, metric)


def _reduced_value(reducer: Reducer, values: list[Value]) -> Value:
    if isinstance(values[0], _Values):
        merged = _Values(tuple(v for d in values for v in d.values), values[0].buckets)  # type: ignore[union-attr]
        if reducer == Reducer.REDUCE_SUM:
            return merged
        if reducer == Reducer.REDUCE_MEAN:
            return sum(merged.values) / len(merged.values)
        return percentile(merged, _REDUCER_PERCENTILE[reducer])
    numbers: list[int | float] = values  # type: ignore[assignment]
    if reducer == Reducer.REDUCE_SUM:
        return sum(numbers)
    if reducer == Reducer.REDUCE_MAX:
        return max(numbers)
    return sum(numbers) / len(numbers)  # REDUCE_MEAN


# --- distributions ----------------------------------------------------------------------------


def bucket_counts(values: Iterable[float],
                  buckets: distribution_pb2.Distribution.BucketOptions = LATENCY_BUCKETS) -> list[int]:
    """Counts per bucket of the layout: [underflow, finite..., overflow], trailing zeros dropped (as GCP)."""
    edges = _edges(buckets)
    counts = [0] * (len(edges) + 1)
    for value in values:
        counts[_bucket_index(value, edges)] += 1
    while counts and counts[-1] == 0:
        counts.pop()
    return counts


def _edges(buckets: distribution_pb2.Distribution.BucketOptions) -> tuple[float, ...]:
    """The finite bucket boundaries: bucket i in 1..n holds [edges[i-1], edges[i])."""
    key = buckets.SerializeToString()
    if key not in _EDGES:
        if buckets.WhichOneof("options") == "exponential_buckets":
            exp = buckets.exponential_buckets
            _EDGES[key] = tuple(exp.scale * exp.growth_factor**i for i in range(exp.num_finite_buckets + 1))
        else:
            lin = buckets.linear_buckets
            _EDGES[key] = tuple(lin.offset + lin.width * i for i in range(lin.num_finite_buckets + 1))
    return _EDGES[key]


_EDGES: dict[bytes, tuple[float, ...]] = {}


def _bucket_index(value: float, edges: tuple[float, ...]) -> int:
    # bisect on the very floats the bounds are computed from: an edge value lands in the bucket it opens
    return bisect.bisect_right(edges, value)


def _bucket_bounds(index: int, edges: tuple[float, ...]) -> tuple[float, float]:
    lower = min(0.0, edges[0]) if index == 0 else edges[index - 1]  # latencies and ratios are never negative
    upper = math.inf if index >= len(edges) else edges[index]
    return lower, upper


def percentile(values: _Values, p: float) -> float:
    """The p-th percentile estimated from the buckets, as Cloud Monitoring does (see module doc)."""
    edges = _edges(values.buckets)
    counts = bucket_counts(values.values, values.buckets)
    rank = p * len(values.values) / 100
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            lower, upper = _bucket_bounds(index, edges)
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * max(rank - below, 0) / count
        below += count
    raise ValueError("percentile of an empty distribution")


def _distribution(values: _Values) -> distribution_pb2.Distribution:
    items = values.values
    mean = sum(items) / len(items)
    return distribution_pb2.Distribution(
        count=len(items),
        mean=mean,
        sum_of_squared_deviation=sum((v - mean) ** 2 for v in items),
        bucket_options=values.buckets,
        bucket_counts=bucket_counts(items, values.buckets),
    )


def _typed_value(value: Value) -> monitoring_v3.TypedValue:
    if isinstance(value, _Values):
        return monitoring_v3.TypedValue(distribution_value=_distribution(value))
    if isinstance(value, int):
        return monitoring_v3.TypedValue(int64_value=value)
    return monitoring_v3.TypedValue(double_value=value)


def _timestamp(epoch_seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(epoch_seconds * 1e9))
    return ts
