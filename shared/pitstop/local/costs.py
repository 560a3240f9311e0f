"""What rollouts cost: Firestore document reads and writes, Cloud Run and Monitoring calls, per input type
and per whole rollout. Shared by bench/firestore_ops.py and tests/integration/test_costs.py.

The real engine (`pitstop.engine.Engine`) and the real `Store` run on the Firestore emulator with a
simulated clock: Cloud Scheduler's tick every 60 s, Monitoring's ingestion lag of 180 s
(`Config(health_lag=180)`). Cloud Run, Monitoring and Pub/Sub are in-process fakes that only count
calls and keep the little state the engine reads back:

- `FakeCloudRun`: `apply` makes the split real at once and returns it; `traffic` and `serving` read it.
- `FakeMetrics`: `revision_health` answers healthy traffic (50 requests/s across the service, split
  as Cloud Run serves it, 0.5 % errors, p99 120 ms), proportional to the window's length. Each call is
  one "Monitoring query"; gcp/metrics.py sends `LIST_CALLS_PER_QUERY` ListTimeSeries requests for it.
- `FakeBus`: health samples the sampler publishes are queued and delivered after the tick, each to
  `engine.on_health(messages.parse_health(payload))`, as Pub/Sub would to another invocation.
  Events (notifications) are recorded.

**Counting happens at the Firestore client boundary**: the GAPIC client behind
`firestore.Client._firestore_api` is wrapped (`count_firestore`). A document read is a document
that `batch_get_documents` (`DocumentReference.get`, `Client.get_all`) or `run_query` (queries)
returns; a get of a missing document counts one read, and a query that returns nothing counts one
read (Firestore's minimum charge). A write is one entry of a successful `commit` (set, update,
create, delete); the writes of a commit refused on a precondition are counted apart
(`write_refused`), since nothing is written. `self_check` proves the counting on known cases.

Each operation is attributed to an input type and a service:

- the input type is the entry point the harness called (`build`, `health`, `alert`, `command`,
  `tick`), or, inside it, the nested input the engine hands itself (`applied`, `observed`,
  `apply_failed`, `superseded`; set around `Engine.handle`, so their costs are not the caller's);
- the service is read from the document's path when it names one (rollouts/{id}, services/{service--…},
  specs/{service--…}), otherwise from the rollout being handled (or the build being started).
  A query that returns nothing for no rollout in particular (the tick's `due` and `finished_between`
  when empty) is "shared".

So every rollout gets its own bill, even with hundreds in flight at once: a "whole rollout" is
everything attributed to its service from its build to a few ticks after it finished (the
reconciler looks at recently finished rollouts).

Scenario (`run`): `specs` other services with registered specs and a stable revision each (never
built: they must cost nothing), then `n` services, each with a stable revision, each receiving a
SUCCESS build; the builds arrive spread over the first 5 minutes, so all `n` rollouts are in flight
together for most of the run. Each runs the default canary (5/10/25 % with 5 m pauses, then the
watch at 100 %) until `succeeded`. With `probes`, three of the `n` also get an alert or commands
(a closed incident, pause and resume; an open incident, which rolls it back; a plain promote), so
every input type is measured; their bills are reported apart from the clean rollouts'.
"""

from __future__ import annotations

import contextvars
import io
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pitstop.config import Config
from pitstop.core import machine, messages
from pitstop.core.models import TERMINAL, Match, RolloutSpec, Target
from pitstop.core.routing import match_keys
from pitstop.engine import Engine, rollout_key
from pitstop.gcp import metrics as gcp_metrics
from pitstop.gcp.cloudrun import Traffic
from pitstop.gcp.metrics import RevisionHealth
from pitstop.gcp.store import Store, service_key
from pitstop.local.emulators import wipe_firestore
from pitstop.local.payloads import cloud_build, incident

SAMPLER = "pitstop-on-tick@pitstop-bench.iam.gserviceaccount.com"  # pitstop's own sampler identity

REGION = "us-central1"
ENVIRONMENT = "production"
TARGET_READS, TARGET_WRITES = 60, 40  # issue 7: a whole 4-step canary, whatever the number of services
TICK = 60  # Cloud Scheduler: every minute
LAG = 180  # Cloud Monitoring's ingestion lag
SPREAD = 300  # builds arrive over the first 5 minutes
AFTER = 3  # ticks after the last rollout finished (the reconciler checks recent ones once, 60-120 s after)
MAX_SIMULATED = timedelta(hours=3)
T0 = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)
LIST_CALLS_PER_QUERY = 1 + len(gcp_metrics._PERCENTILES)  # request counts + one per latency percentile

READS = ("get", "get_missing", "query_doc", "query_empty")
WRITES = ("write",)
CLOUD_RUN = ("cloudrun.apply", "cloudrun.traffic", "cloudrun.serving")
MONITORING = ("monitoring",)
NESTED = frozenset({"applied", "observed", "apply_failed", "superseded"})
KINDS = ("build", "applied", "tick", "observed", "health", "alert", "command", "apply_failed", "superseded")
SHARED = "-"

_kind: contextvars.ContextVar[str | None] = contextvars.ContextVar("costs_kind", default=None)
_service: contextvars.ContextVar[str | None] = contextvars.ContextVar("costs_service", default=None)


# ---------------------------------------------------------------- counting

class Meter:
    """Counts by (input type, service, operation, collection); thread-safe (the tick fans out)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str, str]] = Counter()
        self.totals: Counter[str] = Counter()
        self.inputs: Counter[str] = Counter()  # inputs delivered, by type (a tick is one, for every rollout)
        self.handled: Counter[str] = Counter()  # Engine.handle calls, by input type (a tick: one per due rollout)
        self.rollout_services: dict[str, str] = {}  # rollout id -> service
        self.entry_kind = "setup"  # the entry point the harness is in (read by the tick's worker threads)
        self.entry_service: str | None = None
        self.paused = False
        self._lock = threading.Lock()

    def context(self) -> tuple[str, str | None]:
        return _kind.get() or self.entry_kind, _service.get() or self.entry_service

    def add(self, op: str, n: int = 1, ctx: tuple[str, str | None] | None = None, service: str | None = None,
            collection: str = "") -> None:
        if self.paused or n == 0:
            return
        kind, default_service = ctx or self.context()
        with self._lock:
            self.counts[(kind, service or default_service or SHARED, op, collection)] += n
            self.totals[op] += n

    def service_of(self, path: str) -> tuple[str | None, str]:
        """(service, collection) a document path names, e.g. .../documents/rollouts/{id}/events/{e}."""
        parts = path.split("/documents/", 1)[-1].split("/")
        collection = parts[0] if parts else ""
        doc = parts[1] if len(parts) > 1 else ""
        if len(parts) > 2:
            collection = f"{parts[0]}/{parts[2]}"  # e.g. rollouts/events
        if parts[0] == "rollouts":
            return self.rollout_services.get(doc), collection
        if parts[0] in ("services", "specs") and "--" in doc:
            return doc.split("--", 1)[0], collection
        return None, collection

    @contextmanager
    def entry(self, kind: str, service: str | None = None) -> Iterator[None]:
        """Around one input the harness delivers to the engine."""
        before = (self.entry_kind, self.entry_service)
        self.entry_kind, self.entry_service = kind, service
        if not self.paused:
            self.inputs[kind] += 1
        try:
            yield
        finally:
            self.entry_kind, self.entry_service = before

    @contextmanager
    def off(self) -> Iterator[None]:
        """The harness's own reads (seeding, watching progress): not counted."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.totals.clear()
            self.inputs.clear()
            self.handled.clear()

    def total(self, ops: tuple[str, ...], kind: str | None = None, service: str | None = None) -> int:
        return sum(n for (k, s, op, _), n in self.counts.items()
                   if op in ops and (kind is None or k == kind) and (service is None or s == service))


class CountingFirestoreApi:
    """Stands in for the GAPIC FirestoreClient of one `firestore.Client`, counting what it returns."""

    def __init__(self, api: Any, meter: Meter) -> None:
        self._api, self._meter = api, meter

    def __getattr__(self, name: str) -> Any:  # every other method and attribute (`_transport`...) as is
        return getattr(self._api, name)

    def batch_get_documents(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        ctx = self._meter.context()
        stream = self._api.batch_get_documents(*args, **kwargs)

        def counted() -> Iterator[Any]:
            for response in stream:
                pb = response._pb
                found = pb.WhichOneof("result") == "found"
                service, collection = self._meter.service_of(pb.found.name if found else pb.missing)
                self._meter.add("get" if found else "get_missing", 1, ctx, service, collection)
                yield response
        return counted()

    def run_query(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        ctx = self._meter.context()
        request = kwargs.get("request") or (args[0] if args else {})
        collection = _query_collection(request)
        stream = self._api.run_query(*args, **kwargs)

        def counted() -> Iterator[Any]:
            docs = 0
            try:
                for response in stream:
                    pb = response._pb
                    if pb.HasField("document"):
                        docs += 1
                        service, col = self._meter.service_of(pb.document.name)
                        self._meter.add("query_doc", 1, ctx, service, col)
                    yield response
            finally:
                if docs == 0:  # Firestore bills a query at least one read
                    self._meter.add("query_empty", 1, ctx, None, collection)
        return counted()

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        ctx = self._meter.context()
        request = kwargs.get("request") or (args[0] if args else {})
        writes = request["writes"] if isinstance(request, dict) else list(request.writes)
        try:
            response = self._api.commit(*args, **kwargs)
        except Exception:
            for w in writes:
                self._meter.add("write_refused", 1, ctx, *self._meter.service_of(_write_name(w)))
            raise
        for w in writes:
            self._meter.add("write", 1, ctx, *self._meter.service_of(_write_name(w)))
        return response

    def list_documents(self, *args: Any, **kwargs: Any) -> Any:
        self._meter.add("list_documents", 1)
        return self._api.list_documents(*args, **kwargs)


def _write_name(w: Any) -> str:
    pb = getattr(w, "_pb", w)
    op = pb.WhichOneof("operation")
    return pb.update.name if op == "update" else pb.delete if op == "delete" else pb.transform.document


def _query_collection(request: Any) -> str:
    try:
        query = request["structured_query"] if isinstance(request, dict) else request.structured_query
        return getattr(query, "from_")[0].collection_id
    except Exception:  # only a label
        return "query"


def count_firestore(client: Any, meter: Meter) -> None:
    """Count every read and write of `client` (a google.cloud.firestore.Client) from now on."""
    api = client._firestore_api  # builds the GAPIC client (and its channel) if not yet
    if isinstance(api, CountingFirestoreApi):
        api._meter = meter  # counted already: into this meter from now on
    else:
        client._firestore_api_internal = CountingFirestoreApi(api, meter)


def self_check(store: Store, meter: Meter) -> None:
    """The counting on cases whose bill is known; raises AssertionError if it is off."""
    from google.cloud.firestore_v1 import FieldFilter

    db = store.db
    refs = [db.collection("selfcheck").document(f"d{i}") for i in range(3)]
    meter.reset()
    with meter.entry("selfcheck"):
        assert store.rollout("selfcheck-missing") is None
        assert meter.totals["get_missing"] == 1 and sum(meter.totals[o] for o in READS) == 1, meter.totals
        batch = db.batch()
        for i, ref in enumerate(refs):
            batch.set(ref, {"i": i})
        batch.commit()
        assert meter.totals["write"] == 3, meter.totals
        assert refs[0].get().exists and meter.totals["get"] == 1, meter.totals
        assert len(db.get_all(refs[:2]) and list(db.get_all(refs[:2]))) == 2 and meter.totals["get"] == 3
        assert len(list(db.collection("selfcheck").stream())) == 3 and meter.totals["query_doc"] == 3
        assert not list(db.collection("selfcheck").where(filter=FieldFilter("i", "==", 7)).stream())
        assert meter.totals["query_empty"] == 1, meter.totals
        assert sum(meter.totals[o] for o in READS) == 8, meter.totals
    with meter.off():
        for ref in refs:
            ref.delete()
    meter.reset()


# ---------------------------------------------------------------- fakes

class FakeCloudRun:
    """Cloud Run as the engine's adapter sees it: what each service serves; counts the calls."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.splits: dict[str, list[Target]] = {}

    def apply(self, project: str, region: str, service: str, split: list[Target], revision: str | None = None,
              image: str | None = None, wait: float = 0) -> list[Target]:
        self.meter.add("cloudrun.apply", service=service)
        self.splits[service] = list(split)
        return list(split)

    def traffic(self, project: str, region: str, service: str) -> Traffic | None:
        self.meter.add("cloudrun.traffic", service=service)
        split = self.splits.get(service)
        if split is None:
            return None
        return Traffic(split=list(split), settled=True, latest_ready=split[-1].revision,
                       revisions=frozenset(t.revision for t in split))

    def serving(self, project: str, region: str, service: str) -> str | None:
        self.meter.add("cloudrun.serving", service=service)
        split = self.splits.get(service)
        return max(split, key=lambda t: t.percent).revision if split else None

    def percent(self, service: str, revision: str) -> int:
        return sum(t.percent for t in self.splits.get(service, []) if t.revision == revision)


class FakeMetrics:
    """Healthy traffic, as much as the window is long and the revision's share of the split."""

    RPS, ERROR_RATE = 50.0, 0.005

    def __init__(self, meter: Meter, cloudrun: FakeCloudRun) -> None:
        self.meter, self.cloudrun = meter, cloudrun

    def revision_health(self, project: str, region: str, service: str, revisions: list[str], start: datetime,
                        end: datetime) -> dict[str, RevisionHealth]:
        self.meter.add("monitoring", service=service)
        seconds = (end - start).total_seconds()
        out = {}
        for revision in revisions:
            requests = int(self.RPS * self.cloudrun.percent(service, revision) / 100 * seconds)
            has = requests > 0
            out[revision] = RevisionHealth(
                revision=revision, request_count=requests, error_count=int(requests * self.ERROR_RATE),
                latency_p50_ms=40.0 if has else None, latency_p95_ms=90.0 if has else None,
                latency_p99_ms=120.0 if has else None, window_start=start, window_end=end)
        return out


class FakeCloudBuild:
    """Cloud Build's API: the builds the harness announced, as `get_build` returns them (no Firestore cost)."""

    def __init__(self) -> None:
        self.builds: dict[str, dict[str, Any]] = {}

    def build(self, project: str, build_id: str, location: str | None = None) -> dict[str, Any] | None:
        return self.builds.get(build_id)


class Signer:
    """Real ID tokens from a local issuer, verified by the real verifier: the commands' and samples' senders."""

    def __init__(self, project: str) -> None:
        import tempfile
        from pathlib import Path

        from pitstop.gcp.identity import Verifier
        from pitstop.local.issuer import start_issuer

        self.issuer = start_issuer(Path(tempfile.mkdtemp(prefix="pitstop-costs-issuer-")))
        self.audience = f"pitstop:{project}"
        self.verifier = Verifier([self.audience], issuers=[self.issuer.url], certs_url=self.issuer.certs_url)

    def __call__(self, audience: str) -> str:
        """The sampler's token for one audience (the engine binds each sample's token to it)."""
        return self.issuer.mint(SAMPLER, audience)

    def token(self, email: str) -> str:
        return self.issuer.mint(email, self.audience)


class FakeBus:
    """Pub/Sub: health samples queued for delivery after the tick; events recorded."""

    def __init__(self, health_topic: str) -> None:
        self.health_topic = health_topic
        self.health: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: dict[str, Any], **attributes: str) -> str:
        payload = json.loads(json.dumps(payload, default=str))  # as it travels
        with self._lock:
            (self.health.append(payload) if topic == self.health_topic else self.events.append((topic, payload)))
        return "1"

    def take_health(self) -> list[dict[str, Any]]:
        with self._lock:
            taken, self.health = self.health, []
        return taken


class LogSink(io.TextIOBase):
    """The engine's JSON log lines (stdout), kept out of the report. `problems`: errors that are not a
    rollout's own notification or decision (those carry its `state`), e.g. "tick could not handle"."""

    def __init__(self) -> None:
        self.severities: Counter[str] = Counter()
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                severity, message = entry.get("severity", "DEFAULT"), entry.get("message", line)
                expected = "state" in entry
            except (json.JSONDecodeError, AttributeError):
                severity, message, expected = "STDOUT", line, False
            with self._lock:
                self.severities[severity] += 1
                if severity in ("ERROR", "CRITICAL", "STDOUT") and not expected and len(self.problems) < 20:
                    self.problems.append(f"{severity}: {message}")
        return len(text)


# ---------------------------------------------------------------- the run

@dataclass
class TickCost:
    at: datetime
    in_flight: int
    reads: int
    writes: int
    cloudrun: int
    monitoring: int
    seconds: float


@dataclass
class Result:
    n: int
    specs: int
    clean: list[str]  # services whose rollouts got only build, tick, health and Cloud Run results
    probes: list[str]  # services that also got an alert or a command
    meter: Meter
    ticks: list[TickCost]
    states: dict[str, str]  # service -> final state
    simulated: timedelta
    seconds: float
    logs: LogSink
    durations: dict[str, timedelta] = field(default_factory=dict)  # service -> build to finished
    expected: dict[str, str] = field(default_factory=dict)  # service -> the final state it must reach

    def bill(self, service: str) -> dict[str, int]:
        m = self.meter
        return {"reads": m.total(READS, service=service), "writes": m.total(WRITES, service=service),
                "cloudrun": m.total(CLOUD_RUN, service=service), "monitoring": m.total(MONITORING, service=service)}

    def per_rollout(self, services: list[str] | None = None) -> dict[str, tuple[float, int]]:
        """Mean and max of each metric over whole rollouts (the clean ones by default)."""
        bills = [self.bill(s) for s in (self.clean if services is None else services)]
        return {k: (sum(b[k] for b in bills) / len(bills), max(b[k] for b in bills)) for k in bills[0]} if bills else {}

    def by_kind(self, ops: tuple[str, ...], services: list[str] | None = None) -> dict[str, float]:
        """Mean per whole rollout of `ops`, by input type."""
        services = self.clean if services is None else services
        wanted = set(services)
        out: Counter[str] = Counter()
        for (kind, service, op, _), n in self.meter.counts.items():
            if service in wanted and op in ops:
                out[kind] += n
        return {k: out[k] / len(services) for k in KINDS if out.get(k)}

    def by_call(self, services: list[str] | None = None) -> list[tuple[str, str, str, float]]:
        """(input type, operation, collection, mean per whole rollout), largest first."""
        services = self.clean if services is None else services
        wanted = set(services)
        out: Counter[tuple[str, str, str]] = Counter()
        for (kind, service, op, collection), n in self.meter.counts.items():
            if service in wanted:
                out[(kind, op, collection)] += n
        return sorted(((k, op, c, n / len(services)) for (k, op, c), n in out.items()), key=lambda x: -x[3])

    def per_input(self) -> dict[str, dict[str, float]]:
        """Mean cost of one input of each type, over every rollout and the shared part."""
        m = self.meter
        out = {}
        for kind in KINDS:
            count = m.inputs.get(kind, 0)
            if not count:
                continue
            out[kind] = {"inputs": count, "handled": m.handled.get(kind, 0),
                         "reads": m.total(READS, kind=kind) / count, "writes": m.total(WRITES, kind=kind) / count,
                         "cloudrun": m.total(CLOUD_RUN, kind=kind) / count,
                         "monitoring": m.total(MONITORING, kind=kind) / count}
        return out

    def shared_reads(self) -> int:
        return self.meter.total(READS, service=SHARED)

    def full_ticks(self) -> list[TickCost]:
        """Ticks with (nearly) all `n` rollouts in flight: at least 90 % of them (probes finish early)."""
        return [t for t in self.ticks if t.in_flight >= max(1, int(0.9 * self.n))]

    def unexpected(self) -> list[str]:
        """Rollouts that did not end as planned, and engine errors: the figures would not be a rollout's."""
        problems = [f"{s} ended {self.states.get(s, 'unstarted')}, expected {want}"
                    for s, want in self.expected.items() if self.states.get(s) != want]
        return problems + self.logs.problems

    def over_target(self) -> list[str]:
        """One line per target some whole (clean) rollout exceeds."""
        problems = []
        for metric, target in (("reads", TARGET_READS), ("writes", TARGET_WRITES)):
            over = [self.bill(s)[metric] for s in self.clean if self.bill(s)[metric] > target]
            if over:
                problems.append(f"{len(over)} of {len(self.clean)} whole rollouts over {target} Firestore {metric} "
                                f"(max {max(over)})")
        return problems


class Harness:
    """One engine on one Firestore (emulator) client, with the fakes, a simulated clock and a meter."""

    def __init__(self, project: str, firestore_host: str | None = None) -> None:
        from google.cloud import firestore

        if firestore_host:
            os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
        if not os.environ.get("FIRESTORE_EMULATOR_HOST"):
            raise RuntimeError("FIRESTORE_EMULATOR_HOST is not set: the cost harness runs on the emulator only")
        self.project = project
        self.meter = Meter()
        self.client = firestore.Client(project=project)
        count_firestore(self.client, self.meter)
        self.store = Store(self.client)
        self.signer = Signer(project)

    def check(self) -> None:
        self_check(self.store, self.meter)

    def run(self, n: int, specs: int = 0, probes: bool = True) -> Result:
        """`n` rollouts in flight together, `specs` other services registered; Firestore is wiped first.
        Each run counts into a meter of its own (the Result's)."""
        wipe_firestore(os.environ["FIRESTORE_EMULATOR_HOST"], self.project)
        self.meter = meter = Meter()
        count_firestore(self.client, meter)
        store = self.store
        sink = LogSink()
        cloudrun = FakeCloudRun(meter)
        config = Config(project=self.project, health_lag=LAG, sampler_identity=SAMPLER,
                        admins=("user:bench@example.com",))
        bus = FakeBus(config.health_topic)
        clock = [T0]
        signer, cloudbuild = self.signer, FakeCloudBuild()
        engine = Engine(config, store, cloudrun=lambda: cloudrun, bus=bus,
                        metrics=lambda: FakeMetrics(meter, cloudrun), clock=lambda: clock[0],
                        verifier=lambda: signer.verifier, cloudbuild=lambda: cloudbuild, tokens=lambda: signer)
        _count_handles(engine, meter)

        services = [f"svc-{i:03d}" for i in range(n)]
        probe_services = services[:3] if probes and n >= 6 else []
        clean = [s for s in services if s not in probe_services]
        others = [f"other-{i:04d}" for i in range(specs)]
        with meter.off():
            _seed(store, services + others, self.project)
        for s in services:
            cloudrun.splits[s] = [Target(revision=_stable(s), percent=100, tag="stable")]

        builds: dict[str, str] = {}
        build_at: dict[str, datetime] = {}
        events: list[tuple[datetime, int, str, Callable[[], None]]] = []
        for i, s in enumerate(services):
            build_at[s] = T0 + timedelta(seconds=7 + int(i * SPREAD / n))
            builds[s] = f"{i:08x}-0000-4000-8000-{i:012x}"
            meter.rollout_services[rollout_key(s, ENVIRONMENT, REGION, builds[s][:8])] = s
            events.append((build_at[s], len(events), f"build:{s}", _build(engine, s, builds[s], self.project, clock)))
        for s, (when, kind, act) in _probe_plan(probe_services, builds, self.project, clock, engine):
            events.append((build_at[s] + when, len(events), f"{kind}:{s}", act))
        events.sort(key=lambda e: (e[0], e[1]))

        wall = time.perf_counter()
        ticks: list[TickCost] = []
        states: dict[str, str] = {}
        after = 0
        next_tick = T0 + timedelta(seconds=TICK)
        with redirect_stdout(sink):
            while True:
                while events and events[0][0] < next_tick:
                    at, _, kind, act = events.pop(0)
                    clock[0] = at
                    with meter.entry(*kind.split(":")):
                        act()
                clock[0] = next_tick
                with meter.off():
                    states = _states(store, meter)
                in_flight = sum(1 for st in states.values() if st not in TERMINAL)
                before, started = Counter(meter.totals), time.perf_counter()
                with meter.entry("tick"):
                    engine.on_tick(messages.parse_tick(f"bench-{next_tick:%H%M}"))
                spent = Counter(meter.totals)
                spent.subtract(before)
                ticks.append(TickCost(next_tick, in_flight, sum(spent[o] for o in READS),
                                      sum(spent[o] for o in WRITES), sum(spent[o] for o in CLOUD_RUN),
                                      sum(spent[o] for o in MONITORING), time.perf_counter() - started))
                clock[0] = next_tick + timedelta(seconds=2)  # Pub/Sub hands the samples on
                for payload in bus.take_health():
                    token = messages.sender_token(payload, {})
                    sample = messages.parse_health(payload)
                    with meter.entry("health", meter.rollout_services.get(sample.rollout_id or "")):
                        engine.on_health(sample, token, messages.payload_digest(payload))
                done = len(states) == n and in_flight == 0 and not events
                after = after + 1 if done else 0
                if after > AFTER:
                    break
                if next_tick - T0 > MAX_SIMULATED:
                    raise RuntimeError(f"rollouts still in flight after {MAX_SIMULATED} simulated: "
                                       f"{ {s: st for s, st in states.items() if st not in TERMINAL} }; "
                                       f"engine errors: {sink.problems[:5]}")
                next_tick += timedelta(seconds=TICK)
        seconds = time.perf_counter() - wall
        with meter.off():
            finished = _finished(store, meter)
        return Result(n=n, specs=specs, clean=clean, probes=probe_services, meter=meter, ticks=ticks,
                      states=states, simulated=next_tick - T0, seconds=seconds, logs=sink,
                      durations={s: finished[s] - build_at[s] for s in finished},
                      expected={s: "rolled_back" if s in probe_services[1:2] else "succeeded" for s in services})


def _count_handles(engine: Engine, meter: Meter) -> None:
    """Attribute what `Engine.handle` does to the rollout it handles, and nested inputs to their own type."""
    original = engine.handle

    def handle(rollout_id: str, inp: Any, snap: Any = None) -> Any:
        nested = inp.kind in NESTED
        kind = _kind.set(inp.kind if nested else _kind.get())
        service = _service.set(meter.rollout_services.get(rollout_id, _service.get()))
        if not meter.paused:
            with meter._lock:
                meter.handled[inp.kind] += 1
                if nested:
                    meter.inputs[inp.kind] += 1
        try:
            return original(rollout_id, inp, snap)
        finally:
            _service.reset(service)
            _kind.reset(kind)

    engine.handle = handle  # type: ignore[method-assign]  # the engine calls self.handle: this one


def _stable(service: str) -> str:
    return f"{service}-v1-00000000"


def _seed(store: Store, services: list[str], project: str) -> None:
    """Specs and service records, as if every service had had one successful rollout before."""
    db = store.db
    batch, size = db.batch(), 0
    for s in services:
        spec = RolloutSpec(service=s, regions=[REGION], match=Match(repo=s, branch="main"))
        doc = spec.model_dump(mode="json", exclude_none=True)
        doc.update(applied_at=T0 - timedelta(days=1), applied_by="bench", match_keys=match_keys(spec))
        batch.set(db.collection("specs").document(spec.key), doc)
        batch.set(db.collection("services").document(service_key(s, REGION, ENVIRONMENT)), {
            "service": s, "region": REGION, "environment": ENVIRONMENT, "project": project,
            "stable_revision": _stable(s), "stable_version": "v1", "stable_image": f"img/{s}@sha256:{'0' * 64}",
            "last_rollout": f"{s}-{ENVIRONMENT}-{REGION}-seed", "last_version": "v1", "last_state": "succeeded",
            "active_rollout": None, "updated_at": T0 - timedelta(days=1)})
        size += 2
        if size >= 400:
            batch.commit()
            batch, size = db.batch(), 0
    if size:
        batch.commit()


def _states(store: Store, meter: Meter) -> dict[str, str]:
    out = {}
    for snap in store.db.collection("rollouts").select(["state"]).stream():
        service = meter.rollout_services.get(snap.id)
        if service:
            out[service] = snap.get("state")
    return out


def _finished(store: Store, meter: Meter) -> dict[str, datetime]:
    out = {}
    for snap in store.db.collection("rollouts").select(["finished_at"]).stream():
        service = meter.rollout_services.get(snap.id)
        if service and snap.get("finished_at"):
            out[service] = snap.get("finished_at")
    return out


def _build(engine: Engine, service: str, build_id: str, project: str, clock: list[datetime]) -> Callable[[], None]:
    def deliver() -> None:
        payload = cloud_build("SUCCESS", build_id=build_id, project=project, repo=service, trigger=f"build-{service}",
                              substitutions={"_VERSION": "v2"}, now=clock[0])
        engine._adapter("cloudbuild").builds[build_id] = payload  # Cloud Build knows its builds
        engine.on_build(messages.parse_build(payload, {"buildId": build_id, "status": "SUCCESS"}))
    return deliver


def _probe_plan(probes: list[str], builds: dict[str, str], project: str, clock: list[datetime], engine: Engine
                ) -> list[tuple[str, tuple[timedelta, str, Callable[[], None]]]]:
    """An alert or commands for each probe service, at times after its build."""
    def alert(service: str, state: str) -> Callable[[], None]:
        def deliver() -> None:
            revision = machine.revision_name(service, "v2", builds[service])
            engine.on_alert(messages.parse_alert(incident(
                service, revision, state=state, incident_id=f"0.{service}", project=project, region=REGION,
                started_at=int(clock[0].timestamp()) - 60)))
        return deliver

    def command(service: str, action: str) -> Callable[[], None]:
        def deliver() -> None:
            engine.on_command(messages.parse_command(
                {"action": action, "service": service, "environment": ENVIRONMENT, "region": REGION},
                f"{service}-{action}-{clock[0]:%H%M%S}"), engine._adapter("tokens").token("bench@example.com"))
        return deliver

    plans = [
        [(timedelta(minutes=9), "alert", alert, "closed"), (timedelta(minutes=10), "command", command, "pause"),
         (timedelta(minutes=12), "command", command, "resume")],
        [(timedelta(minutes=10), "alert", alert, "open")],
        [(timedelta(minutes=10), "command", command, "promote")],
    ]
    out = []
    for service, plan in zip(probes, plans):
        for when, kind, make, arg in plan:
            out.append((service, (when, kind, make(service, arg))))
    return out
