"""Cloud Monitoring adapter: how each revision of a Cloud Run service did over a time window.

The same code talks to GCP and to the local Monitoring (pitstop.local.monitoring);
only the endpoint differs (`PITSTOP_MONITORING_ENDPOINT`). It measures, and
never judges: no traffic comes back as `request_count == 0` with no
latencies ("no data", which the judge must not read as healthy), and an API
failure raises `MetricsUnavailable` (retry, never "the canary failed").

The Monitoring client is imported only when the first query runs: importing
this module stays cheap for a Cloud Function's cold start.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud.monitoring_v3 import MetricServiceClient

ENDPOINT_ENV = "PITSTOP_MONITORING_ENDPOINT"
REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
# GCP rejects alignment periods under 60 s; a shorter window still gets one
# 60 s period ending at the window's end (the local Monitoring counts only the
# window itself; on GCP such a window is below the 60 s sampling anyway).
MIN_ALIGNMENT_SECONDS = 60
_PERCENTILES = {50: "REDUCE_PERCENTILE_50", 95: "REDUCE_PERCENTILE_95", 99: "REDUCE_PERCENTILE_99"}


class MetricsUnavailable(Exception):
    """Cloud Monitoring could not answer; the health check should be retried, not failed."""


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
        """Requests, 5xx and latency percentiles per revision over (start, end]."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError(f"health window needs timezone-aware times, got {start!r} .. {end!r}")
        if end <= start:
            raise ValueError(f"health window is empty: {start.isoformat()} .. {end.isoformat()}")
        if not revisions:
            return {}
        query = _WindowQuery(project, location, service, tuple(revisions), start, end)
        counts = {r: [0, 0] for r in revisions}  # revision -> [requests, 5xx]
        for series in self._list(query, REQUEST_COUNT, "REDUCE_SUM", ["metric.labels.response_code_class"]):
            revision = series.resource.labels["revision_name"]
            total = sum(point.value.int64_value for point in series.points)
            counts[revision][0] += total
            if series.metric.labels.get("response_code_class") == "5xx":
                counts[revision][1] += total
        latencies = {p: self._latency_percentile(query, p) for p in _PERCENTILES}
        return {
            r: RevisionHealth(
                revision=r,
                request_count=counts[r][0],
                error_count=counts[r][1],
                latency_p50_ms=latencies[50].get(r) if counts[r][0] else None,
                latency_p95_ms=latencies[95].get(r) if counts[r][0] else None,
                latency_p99_ms=latencies[99].get(r) if counts[r][0] else None,
                window_start=start,
                window_end=end,
            )
            for r in revisions
        }

    def close(self) -> None:
        if self._client is not None:
            self._client.transport.close()
            self._client = None

    def _latency_percentile(self, query: _WindowQuery, p: int) -> dict[str, float]:
        result = {}
        for series in self._list(query, REQUEST_LATENCIES, _PERCENTILES[p], []):
            revision = series.resource.labels["revision_name"]
            if len(series.points) != 1:
                # percentiles of separate periods cannot be combined; one period covers the window
                raise MetricsUnavailable(
                    f"{REQUEST_LATENCIES} p{p} for revision {revision} came back in "
                    f"{len(series.points)} periods, expected one covering the window"
                )
            result[revision] = series.points[0].value.double_value
        return result

    def _list(self, query: _WindowQuery, metric_type: str, reducer: str, extra_group_by: list[str]) -> list[Any]:
        from google.api_core import exceptions as api_exceptions
        from google.api_core import retry as api_retry
        from google.auth import exceptions as auth_exceptions
        from google.cloud import monitoring_v3

        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{query.project}",
            filter=query.filter(metric_type),
            interval=monitoring_v3.TimeInterval(start_time=query.start, end_time=query.end),
            aggregation=monitoring_v3.Aggregation(
                alignment_period={"seconds": query.alignment_seconds},
                per_series_aligner=monitoring_v3.Aggregation.Aligner.ALIGN_DELTA,
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
        except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as error:
            where = self._endpoint or "Google Cloud Monitoring"
            raise MetricsUnavailable(
                f"Cloud Monitoring ({where}) could not list {metric_type} for service {query.service} "
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
        revisions = ",".join(_quote(r) for r in self.revisions)
        return " AND ".join(
            [
                f"metric.type = {_quote(metric_type)}",
                'resource.type = "cloud_run_revision"',
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
