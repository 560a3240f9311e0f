"""The local Cloud Monitoring, queried through the real monitoring_v3 client and through pitstop.gcp.metrics.

Known requests go into a RequestLog; every expectation is computed here from
those requests (interval (start, end], 5xx by status, nearest-rank percentiles),
independently of the server's code.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.api_core.exceptions import InvalidArgument
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

from pitstop.local.monitoring import start_monitoring_server
from pitstop.local.requestlog import RequestLog, Served
from pitstop.core import stats
from pitstop.core.models import CustomMetric, MetricQuery
from pitstop.gcp.metrics import ENDPOINT_ENV, MetricQueryRefused, Metrics, MetricsUnavailable, RevisionHealth

COUNT = "run.googleapis.com/request_count"
LATENCIES = "run.googleapis.com/request_latencies"
PROJECT, LOCATION, SERVICE = "proj", "us-central1", "web"
STABLE, CANARY, IDLE = "web-00001-stable", "web-00002-canary", "web-00003-idle"
T0 = 1_700_000_040.0  # on a minute boundary
START, END = T0, T0 + 300.0  # the window most tests query: (START, END]

Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer
View = monitoring_v3.ListTimeSeriesRequest.TimeSeriesView


def served(at: float, revision: str, status: int, latency_ms: float, *, service: str = SERVICE,
           project: str = PROJECT) -> Served:
    return Served(at, project, LOCATION, service, revision, status, latency_ms)


def make_requests() -> list[Served]:
    requests = []
    for i in range(200):  # stable: fast, 2 % 503
        latency = 20.0 + (i * 37) % 100 + (900.0 if i % 50 == 7 else 0.0)
        requests.append(served(T0 + 0.5 + i * 1.49, STABLE, 503 if i % 50 == 3 else 200, latency))
    for i in range(60):  # canary: slower, 10 % 500 and some 404
        status = 500 if i % 10 == 0 else 404 if i % 10 == 5 else 200
        latency = 50.0 + (i * 53) % 350 + (2500.0 if i in (11, 42) else 0.0)
        requests.append(served(T0 + 2.0 + i * 4.9, CANARY, status, latency))
    # noise that no `web` query in proj may count
    requests += [served(T0 + 10 + i, "api-00001", 200, 5.0, service="api") for i in range(10)]
    requests += [served(T0 + 10 + i, STABLE, 500, 5.0, project="other") for i in range(10)]
    # interval edges: exactly at START is outside, exactly at END inside, after END outside
    requests += [served(START, STABLE, 500, 7.0), served(END, STABLE, 200, 7.0), served(END + 0.5, CANARY, 500, 7.0)]
    return requests


REQUESTS = make_requests()


def in_window(start: float = START, end: float = END, **match: str) -> list[Served]:
    return [
        r for r in REQUESTS
        if start < r.at <= end and r.project == PROJECT and r.service == SERVICE
        and all(getattr(r, k) == v for k, v in match.items())
    ]


@pytest.fixture(scope="module")
def server() -> grpc.Server:
    log = RequestLog()
    for request in REQUESTS:
        log.add(request)
    server = start_monitoring_server(log, "127.0.0.1", 0)
    yield server
    server.stop(grace=None)


@pytest.fixture(scope="module")
def client(server: grpc.Server) -> monitoring_v3.MetricServiceClient:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    yield monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
    channel.close()


@pytest.fixture
def metrics(server: grpc.Server) -> Metrics:
    metrics = Metrics.from_env({ENDPOINT_ENV: f"127.0.0.1:{server.bound_port}"})
    yield metrics
    metrics.close()


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def query(client, metric: str, extra_filter: str = "", *, start: float = START, end: float = END,
          aligner: Aligner = Aligner.ALIGN_NONE, period: float = 0, reducer: Reducer = Reducer.REDUCE_NONE,
          group_by: tuple[str, ...] = (), view: View = View.FULL, page_size: int = 0, project: str = PROJECT):
    flt = f'metric.type = "{metric}" AND resource.labels.service_name = "{SERVICE}" {extra_filter}'
    request = monitoring_v3.ListTimeSeriesRequest(
        name=f"projects/{project}",
        filter=flt,
        interval=monitoring_v3.TimeInterval(start_time=at(start), end_time=at(end)),
        aggregation=monitoring_v3.Aggregation(
            alignment_period=timedelta(seconds=period), per_series_aligner=aligner,
            cross_series_reducer=reducer, group_by_fields=list(group_by),
        ),
        view=view,
        page_size=page_size,
    )
    return list(client.list_time_series(request=request))


def one_series(revision: str, status: int) -> str:
    return f'AND resource.labels.revision_name = "{revision}" AND metric.labels.response_code = "{status}"'


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def nearest_rank(values: list[float], p: int) -> float:
    return sorted(values)[-(-p * len(values) // 100) - 1]


def bucket_of(value: float, options) -> tuple[float, float]:
    """Bounds of the exponential bucket holding value, read from the server's bucket options."""
    e = options.exponential_buckets
    if value < e.scale:
        return 0.0, e.scale
    i = 1
    while i <= e.num_finite_buckets and value >= e.scale * e.growth_factor**i:
        i += 1
    upper = math.inf if i > e.num_finite_buckets else e.scale * e.growth_factor**i
    return e.scale * e.growth_factor ** (i - 1), upper


def assert_within_bucket(estimate: float, values: list[float], p: int, options) -> None:
    lower, upper = bucket_of(nearest_rank(values, p), options)
    assert lower <= estimate <= upper, f"p{p}={estimate} outside [{lower}, {upper}] of {nearest_rank(values, p)}"


def latency_options(client):
    """The bucket layout the server reports with its distributions."""
    series = query(client, LATENCIES, aligner=Aligner.ALIGN_DELTA, period=300, reducer=Reducer.REDUCE_SUM)
    return series[0].points[0].value.distribution_value.bucket_options


# --- through the monitoring_v3 client ---------------------------------------------------------


def test_server_reports_the_port_it_bound(server):
    assert server.bound_port > 0


def test_request_count_per_revision_and_response_code_class(client):
    series = query(client, COUNT, aligner=Aligner.ALIGN_DELTA, period=300, reducer=Reducer.REDUCE_SUM,
                   group_by=("resource.labels.revision_name", "metric.labels.response_code_class"))
    got = {}
    for s in series:
        assert s.metric_kind == monitoring_v3.TimeSeries.meta.fields["metric_kind"].enum.DELTA
        assert dict(s.metric.labels).keys() == {"response_code_class"}
        assert dict(s.resource.labels).keys() == {"revision_name"}
        assert s.resource.type == "cloud_run_revision"
        assert len(s.points) == 1
        assert s.points[0].interval.end_time == at(END)
        key = (s.resource.labels["revision_name"], s.metric.labels["response_code_class"])
        got[key] = s.points[0].value.int64_value
    expected = Counter((r.revision, status_class(r.status)) for r in in_window())
    assert got == dict(expected)
    assert got[(CANARY, "5xx")] == 6 and got[(STABLE, "5xx")] == 4  # the data set's own sanity


def test_ungrouped_series_carry_all_labels_and_response_codes(client):
    series = query(client, COUNT, f'AND resource.labels.revision_name = "{CANARY}"',
                   aligner=Aligner.ALIGN_DELTA, period=300)
    got = {s.metric.labels["response_code"]: s.points[0].value.int64_value for s in series}
    assert got == dict(Counter(str(r.status) for r in in_window(revision=CANARY)))
    assert dict(series[0].resource.labels) == {
        "project_id": PROJECT, "location": LOCATION, "service_name": SERVICE, "revision_name": CANARY}


def test_raw_points_are_per_minute_newest_first(client):
    series = query(client, COUNT, one_series(STABLE, 200))
    (only,) = series
    ends = [p.interval.end_time.timestamp() for p in only.points]
    assert ends == sorted(ends, reverse=True)
    expected = Counter(math.ceil(r.at / 60) * 60 for r in in_window(revision=STABLE, status=200))
    assert {e: p.value.int64_value for e, p in zip(ends, only.points)} == dict(expected)


def test_aligned_periods_end_at_the_interval_end_newest_first(client):
    series = query(client, COUNT, aligner=Aligner.ALIGN_DELTA, period=60, reducer=Reducer.REDUCE_SUM)
    (total,) = series
    assert [p.interval.end_time.timestamp() for p in total.points] == [END - k * 60 for k in range(5)]
    assert [p.interval.start_time.timestamp() for p in total.points] == [END - (k + 1) * 60 for k in range(5)]
    expected = [len(in_window(END - (k + 1) * 60, END - k * 60)) for k in range(5)]
    assert [p.value.int64_value for p in total.points] == expected


def test_rate_is_per_second_and_count_counts_raw_points(client):
    rate = query(client, COUNT, aligner=Aligner.ALIGN_RATE, period=300, reducer=Reducer.REDUCE_SUM)
    assert rate[0].points[0].value.double_value == pytest.approx(len(in_window()) / 300)
    counts = query(client, COUNT, one_series(CANARY, 500),
                   aligner=Aligner.ALIGN_COUNT, period=300)
    minutes = {math.ceil(r.at / 60) for r in in_window(revision=CANARY, status=500)}
    assert counts[0].points[0].value.int64_value == len(minutes)


def test_mean_and_max_across_response_code_series(client):
    per_code = Counter(r.status for r in in_window(revision=CANARY))
    common = dict(aligner=Aligner.ALIGN_DELTA, period=300, group_by=("resource.labels.revision_name",))
    extra = f'AND resource.labels.revision_name = "{CANARY}"'
    mean = query(client, COUNT, extra, reducer=Reducer.REDUCE_MEAN, **common)
    assert mean[0].points[0].value.double_value == pytest.approx(sum(per_code.values()) / len(per_code))
    biggest = query(client, COUNT, extra, reducer=Reducer.REDUCE_MAX, **common)
    assert biggest[0].points[0].value.int64_value == max(per_code.values())


def test_latency_distribution_matches_what_was_served(client):
    series = query(client, LATENCIES, aligner=Aligner.ALIGN_DELTA, period=300, reducer=Reducer.REDUCE_SUM,
                   group_by=("resource.labels.revision_name",))
    for s in series:
        values = [r.latency_ms for r in in_window(revision=s.resource.labels["revision_name"])]
        dist = s.points[0].value.distribution_value
        assert dist.count == len(values)
        assert dist.mean == pytest.approx(sum(values) / len(values))
        buckets = Counter()
        for v in values:
            lower, _ = bucket_of(v, dist.bucket_options)
            buckets[lower] += 1
        got = Counter()
        for index, n in enumerate(dist.bucket_counts):
            if n:
                got[bucket_of_index(index, dist.bucket_options)] += n
        assert got == buckets
    assert {s.resource.labels["revision_name"] for s in series} == {STABLE, CANARY}


def bucket_of_index(index: int, options) -> float:
    e = options.exponential_buckets
    return 0.0 if index == 0 else e.scale * e.growth_factor ** (index - 1)


@pytest.mark.parametrize("p", [99, 95, 50])
def test_reduced_percentiles_match_served_latencies_within_a_bucket(client, p):
    options = latency_options(client)
    series = query(client, LATENCIES, aligner=Aligner.ALIGN_DELTA, period=300,
                   reducer=getattr(Reducer, f"REDUCE_PERCENTILE_{p}"), group_by=("resource.labels.revision_name",))
    got = {s.resource.labels["revision_name"]: s.points[0].value.double_value for s in series}
    assert got.keys() == {STABLE, CANARY}
    for revision, estimate in got.items():
        assert_within_bucket(estimate, [r.latency_ms for r in in_window(revision=revision)], p, options)


def test_percentile_aligner_on_one_series(client):
    options = latency_options(client)
    extra = one_series(STABLE, 200)
    series = query(client, LATENCIES, extra, aligner=Aligner.ALIGN_PERCENTILE_99, period=300)
    (only,) = series
    assert only.value_type == monitoring_v3.TimeSeries.meta.fields["value_type"].enum.DOUBLE
    values = [r.latency_ms for r in in_window(revision=STABLE, status=200)]
    assert_within_bucket(only.points[0].value.double_value, values, 99, options)


def test_filters_select_series(client):
    errors = query(client, COUNT, 'AND metric.labels.response_code_class != "2xx"', aligner=Aligner.ALIGN_DELTA,
                   period=300, reducer=Reducer.REDUCE_SUM)
    assert errors[0].points[0].value.int64_value == len([r for r in in_window() if r.status >= 300])
    canary_only = query(client, COUNT, 'AND resource.labels.revision_name = starts_with("web-00002")',
                        aligner=Aligner.ALIGN_DELTA, period=300, reducer=Reducer.REDUCE_SUM)
    assert canary_only[0].points[0].value.int64_value == len(in_window(revision=CANARY))
    both = query(client, COUNT, f'AND resource.labels.revision_name = one_of("{STABLE}", "{CANARY}")',
                 aligner=Aligner.ALIGN_DELTA, period=300, reducer=Reducer.REDUCE_SUM)
    assert both[0].points[0].value.int64_value == len(in_window())
    other_resource = query(client, COUNT, 'AND resource.type = "gce_instance"')
    assert other_resource == []


def test_interval_excludes_its_start_and_includes_its_end(client):
    at_edges = query(client, COUNT, 'AND metric.labels.response_code_class != "5xx"', start=END - 1, end=END,
                     aligner=Aligner.ALIGN_DELTA, period=60, reducer=Reducer.REDUCE_SUM)
    assert [r.at for r in in_window(END - 1, END)] == [END]
    assert at_edges[0].points[0].value.int64_value == 1  # the request at END is in (END-1, END]
    start_edge = query(client, COUNT, one_series(STABLE, 500),
                       start=START - 1, end=START, aligner=Aligner.ALIGN_DELTA, period=60)
    assert start_edge[0].points[0].value.int64_value == 1  # the request at START is in (START-1, START]
    assert query(client, COUNT, 'AND metric.labels.response_code = "500"', start=START, end=START + 0.1) == []


def test_no_requests_means_no_series(client):
    assert query(client, COUNT, start=END + 100, end=END + 400, aligner=Aligner.ALIGN_DELTA, period=300,
                 reducer=Reducer.REDUCE_SUM) == []
    assert query(client, LATENCIES, f'AND resource.labels.revision_name = "{IDLE}"') == []
    assert query(client, COUNT, project="nobody") == []


def test_headers_view_has_series_but_no_points(client):
    series = query(client, COUNT, aligner=Aligner.ALIGN_DELTA, period=300, view=View.HEADERS)
    assert len(series) == len({(r.revision, r.status) for r in in_window()})
    assert all(len(s.points) == 0 for s in series)


def test_pages_together_hold_every_series(client):
    whole = query(client, COUNT, aligner=Aligner.ALIGN_DELTA, period=300)
    paged = query(client, COUNT, aligner=Aligner.ALIGN_DELTA, period=300, page_size=2)
    assert len(whole) > 2 and paged == whole


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(filter='resource.type = "cloud_run_revision"'), "metric type"),
        (dict(filter=f'metric.type = "{COUNT}" OR resource.type = "x"'), "'OR'"),
        (dict(filter='metric.type = "run.googleapis.com/container/network/received_bytes_count"'), "not served"),
        (dict(filter='metric.type = "logging.googleapis.com/user/checkouts"'), "no log-based metrics"),
        (dict(filter='metric.type = "run.googleapis.com/container/cpu/utilizations" AND '
                     'metric.labels.response_code = "200"'), "known metric labels: none"),
        (dict(filter=f'metric.type = "{COUNT}" AND metric.labels.route = "/"'), "metric.labels.route"),
        (dict(name="proj"), "projects/PROJECT_ID"),
        (dict(aggregation=dict(per_series_aligner=Aligner.ALIGN_RATE, alignment_period="60s"),
              filter=f'metric.type = "{LATENCIES}"'), "ALIGN_RATE is not supported"),
        (dict(aggregation=dict(per_series_aligner=Aligner.ALIGN_DELTA, alignment_period="60s",
                               cross_series_reducer=Reducer.REDUCE_PERCENTILE_99)),
         "REDUCE_PERCENTILE_99 after ALIGN_DELTA"),
        (dict(aggregation=dict(per_series_aligner=Aligner.ALIGN_MEAN, alignment_period="60s")), "ALIGN_MEAN"),
        (dict(aggregation=dict(cross_series_reducer=Reducer.REDUCE_SUM)), "REDUCE_SUM needs a per_series_aligner"),
        (dict(aggregation=dict(per_series_aligner=Aligner.ALIGN_DELTA)), "alignment_period"),
        (dict(aggregation=dict(per_series_aligner=Aligner.ALIGN_DELTA, alignment_period="60s",
                               group_by_fields=["resource.labels.revision_name"])), "cross_series_reducer"),
        (dict(aggregation=dict(per_series_aligner=Aligner.ALIGN_DELTA, alignment_period="60s",
                               cross_series_reducer=Reducer.REDUCE_SUM, group_by_fields=["project"])), "'project'"),
        (dict(order_by="value"), "order_by"),
        (dict(interval=dict(start_time=at(START))), "end_time"),
    ],
)
def test_unsupported_requests_are_invalid_argument_with_a_reason(client, changes, message):
    request = dict(name=f"projects/{PROJECT}", filter=f'metric.type = "{COUNT}"',
                   interval=dict(start_time=at(START), end_time=at(END)))
    request.update(changes)
    with pytest.raises(InvalidArgument) as error:
        list(client.list_time_series(request=request))
    assert message in error.value.message


# --- ingestion lag ----------------------------------------------------------------------------


@contextmanager
def lagging_client(log: RequestLog, lag: float,
                   clock: Callable[[], float] = time.time) -> Iterator[monitoring_v3.MetricServiceClient]:
    server = start_monitoring_server(log, "127.0.0.1", 0, lag=lag, clock=clock)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    try:
        yield monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
    finally:
        channel.close()
        server.stop(grace=None)


def log_of(requests: list[Served]) -> RequestLog:
    log = RequestLog()
    for request in requests:
        log.add(request)
    return log


def test_a_request_served_now_is_invisible_until_the_lag_has_passed():
    lag = 2.0
    log = RequestLog()
    with lagging_client(log, lag) as client:
        served_at = time.time()
        log.add(served(served_at, CANARY, 500, 12.0))
        polls = []  # (sent, answered, requests counted) of each query over a window ending now
        deadline = time.monotonic() + 30
        while not (polls and polls[-1][2]) and time.monotonic() < deadline:
            sent = time.time()
            series = query(client, COUNT, start=served_at - 60, end=sent, aligner=Aligner.ALIGN_DELTA, period=60,
                           reducer=Reducer.REDUCE_SUM)
            polls.append((sent, time.time(), sum(p.value.int64_value for s in series for p in s.points)))
            time.sleep(0.1)
    visible_from = served_at + lag
    assert polls[0][2] == 0, "queried at once, the request is not ingested yet"
    assert polls[-1][2] == 1, "once the lag has passed, it is there"
    assert all(n == 0 for _, answered, n in polls if answered < visible_from), polls
    assert all(n == 1 for sent, _, n in polls if sent >= visible_from), polls


@pytest.mark.parametrize("ingested_until", [END, END - 0.001, END - 100, START],
                         ids=["all-in", "end-not-yet", "100s-missing", "none-yet"])
def test_a_lagging_query_holds_what_was_served_lag_seconds_before_now_in_periods_ending_at_its_end(
        ingested_until):
    lag = 180.0  # GCP's; the clock is the test's, so nothing waits
    with lagging_client(log_of(REQUESTS), lag, clock=lambda: ingested_until + lag) as client:
        series = query(client, COUNT, aligner=Aligner.ALIGN_DELTA, period=60, reducer=Reducer.REDUCE_SUM)
    got = {round((END - p.interval.end_time.timestamp()) / 60): p.value.int64_value
           for s in series for p in s.points}
    expected = Counter(math.floor((END - r.at) / 60) for r in in_window(end=ingested_until))
    assert got == dict(expected)
    if ingested_until == END - 100:  # the data set's own sanity: the newest periods lost requests, not moved
        assert 0 not in got and got[2] == len(in_window(END - 180, END - 120))


def test_a_negative_or_infinite_lag_is_refused():
    for lag in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="ingestion lag"):
            start_monitoring_server(RequestLog(), "127.0.0.1", 0, lag=lag)


# --- through pitstop.gcp.metrics ------------------------------------------------------------------


def test_revision_health_counts_errors_and_latencies(client, metrics):
    options = latency_options(client)
    health = metrics.revision_health(PROJECT, LOCATION, SERVICE, [STABLE, CANARY, IDLE], at(START), at(END))
    assert health.keys() == {STABLE, CANARY, IDLE}
    for revision in (STABLE, CANARY):
        h = health[revision]
        requests = in_window(revision=revision)
        assert h.has_data
        assert (h.request_count, h.error_count) == (len(requests), len([r for r in requests if r.status >= 500]))
        latencies = [r.latency_ms for r in requests]
        for p, estimate in ((50, h.latency_p50_ms), (95, h.latency_p95_ms), (99, h.latency_p99_ms)):
            assert_within_bucket(estimate, latencies, p, options)
        assert (h.window_start, h.window_end) == (at(START), at(END))
    assert health[CANARY].latency_p99_ms > health[STABLE].latency_p99_ms


@pytest.mark.parametrize("p", [50, 95, 99])
def test_revision_health_buckets_hold_every_request_and_give_monitorings_percentiles(client, metrics, p):
    """One distribution per revision: its buckets (what the statistical judge compares) and the percentiles
    read from them are what Monitoring's own percentile reducer answers."""
    health = metrics.revision_health(PROJECT, LOCATION, SERVICE, [STABLE, CANARY, IDLE], at(START), at(END))
    reported = {s.resource.labels["revision_name"]: s.points[0].value.double_value
                for s in query(client, LATENCIES, aligner=Aligner.ALIGN_DELTA, period=300,
                               reducer=getattr(Reducer, f"REDUCE_PERCENTILE_{p}"),
                               group_by=("resource.labels.revision_name",))}
    for revision in (STABLE, CANARY):
        h = health[revision]
        assert sum(h.latency_buckets) == h.request_count == len(in_window(revision=revision))
        assert h.latency_buckets == stats.buckets_of(r.latency_ms for r in in_window(revision=revision))
        assert stats.percentile(h.latency_buckets, p) == pytest.approx(reported[revision])
        assert getattr(h, f"latency_p{p}_ms") == pytest.approx(reported[revision])
    assert health[IDLE].latency_buckets is None


def custom(name: str, flt: str, aligner: str = "ALIGN_RATE", reducer: str = "REDUCE_SUM") -> CustomMetric:
    return CustomMetric(name=name, query=MetricQuery(filter=flt, aligner=aligner, reducer=reducer), condition="true")


def test_custom_metrics_read_their_filter_per_revision(metrics):
    ok = f'metric.type = "{COUNT}" AND metric.labels.response_code_class = "2xx"'
    values = metrics.custom_values(PROJECT, LOCATION, SERVICE, [STABLE, CANARY, IDLE], at(START), at(END), [
        custom("ok_total", ok, "ALIGN_DELTA"),
        custom("ok_per_s", ok),  # the default: ALIGN_RATE, REDUCE_SUM
        custom("not_found", f'metric.type = "{COUNT}" AND metric.labels.response_code = "404"', "ALIGN_DELTA"),
        custom("p99", f'metric.type = "{LATENCIES}"', "ALIGN_DELTA", "REDUCE_PERCENTILE_99"),
        CustomMetric(name="built_in_only", condition="canary.error_rate < 0.5"),  # nothing to read
    ])
    health = metrics.revision_health(PROJECT, LOCATION, SERVICE, [STABLE, CANARY], at(START), at(END))
    for revision in (STABLE, CANARY):
        ok_count = len([r for r in in_window(revision=revision) if 200 <= r.status < 300])
        assert values[revision]["ok_total"] == ok_count
        assert values[revision]["ok_per_s"] == pytest.approx(ok_count / 300)  # one period over the window
        assert values[revision]["p99"] == pytest.approx(health[revision].latency_p99_ms)
    assert values[CANARY]["not_found"] == 6
    assert "not_found" not in values[STABLE]  # no 404 at all: no point, no value (never a made-up 0)
    assert values[IDLE] == {}


def test_custom_metrics_read_only_this_services_revisions(metrics):
    flt = f'metric.type = "{COUNT}" AND resource.labels.service_name = "api"'  # ANDed with ours: nothing
    values = metrics.custom_values(PROJECT, LOCATION, SERVICE, [STABLE], at(START), at(END), [custom("api", flt)])
    assert values == {STABLE: {}}


@pytest.mark.parametrize(("metric", "reason"), [
    (custom("by_route", f'metric.type = "{COUNT}" AND metric.labels.route = "/checkout"'), "metric.labels.route"),
    (custom("either", f'metric.type = "{COUNT}" OR metric.type = "{LATENCIES}"'), "'OR'"),
    (custom("whole", f'metric.type = "{LATENCIES}"', "ALIGN_DELTA", "REDUCE_SUM"), "distribution, not a number"),
    (custom("odd", f'metric.type = "{COUNT}"', "ALIGN_SOMETIMES"), "no aligner ALIGN_SOMETIMES"),
    (CustomMetric(name="checkouts", log_metric="checkouts", condition="true"), "no log-based metrics"),
])
def test_a_refused_custom_metric_names_itself_its_filter_and_why(metrics, metric, reason):
    with pytest.raises(MetricQueryRefused) as refused:
        metrics.custom_values(PROJECT, LOCATION, SERVICE, [STABLE], at(START), at(END), [metric])
    message = str(refused.value)
    assert f"custom metric {metric.name!r}" in message and reason in message
    assert (metric.query.filter if metric.query else f"logging.googleapis.com/user/{metric.log_metric}") in message
    assert 'resource.labels.revision_name = one_of("web-00001-stable")' in refused.value.filter
    assert not isinstance(refused.value, MetricsUnavailable)  # the spec must change: retrying will not help


def test_a_refused_custom_metric_leaves_the_others_read(metrics):
    refused = []
    values = metrics.custom_values(PROJECT, LOCATION, SERVICE, [STABLE], at(START), at(END), [
        custom("bad", f'metric.type = "{COUNT}" AND metric.labels.route = "/"'),
        custom("good", f'metric.type = "{COUNT}"', "ALIGN_DELTA"),
    ], on_refused=refused.append)
    assert [r.metric for r in refused] == ["bad"]
    assert values == {STABLE: {"good": len(in_window(revision=STABLE))}}


def test_revision_without_traffic_is_no_data_not_healthy(metrics):
    health = metrics.revision_health(PROJECT, LOCATION, SERVICE, [IDLE], at(START), at(END))
    assert health == {IDLE: RevisionHealth(IDLE, 0, 0, None, None, None, at(START), at(END))}
    assert not health[IDLE].has_data


def test_revision_health_over_a_window_shorter_than_a_minute(metrics):
    start, end = START + 100, START + 110
    health = metrics.revision_health(PROJECT, LOCATION, SERVICE, [STABLE, CANARY], at(start), at(end))
    for revision in (STABLE, CANARY):
        assert health[revision].request_count == len(in_window(start, end, revision=revision)) > 0


def test_revision_health_ignores_other_services_projects_and_locations(metrics):
    health = metrics.revision_health(PROJECT, "europe-west1", SERVICE, [STABLE], at(START), at(END))
    assert health[STABLE].request_count == 0
    health = metrics.revision_health("other", LOCATION, SERVICE, [STABLE], at(START), at(END))
    assert health[STABLE].request_count == 10 and health[STABLE].error_count == 10


def test_monitoring_errors_become_metrics_unavailable(metrics):
    with pytest.raises(MetricsUnavailable, match="projects/PROJECT_ID"):
        metrics.revision_health("bad/project", LOCATION, SERVICE, [STABLE], at(START), at(END))


def test_unreachable_monitoring_is_metrics_unavailable():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = Metrics(endpoint=f"127.0.0.1:{port}", timeout_s=1.0)
    try:
        with pytest.raises(MetricsUnavailable, match=f"127.0.0.1:{port}"):
            metrics.revision_health(PROJECT, LOCATION, SERVICE, [STABLE], at(START), at(END))
    finally:
        metrics.close()


def test_importing_metrics_does_not_load_the_monitoring_client():
    code = "import sys, pitstop.gcp.metrics; sys.exit('google.cloud.monitoring_v3' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
