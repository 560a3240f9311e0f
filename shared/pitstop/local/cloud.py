"""The "local cloud": Cloud Run API, its router and Cloud Monitoring in one process.

    python -m pitstop.local.cloud --state-dir DIR --api-port A --monitoring-port M [--health-lag S]

They share one RequestLog: what the router serves is what Monitoring reports,
`--health-lag` seconds later (3 by default, GCP's 180 s scaled; 0 shows it at once).
Prints one JSON line `{"event": "ready", ...}` to stdout once listening, logs
JSON lines to stderr, and on SIGTERM/SIGINT stops every revision process.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pitstop.local.cloudrun import LocalCloudRun
from pitstop.local.requestlog import RequestLog
from pitstop.local.stack import DEFAULT_HEALTH_LAG

log = logging.getLogger("pitstop.local.cloud")

_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, as Cloud Logging reads them; `extra=` fields included."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        entry |= {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def start_monitoring(request_log: RequestLog, host: str, port: int, lag: float = 0.0) -> Any | None:
    """The local Monitoring gRPC server, or None (with a warning) if that module is not there."""
    try:
        from pitstop.local.monitoring import start_monitoring_server
    except ImportError as e:
        log.warning("local Cloud Monitoring not available; running without it", extra={"error": str(e)})
        return None
    return start_monitoring_server(request_log, host, port, lag=lag)


def _lag(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _fault_rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text}")
    return value


def _slow_seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pitstop.local.cloud", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="images, revision logs")
    parser.add_argument("--api-port", type=int, required=True, help="Cloud Run Admin API (REST); 0 = any free port")
    parser.add_argument("--monitoring-port", type=int, required=True, help="Cloud Monitoring (gRPC); 0 = any free port")
    parser.add_argument("--health-lag", type=_lag, default=DEFAULT_HEALTH_LAG, metavar="SECONDS",
                        help="Monitoring's ingestion lag: requests served more recently are not visible yet "
                             f"(default {DEFAULT_HEALTH_LAG:g}, GCP's 180 s scaled to 1 s ticks)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--project", default="local-project", help="reported in the ready line")
    parser.add_argument("--fault-rate", type=_fault_rate, default=0.0, metavar="SHARE",
                        help="share of Cloud Run API calls answered 503 UNAVAILABLE, as GCP sometimes does (0..1)")
    parser.add_argument("--fault-seed", type=int, default=None, help="seed for --fault-rate, to replay a run")
    parser.add_argument("--slow-operations", type=_slow_seconds, default=0.0, metavar="SECONDS",
                        help="Cloud Run updates stay in progress this long first, like a slow revision start on GCP")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    request_log = RequestLog()
    cloud_run = LocalCloudRun(args.state_dir, args.host, args.api_port, request_log, fault_rate=args.fault_rate,
                              fault_seed=args.fault_seed, slow_operations=args.slow_operations)
    cloud_run.start()
    monitoring = start_monitoring(request_log, args.host, args.monitoring_port, args.health_lag)
    ready = {
        "event": "ready",
        "project": args.project,
        "cloud_run_api": cloud_run.url,
        "monitoring": f"{args.host}:{monitoring.bound_port}" if monitoring is not None else None,
        "monitoring_lag_s": args.health_lag,
        "state_dir": str(args.state_dir),
    }
    print(json.dumps(ready), flush=True)
    try:
        stop.wait()
    finally:
        log.info("stopping the local cloud")
        if monitoring is not None:
            monitoring.stop(grace=2).wait()
        cloud_run.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
