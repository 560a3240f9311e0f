"""A steady load on one URL, as a service's users would send it, with every request recorded
(MultiLoad: on several URLs at once, e.g. one service in each of its environments and regions).

Open loop: request i is due at start + i/rps whatever the previous ones did,
so a slow revision makes requests pile up instead of quietly lowering the
rate. A few threads each keep one HTTP/1.1 keep-alive connection (stdlib
http.client: least CPU per request, which matters when the router and the load
share one process). The example app answers JSON naming its revision, so every
request says who served it and whether a failure was the app's own 5xx or the
platform's (router 502/503, connection error, timeout).

Bounded: it stops on `stop()` and never runs past `max_duration_s`.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Failure kinds; "ok" is a 2xx/3xx/4xx JSON answer from the app.
OK = "ok"
APP_5XX = "app_5xx"  # the revision answered 5xx itself (JSON body naming it)
ROUTER_5XX = "router_5xx"  # a 5xx without the app's body: the router's 502/503
NOT_JSON = "not_json"  # a non-5xx answer whose body is not the app's JSON
CONNECTION = "connection_error"
TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Result:
    sent: float  # epoch seconds
    finished: float
    status: int | None  # None: no HTTP answer
    revision: str | None  # from the body; None if the app did not answer
    version: str | None
    kind: str


class Load:
    def __init__(self, url: str, rps: float = 50.0, max_duration_s: float = 600.0, timeout_s: float = 10.0,
                 threads: int | None = None, path: str = "/") -> None:
        if rps <= 0:
            raise ValueError(f"rps must be positive, got {rps}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"load needs a plain http:// URL, got {url!r}")
        self.url, self.rps, self.max_duration_s, self.timeout_s = url, rps, max_duration_s, timeout_s
        self._host, self._port, self._path = parts.hostname, parts.port or 80, path
        # Enough threads for ~100 ms answers at this rate; beyond that the load is late, not lower.
        self._threads = threads or min(32, max(4, math.ceil(rps / 10)))
        self._results: list[Result] = []
        self._lock = threading.Lock()
        self._next = 0  # index of the next request slot
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self.started_at: float | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Load:
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self._workers = [threading.Thread(target=self._work, name=f"load-{i}", daemon=True)
                         for i in range(self._threads)]
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout_s + 1)

    @property
    def running(self) -> bool:
        return any(worker.is_alive() for worker in self._workers)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ what happened

    def results(self) -> list[Result]:
        with self._lock:
            return list(self._results)

    # ------------------------------------------------------------ the workers

    def _slot(self) -> float | None:
        """Monotonic time the next request is due, or None when the load is over."""
        with self._lock:
            i, self._next = self._next, self._next + 1
        due = self._t0 + i / self.rps
        if due - self._t0 > self.max_duration_s:
            return None
        return due

    def _work(self) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            while not self._stop.is_set():
                due = self._slot()
                if due is None:
                    return
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                conn = conn or http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
                result, keep = self._one(conn)
                if not keep:
                    conn.close()
                    conn = None
                with self._lock:
                    self._results.append(result)
        finally:
            if conn is not None:
                conn.close()

    def _one(self, conn: http.client.HTTPConnection) -> tuple[Result, bool]:
        """One request; returns its result and whether the connection can be reused."""
        sent = time.time()
        try:
            conn.request("GET", self._path)
            response = conn.getresponse()
            body = response.read()
        except TimeoutError:
            return Result(sent, time.time(), None, None, None, TIMEOUT), False
        except (OSError, http.client.HTTPException):
            return Result(sent, time.time(), None, None, None, CONNECTION), False
        finished = time.time()
        revision = version = None
        try:
            answer = json.loads(body)
            revision, version = answer["revision"], answer["version"]
        except (ValueError, KeyError, TypeError):
            pass
        if response.status >= 500:
            kind = APP_5XX if revision else ROUTER_5XX
        else:
            kind = OK if revision else NOT_JSON
        return Result(sent, finished, response.status, revision, version, kind), not response.will_close


class MultiLoad:
    """One Load per URL at once, the total `rps` split evenly among them; results per URL's name.

    `urls` maps a name of your choosing to a URL (e.g. {"production/europe-west1": url}); a plain list
    of URLs names each by itself. A context manager like Load:

        with MultiLoad({"staging": a, "production": b}, rps=40, max_duration_s=60) as load:
            ...
        load.results()["staging"]; load.counts()["production"]["app_5xx"]
    """

    def __init__(self, urls: Mapping[str, str] | Iterable[str], rps: float = 50.0, max_duration_s: float = 600.0,
                 timeout_s: float = 10.0, threads: int | None = None, path: str = "/") -> None:
        named = dict(urls) if isinstance(urls, Mapping) else {url: url for url in urls}
        if not named:
            raise ValueError("MultiLoad needs at least one URL")
        if rps <= 0:
            raise ValueError(f"rps must be positive, got {rps}")
        self.rps = rps
        # `threads` is per URL; by default each Load sizes its own for its share of the rate.
        self.loads: dict[str, Load] = {name: Load(url, rps / len(named), max_duration_s, timeout_s, threads, path)
                                       for name, url in named.items()}

    def start(self) -> MultiLoad:
        for load in self.loads.values():
            load.start()
        return self

    def stop(self) -> None:
        for load in self.loads.values():  # set every stop first, so they wind down together
            load._stop.set()
        for load in self.loads.values():
            load.stop()

    @property
    def running(self) -> bool:
        return any(load.running for load in self.loads.values())

    def __enter__(self) -> MultiLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def results(self) -> dict[str, list[Result]]:
        return {name: load.results() for name, load in self.loads.items()}

    def counts(self) -> dict[str, Counter[str]]:
        """Per URL's name, how many requests ended each way (OK, APP_5XX, ROUTER_5XX, ...)."""
        return {name: Counter(r.kind for r in load.results()) for name, load in self.loads.items()}
