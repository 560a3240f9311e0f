"""A local Cloud Monitoring: `ListTimeSeries` for Cloud Run's request metrics.

It answers from the `RequestLog` the local router fills, over gRPC, so the
production `monitoring_v3.MetricServiceClient` talks to it unchanged:

    server = start_monitoring_server(log, "127.0.0.1", 0, lag=3.0)
    addr = f"127.0.0.1:{server.bound_port}"   # the port actually bound
    ...
    server.stop(grace=None)

What it serves (resource `cloud_run_revision`, labels project_id, location,
service_name, revision_name; metric labels response_code, response_code_class):
- `run.googleapis.com/request_count`     DELTA INT64
- `run.googleapis.com/request_latencies` DELTA DISTRIBUTION, ms, exponential
  buckets (`LATENCY_BUCKETS`)

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
- Anything outside this subset (other metrics, labels, aligners, reducers,
  filter syntax, order_by, secondary_aggregation, group_by_fields without a
  reducer) is INVALID_ARGUMENT with a message naming it, never ignored.
"""

from __future__ import annotations

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
from pitstop.local.requestlog import RequestLog, Served

SERVICE_NAME = "google.monitoring.v3.MetricService"
REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
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

Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer
ValueType = int  # google.api.MetricDescriptor.ValueType (a plain protobuf enum: ints)
_VALUE_TYPES = metric_pb2.MetricDescriptor.ValueType
INT64, DOUBLE, DISTRIBUTION = _VALUE_TYPES.INT64, _VALUE_TYPES.DOUBLE, _VALUE_TYPES.DISTRIBUTION
DELTA, GAUGE = metric_pb2.MetricDescriptor.MetricKind.DELTA, metric_pb2.MetricDescriptor.MetricKind.GAUGE


def _type_name(value_type: ValueType) -> str:
    return _VALUE_TYPES.Name(value_type)

_METRIC_VALUE_TYPE = {REQUEST_COUNT: INT64, REQUEST_LATENCIES: DISTRIBUTION}
_METRIC_UNIT = {REQUEST_COUNT: "1", REQUEST_LATENCIES: "ms"}
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
        ingested_until = self._clock() - self.lag  # newer requests are not visible yet
        series = _select(self._log.between(query.start, min(query.end, ingested_until)), query)
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
        if flt.metric_type not in _METRIC_VALUE_TYPE:
            raise QueryError(
                f"metric type {flt.metric_type!r} is not served by the local Monitoring "
                f"(only {REQUEST_COUNT}, {REQUEST_LATENCIES})"
            )
        for field in flt.label_fields():
            _check_label_field(field, "filter")
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
        _check_aggregation(_METRIC_VALUE_TYPE[flt.metric_type], flt.metric_type, aligner, reducer, period, group_by)
        return cls(
            project=project.group(1),
            metric_type=flt.metric_type,
            matches=flt.matches,
            start=start,
            end=end,
            period=period,
            aligner=aligner,
            reducer=reducer,
            group_by=tuple(_canonical_group_field(f) for f in group_by),
            headers_only=request.view == monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.HEADERS,
            page_size=request.page_size or MAX_PAGE_SIZE,
            offset=int(request.page_token or 0),
        )

    @property
    def value_type(self) -> ValueType:
        return _METRIC_VALUE_TYPE[self.metric_type]


def _check_label_field(field: str, where: str) -> None:
    scope, _, name = field.partition(".labels.")
    known = RESOURCE_LABELS if scope == "resource" else METRIC_LABELS
    if name not in known:
        raise QueryError(
            f"{where}: the local Monitoring has no label {field} (known {scope} labels: {', '.join(known)})"
        )


def _canonical_group_field(field: str) -> str:
    match = re.fullmatch(r"(resource|metric)\.labels?\.([A-Za-z_][A-Za-z0-9_]*)", field)
    if match is None:
        raise QueryError(
            f"group_by_fields: {field!r} is not supported by the local Monitoring "
            "(only resource.labels.NAME and metric.labels.NAME)"
        )
    canonical = f"{match.group(1)}.labels.{match.group(2)}"
    _check_label_field(canonical, "group_by_fields")
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


def _select(served: Iterable[Served], query: _Query) -> dict[_SeriesKey, list[Served]]:
    series: dict[_SeriesKey, list[Served]] = defaultdict(list)
    for item in served:
        if item.project != query.project:
            continue
        key = _series_key(item)
        fields = {"resource.type": CLOUD_RUN_REVISION}
        fields.update((f"resource.labels.{k}", v) for k, v in key.resource)
        fields.update((f"metric.labels.{k}", v) for k, v in key.metric)
        if query.matches(fields):
            series[key].append(item)
    return series


def _series_key(item: Served) -> _SeriesKey:
    resource = (
        ("project_id", item.project),
        ("location", item.location),
        ("service_name", item.service),
        ("revision_name", item.revision),
    )
    metric = (("response_code", str(item.status)), ("response_code_class", f"{item.status // 100}xx"))
    return _SeriesKey(resource, metric)


@dataclass(frozen=True)
class _Latencies:
    """A distribution value, kept as the raw latencies until it is sent."""

    values: tuple[float, ...]


Value = int | float | _Latencies


@dataclass
class _Series:
    resource: Labels
    metric: Labels
    kind: int
    value_type: ValueType
    points: dict[int, Value]  # period index (0 = newest) or raw minute -> value
    raw: bool = False

    def to_proto(self, query: _Query) -> monitoring_v3.TimeSeries:
        unit = "1/s" if query.aligner == Aligner.ALIGN_RATE else _METRIC_UNIT[query.metric_type]
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


def _raw_series(series: dict[_SeriesKey, list[Served]], query: _Query) -> list[_Series]:
    out = []
    for key, items in series.items():
        by_minute: dict[int, list[Served]] = defaultdict(list)
        for item in items:
            by_minute[math.ceil(item.at / RAW_POINT_SECONDS)].append(item)  # minute (m-1, m] in minutes
        points = {m: _delta(query.value_type, group) for m, group in by_minute.items()}
        out.append(_Series(key.resource, key.metric, DELTA, query.value_type, points, raw=True))
    return out


def _align(series: dict[_SeriesKey, list[Served]], query: _Query) -> list[_Series]:
    aligner = query.aligner
    kind = GAUGE if aligner in _GAUGE_ALIGNERS else DELTA
    value_type = _ALIGNED_TYPE[(query.value_type, aligner)]
    out = []
    for key, items in series.items():
        by_period: dict[int, list[Served]] = defaultdict(list)
        for item in items:
            # period k covers (end - (k+1)P, end - kP]
            by_period[math.floor((query.end - item.at) / query.period)].append(item)
        points = {k: _aligned_value(query, group) for k, group in by_period.items()}
        out.append(_Series(key.resource, key.metric, kind, value_type, points))
    return out


def _delta(value_type: ValueType, items: list[Served]) -> Value:
    if value_type == DISTRIBUTION:
        return _Latencies(tuple(i.latency_ms for i in items))
    return len(items)


def _aligned_value(query: _Query, items: list[Served]) -> Value:
    aligner = query.aligner
    if aligner in (Aligner.ALIGN_DELTA, Aligner.ALIGN_SUM):
        return _delta(query.value_type, items)
    if aligner == Aligner.ALIGN_RATE:
        return len(items) / query.period
    if aligner == Aligner.ALIGN_COUNT:
        return len({math.ceil(i.at / RAW_POINT_SECONDS) for i in items})
    return percentile(_Latencies(tuple(i.latency_ms for i in items)), _ALIGNER_PERCENTILE[aligner])


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
    if isinstance(values[0], _Latencies):
        merged = _Latencies(tuple(v for d in values for v in d.values))  # type: ignore[union-attr]
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


def bucket_counts(values: Iterable[float]) -> list[int]:
    """Counts per bucket of LATENCY_BUCKETS: [underflow, finite..., overflow], trailing zeros dropped."""
    exp = LATENCY_BUCKETS.exponential_buckets
    counts = [0] * (exp.num_finite_buckets + 2)
    for value in values:
        counts[_bucket_index(value)] += 1
    while counts and counts[-1] == 0:
        counts.pop()
    return counts


def _bucket_index(value: float) -> int:
    exp = LATENCY_BUCKETS.exponential_buckets
    if value < exp.scale:
        return 0
    index = min(int(math.log(value / exp.scale, exp.growth_factor)) + 1, exp.num_finite_buckets + 1)
    # log() can land a hair off at a bucket edge; settle on the bucket whose bounds hold the value
    while index > 1 and value < _bucket_bounds(index)[0]:
        index -= 1
    while index <= exp.num_finite_buckets and value >= _bucket_bounds(index)[1]:
        index += 1
    return index


def _bucket_bounds(index: int) -> tuple[float, float]:
    exp = LATENCY_BUCKETS.exponential_buckets
    lower = 0.0 if index == 0 else exp.scale * exp.growth_factor ** (index - 1)
    upper = math.inf if index > exp.num_finite_buckets else exp.scale * exp.growth_factor**index
    return lower, upper


def percentile(latencies: _Latencies, p: float) -> float:
    """The p-th percentile estimated from the buckets, as Cloud Monitoring does (see module doc)."""
    counts = bucket_counts(latencies.values)
    rank = p * len(latencies.values) / 100
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            lower, upper = _bucket_bounds(index)
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * max(rank - below, 0) / count
        below += count
    raise ValueError("percentile of an empty distribution")


def _distribution(latencies: _Latencies) -> distribution_pb2.Distribution:
    values = latencies.values
    mean = sum(values) / len(values)
    return distribution_pb2.Distribution(
        count=len(values),
        mean=mean,
        sum_of_squared_deviation=sum((v - mean) ** 2 for v in values),
        bucket_options=LATENCY_BUCKETS,
        bucket_counts=bucket_counts(values),
    )


def _typed_value(value: Value) -> monitoring_v3.TypedValue:
    if isinstance(value, _Latencies):
        return monitoring_v3.TypedValue(distribution_value=_distribution(value))
    if isinstance(value, int):
        return monitoring_v3.TypedValue(int64_value=value)
    return monitoring_v3.TypedValue(double_value=value)


def _timestamp(epoch_seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(epoch_seconds * 1e9))
    return ts
