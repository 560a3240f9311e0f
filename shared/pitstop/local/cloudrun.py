"""A local Cloud Run: the Admin API v2 subset pitstop calls, over REST.

Production code reaches it through the real client, only the endpoint differs:

    run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=local_cloud_run.url))

Services: create, get, list, update (PATCH, `allowMissing`), delete; revisions:
get, list; long-running operations: get. Bodies are the v2 JSON the client
sends (integer enums, zero values omitted), parsed into the client's own proto
types so a field the real API would reject is rejected here too. The same
endpoint serves jobs and their executions (jobs.py) and, for their output,
Cloud Logging's `entries:list` (cloudlogging.py).

An update that changes the template creates a revision: a real local process
(see revisions.py) started from the image manifest (images.py) and the
container settings. The update's operation finishes once that process answers
HTTP and the router (router.py) sends traffic as asked, or fails with the reason
(process exited, image not found) while the old traffic keeps flowing.
State lives in memory; the state directory holds images and revision logs.

GCP's faults, on request: `fault_rate` is the share of API calls answered
`503 UNAVAILABLE` (Google's JSON error body), drawn from `fault_seed`; half of
the faulted updates are applied before the 503, as when GCP loses an answer.
`slow_operations` keeps every create's and update's operation `done: false`
(the service reconciling, traffic as before) for that many seconds first, as a
slow revision start on GCP does.
"""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import threading
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from google.cloud.run_v2.types import condition as condition_types
from google.cloud.run_v2.types import revision as revision_types
from google.cloud.run_v2.types import service as service_types
from google.cloud.run_v2.types import traffic_target as traffic_types
from google.protobuf import json_format

from pitstop.local.cloudlogging import list_entries
from pitstop.local.googleapi import ApiError, GoogleApiHandler, LocalServer, invalid, not_found
from pitstop.local.images import ImageNotFound, resolve_image
from pitstop.local.jobs import LocalJobs
from pitstop.local.requestlog import RequestLog
from pitstop.local.revisions import (
    REGION_ENV,
    Measured,
    RevisionFailed,
    RevisionProcess,
    UsageSampler,
    launch_spec,
    parse_cpu,
    parse_memory,
)
from pitstop.local.router import Backend, Router

log = logging.getLogger(__name__)

Service = service_types.Service
Revision = revision_types.Revision
Condition = condition_types.Condition
State = Condition.State
TrafficTarget = traffic_types.TrafficTarget
TrafficTargetStatus = traffic_types.TrafficTargetStatus
LATEST = traffic_types.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = traffic_types.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION

SERVICE_TYPE_URL = "type.googleapis.com/google.cloud.run.v2.Service"
FAILED_PRECONDITION = 9  # google.rpc.Code, for failed operations
ABORTED = 10
INTERNAL = 13
QUICK_OPERATION_S = 0.5  # how long a create/update waits to answer an already finished operation

SERVICE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Service fields only the server sets: an update's body cannot change them.
OUTPUT_ONLY = frozenset({
    "name", "uid", "generation", "createTime", "updateTime", "deleteTime", "expireTime",
    "creator", "lastModifier", "observedGeneration", "terminalCondition", "conditions",
    "latestReadyRevision", "latestCreatedRevision", "trafficStatuses", "uri", "urls",
    "satisfiesPzs", "reconciling", "etag",
})


class NotServable(Exception):
    """The traffic asks for a revision that cannot serve."""


@dataclass
class _RevisionState:
    resource: Revision
    template_key: str  # canonical JSON of the template it was made from, name aside
    process: RevisionProcess | None = None
    ready: bool = False


@dataclass
class _ServiceState:
    resource: Service
    revisions: dict[str, _RevisionState] = field(default_factory=dict)  # by short name
    reconciling: threading.Lock = field(default_factory=threading.Lock)  # one rollout at a time


@dataclass(frozen=True)
class _Plan:
    generation: int
    new_revision: str | None  # short name of the revision this update creates


class LocalCloudRun(LocalServer):
    """The API server, its router and the revision processes, in this process."""

    def __init__(
        self,
        state_dir: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        request_log: RequestLog | None = None,
        startup_timeout_s: float = 60.0,
        fault_rate: float = 0.0,
        fault_seed: int | None = None,
        slow_operations: float = 0.0,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate}")
        if slow_operations < 0:
            raise ValueError(f"slow_operations must be >= 0 seconds, got {slow_operations}")
        self.state_dir = Path(state_dir)
        self.request_log = request_log if request_log is not None else RequestLog()
        self.startup_timeout_s = startup_timeout_s
        self.router = Router(self.request_log, host)
        self._services: dict[str, _ServiceState] = {}
        self._operations: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._stopped = False
        self._stopping = threading.Event()  # cuts slow operations short on stop
        self.fault_rate = fault_rate
        self.slow_operations = slow_operations
        self._faults = random.Random(fault_seed)
        self._faults_lock = threading.Lock()
        self.jobs = LocalJobs(self.state_dir)
        # What the revisions use, for the local Monitoring's container/cpu and memory/utilizations.
        self.usage = UsageSampler(self.request_log, self._measured)
        super().__init__(_ApiHandler, host, port, "cloud run api")

    def start(self) -> LocalCloudRun:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._serve()
        self.usage.start()
        log.info("local Cloud Run API listening", extra={"url": self.url})
        return self

    def stop(self) -> None:
        """Stop serving and stop every revision process."""
        self._stopping.set()
        with self._lock:
            self._stopped = True
            processes = [r.process for s in self._services.values() for r in s.revisions.values() if r.process]
        self.usage.stop()
        self._close()
        self.router.stop()
        _stop_processes(processes)
        self.jobs.stop()
        log.info("local Cloud Run stopped", extra={"revision_processes_stopped": len(processes)})

    def _measured(self) -> list[Measured]:
        """The ready revisions' processes with their labels and limits (Cloud Run's defaults unless set)."""
        out = []
        with self._lock:
            for state in self._services.values():
                _, project, _, location, _, service = state.resource.name.split("/")
                for name, revision in state.revisions.items():
                    if not (revision.ready and revision.process):
                        continue
                    limits = revision.resource.containers[0].resources.limits
                    try:
                        cpu, memory = parse_cpu(limits.get("cpu")), parse_memory(limits.get("memory"))
                    except ValueError:
                        continue  # refused when the revision was created; never measured against nonsense
                    out.append(Measured(project, location, service, name, revision.process, cpu, memory))
        return out

    def revision_pids(self) -> list[int]:
        """Pids of all revision processes started so far (for checks that none outlive stop)."""
        with self._lock:
            return [r.process.pid for s in self._services.values() for r in s.revisions.values() if r.process]

    # --- services ---------------------------------------------------------

    def create_service(self, parent: str, service_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if not SERVICE_ID.match(service_id):
            raise invalid(
                f"Service id '{service_id}' is invalid: use lowercase letters, digits and '-', "
                "start with a letter, do not end with '-', at most 49 characters."
            )
        spec = _parse_service(body)
        name = f"{parent}/services/{service_id}"
        with self._lock:
            if name in self._services:
                raise ApiError(409, "ALREADY_EXISTS", f"Service '{service_id}' already exists in {parent}.")
            state = _ServiceState(resource=Service(name=name, uid=str(uuid.uuid4()), create_time=_now()))
            plan = self._plan(state, spec)
            uri = self.router.add_service(name)
            state.resource.uri = uri
            state.resource.urls = [uri]
            self._services[name] = state
            op_name, worker = self._begin(state, spec, plan)
        return self._operation_after(op_name, worker)

    def update_service(self, name: str, body: dict[str, Any], allow_missing: bool) -> dict[str, Any]:
        spec = _parse_service(body)
        if spec.name and spec.name != name:
            raise invalid(f"service.name '{spec.name}' does not match the URL's '{name}'.")
        with self._lock:
            state = self._services.get(name)
            started = self._begin(state, spec, self._plan(state, spec)) if state else None
        if started is None:
            if not allow_missing:
                raise not_found(f"Service '{name}' not found.")
            parent, _, service_id = name.rpartition("/services/")
            return self.create_service(parent, service_id, body)
        return self._operation_after(*started)

    def get_service(self, name: str) -> dict[str, Any]:
        with self._lock:
            return _to_json(self._service_state(name).resource)

    def list_services(self, parent: str) -> dict[str, Any]:
        with self._lock:
            services = [_to_json(s.resource) for n, s in sorted(self._services.items()) if n.startswith(parent + "/")]
        return {"services": services} if services else {}

    def delete_service(self, name: str) -> dict[str, Any]:
        with self._lock:
            state = self._service_state(name)
            del self._services[name]
            state.resource.delete_time = _now()
            processes = [r.process for r in state.revisions.values() if r.process]
        self.router.remove_service(name)
        _stop_processes(processes)
        log.info("service deleted", extra={"service": name})
        with self._lock:
            return self._finish(self._new_operation(state.resource), state.resource, None)

    # --- revisions and operations ----------------------------------------

    def get_revision(self, name: str) -> dict[str, Any]:
        service_name, _, revision = name.partition("/revisions/")
        with self._lock:
            found = self._service_state(service_name).revisions.get(revision)
            if found is None:
                raise not_found(f"Revision '{name}' not found.")
            return _to_json(found.resource)

    def list_revisions(self, service_name: str) -> dict[str, Any]:
        with self._lock:
            states = self._service_state(service_name).revisions.values()
            newest_first = sorted(states, key=lambda r: r.resource.create_time, reverse=True)
            revisions = [_to_json(r.resource) for r in newest_first]
        return {"revisions": revisions} if revisions else {}

    def get_operation(self, name: str) -> dict[str, Any]:
        with self._lock:
            if name not in self._operations:
                return self.jobs.get_operation(name)
            return dict(self._operations[name])

    # --- update: validate, record, reconcile in the background -----------

    def _plan(self, state: _ServiceState, spec: Service) -> _Plan:
        """Validate an update against the current state; decide whether it makes a revision."""
        service_id = state.resource.name.rsplit("/", 1)[1]
        generation = state.resource.generation + 1
        template = spec.template
        if not template.containers:
            raise invalid("service.template.containers must name one container.")
        if len(template.containers) > 1:
            raise invalid("The local Cloud Run runs one container per revision; sidecars are not supported.")
        if not template.containers[0].image:
            raise invalid("service.template.containers[0].image is required.")
        limits = template.containers[0].resources.limits
        try:  # what the usage sampler divides by (revisions.parse_cpu, parse_memory)
            parse_cpu(limits.get("cpu")), parse_memory(limits.get("memory"))
        except ValueError as e:
            raise invalid(f"service.template.containers[0].resources.limits: {e}") from e
        key = _template_key(template)
        new_revision: str | None = None
        if template.revision:
            _check_revision_name(template.revision, service_id)
            existing = state.revisions.get(template.revision)
            if existing is None:
                new_revision = template.revision
            elif existing.template_key != key:
                raise ApiError(
                    409, "ALREADY_EXISTS",
                    f"Revision named '{template.revision}' with different configuration already exists.",
                )
        elif not state.revisions or key != _template_key(state.resource.template):
            new_revision = f"{service_id}-{generation:05d}-{secrets.token_hex(2)[:3]}"
        _check_traffic(spec.traffic, known=set(state.revisions) | {new_revision} - {None})
        return _Plan(generation=generation, new_revision=new_revision)

    def _operation_after(self, op_name: str, worker: threading.Thread) -> dict[str, Any]:
        # Most traffic-only updates finish in milliseconds: answering them done
        # spares the client's first poll, which waits a second.
        worker.join(QUICK_OPERATION_S)
        return self.get_operation(op_name)

    def _begin(self, state: _ServiceState, spec: Service, plan: _Plan) -> tuple[str, threading.Thread]:
        """Record the new spec and generation, then reconcile in the background."""
        service = _with_outputs(spec, state.resource)
        if not service.traffic:
            service.traffic = [TrafficTarget(type_=LATEST, percent=100)]  # Cloud Run's default
        service.generation = plan.generation
        service.update_time = _now()
        service.reconciling = True
        service.terminal_condition = _condition("Ready", State.CONDITION_RECONCILING, "Deploying.")
        service.etag = _etag()
        if plan.new_revision:
            revision = self._new_revision(service, plan.new_revision)
            state.revisions[plan.new_revision] = revision
            service.latest_created_revision = revision.resource.name
        state.resource = service
        op_name = self._new_operation(service)
        worker = threading.Thread(
            target=self._reconcile, args=(state, plan, op_name), name=f"reconcile {service.name}", daemon=True
        )
        worker.start()
        log.info(
            "service update accepted",
            extra={"service": service.name, "generation": plan.generation, "new_revision": plan.new_revision},
        )
        return op_name, worker

    def _new_revision(self, service: Service, short_name: str) -> _RevisionState:
        template = service.template
        resource = Revision(
            name=f"{service.name}/revisions/{short_name}",
            uid=str(uuid.uuid4()),
            generation=1,
            service=service.name,
            labels=template.labels,
            annotations=template.annotations,
            scaling=template.scaling,
            timeout=template.timeout,
            service_account=template.service_account,
            max_instance_request_concurrency=template.max_instance_request_concurrency,
            containers=template.containers,
            create_time=_now(),
            reconciling=True,
            conditions=[_condition("Ready", State.CONDITION_RECONCILING, "Starting.")],
            etag=_etag(),
        )
        return _RevisionState(resource=resource, template_key=_template_key(template))

    def _reconcile(self, state: _ServiceState, plan: _Plan, op_name: str) -> None:
        with state.reconciling:
            try:
                if self._stopping.wait(self.slow_operations) or self._stopped:
                    raise _Abandoned(f"The local cloud stopped while updating '{state.resource.name}'.")
                if plan.new_revision:
                    self._start_revision(state, state.revisions[plan.new_revision])
                with self._lock:
                    if state.resource.generation != plan.generation:
                        # A newer update is queued behind us; it decides the traffic.
                        self._finish(op_name, state.resource, None)
                        return
                    self._route(state)
                    self._settle(state, plan, None)
                    self._finish(op_name, state.resource, None)
            except (RevisionFailed, ImageNotFound, NotServable) as e:
                message = str(e)
                if plan.new_revision and not isinstance(e, NotServable):
                    message = f"Revision '{plan.new_revision}' is not ready and cannot serve traffic. {e}"
                with self._lock:
                    self._settle(state, plan, message)
                    self._finish(op_name, state.resource, {"code": FAILED_PRECONDITION, "message": message})
                log.error("service update failed", extra={"service": state.resource.name, "error": message})
            except _Abandoned as e:
                with self._lock:
                    self._finish(op_name, state.resource, {"code": ABORTED, "message": str(e)})
            except Exception as e:  # a bug here must not leave the client polling forever
                log.exception("reconciling failed unexpectedly", extra={"service": state.resource.name})
                with self._lock:
                    self._finish(op_name, state.resource, {"code": INTERNAL, "message": f"Local Cloud Run bug: {e!r}"})

    def _start_revision(self, state: _ServiceState, revision: _RevisionState) -> None:
        service_id = state.resource.name.rsplit("/", 1)[1]
        project = state.resource.name.split("/", 2)[1]
        location = state.resource.name.split("/locations/", 1)[1].split("/", 1)[0]
        short_name = revision.resource.name.rsplit("/", 1)[1]
        container = revision.resource.containers[0]
        try:
            manifest = resolve_image(self.state_dir, container.image)
            spec = launch_spec(
                manifest,
                command=list(container.command),
                args=list(container.args),
                env={e.name: e.value for e in container.env},
                platform_env={"K_SERVICE": service_id, "K_REVISION": short_name, "K_CONFIGURATION": service_id,
                              # Local only: real Cloud Run sets no region variable (a container asks the
                              # metadata server, /computeMetadata/v1/instance/region). Here it is the
                              # service's location, so a local app can behave per region.
                              REGION_ENV: location},
            )
            # Per project and location too: one service name in several regions has revisions of the same names.
            process = RevisionProcess(short_name, spec, self.state_dir / "revisions" / project / location / service_id,
                                      self.host)
        except (ImageNotFound, RevisionFailed) as e:
            self._revision_failed(revision, str(e))
            raise
        with self._lock:
            abandoned = self._stopped or self._services.get(state.resource.name) is not state
            revision.process = process
            revision.resource.log_uri = process.stderr_path.as_uri()
        if abandoned:
            process.stop()
            raise _Abandoned(f"Service '{state.resource.name}' was deleted or the local cloud stopped.")
        try:
            process.wait_ready(self.startup_timeout_s)
        except RevisionFailed as e:
            self._revision_failed(revision, str(e))
            raise
        with self._lock:
            revision.ready = True
            revision.resource.reconciling = False
            revision.resource.observed_generation = 1
            revision.resource.conditions = [_condition("Ready", State.CONDITION_SUCCEEDED, "")]
            state.resource.latest_ready_revision = revision.resource.name
        log.info("revision ready", extra={"revision": short_name, "port": process.port, "pid": process.pid})

    def _revision_failed(self, revision: _RevisionState, message: str) -> None:
        with self._lock:
            revision.resource.reconciling = False
            revision.resource.conditions = [_condition("Ready", State.CONDITION_FAILED, message)]

    def _route(self, state: _ServiceState) -> None:
        """Point the router at the service's traffic; raise NotServable if a target can't serve."""
        service = state.resource
        latest_ready = service.latest_ready_revision.rsplit("/", 1)[-1]
        split: list[tuple[Backend, int]] = []
        tags: dict[str, Backend] = {}
        for target in service.traffic:
            name = target.revision if target.type_ == REVISION else latest_ready
            revision = state.revisions.get(name)
            if revision is None or not revision.ready or revision.process is None:
                what = f"Revision '{name}'" if target.type_ == REVISION else "No latest ready revision"
                raise NotServable(f"{what} is not ready and cannot serve traffic.")
            backend = Backend(name, revision.process.port)
            split.append((backend, target.percent))
            if target.tag:
                tags[target.tag] = backend
        urls = self.router.set_routes(service.name, split, tags)
        service.traffic_statuses = [
            TrafficTargetStatus(
                type_=t.type_, revision=t.revision, percent=t.percent, tag=t.tag, uri=urls.get(t.tag, "")
            )
            for t in service.traffic
        ]

    def _settle(self, state: _ServiceState, plan: _Plan, error: str | None) -> None:
        """Report the outcome of reconciling `plan` on the service, unless a newer update took over."""
        service = state.resource
        if service.generation != plan.generation:
            return
        service.observed_generation = plan.generation
        service.reconciling = False
        service.update_time = _now()
        service.etag = _etag()
        if error is None:
            service.terminal_condition = _condition("Ready", State.CONDITION_SUCCEEDED, "")
            service.conditions = [
                _condition("ConfigurationsReady", State.CONDITION_SUCCEEDED, ""),
                _condition("RoutesReady", State.CONDITION_SUCCEEDED, ""),
            ]
        else:
            service.terminal_condition = _condition("Ready", State.CONDITION_FAILED, error)

    def _new_operation(self, service: Service) -> str:
        project_location = service.name.split("/services/")[0]
        name = f"{project_location}/operations/{uuid.uuid4()}"
        op = {"name": name, "metadata": {"@type": SERVICE_TYPE_URL, **_to_json(service)}, "done": False}
        self._operations[name] = op
        return name

    def _finish(self, op_name: str, service: Service, error: dict[str, Any] | None) -> dict[str, Any]:
        op = dict(self._operations[op_name], done=True)
        if error is None:
            op["response"] = {"@type": SERVICE_TYPE_URL, **_to_json(service)}
        else:
            op["error"] = error
        self._operations[op_name] = op
        return dict(op)

    def draw_fault(self, mutating: bool) -> str | None:
        """Whether this API call meets an injected fault: None, "before" or (updates only) "after" it applies."""
        if self.fault_rate <= 0:
            return None
        with self._faults_lock:
            if self._faults.random() >= self.fault_rate:
                return None
            return "after" if mutating and self._faults.random() < 0.5 else "before"

    def _service_state(self, name: str) -> _ServiceState:
        state = self._services.get(name)
        if state is None:
            raise not_found(f"Service '{name}' not found.")
        return state


class _Abandoned(Exception):
    """The service went away (deleted, or the cloud stopped) while its revision started."""


def _stop_processes(processes: list[RevisionProcess]) -> None:
    # Each stop may wait out a grace period; do them side by side.
    with ThreadPoolExecutor(max(1, len(processes))) as pool:
        list(pool.map(RevisionProcess.stop, processes))


def _check_revision_name(name: str, service_id: str) -> None:
    if not name.startswith(f"{service_id}-"):
        raise invalid(f"Revision name '{name}' is invalid: it must start with the service name followed by '-' ('{service_id}-').")
    if len(name) > 63 or not DNS_LABEL.match(name):
        raise invalid(
            f"Revision name '{name}' is invalid: use lowercase letters, digits and '-', "
            "do not end with '-', at most 63 characters."
        )


def _check_traffic(traffic: list[TrafficTarget], known: set[str]) -> None:
    tags: set[str] = set()
    for i, target in enumerate(traffic):
        where = f"traffic[{i}]"
        if target.percent < 0 or target.percent > 100:
            raise invalid(f"{where}.percent must be between 0 and 100, got {target.percent}.")
        if target.type_ not in (LATEST, REVISION):
            raise invalid(f"{where}.type must be TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST or _REVISION.")
        if target.type_ == LATEST and target.revision:
            raise invalid(f"{where} is of type LATEST and must not name a revision (got '{target.revision}').")
        if target.type_ == REVISION:
            if not target.revision:
                raise invalid(f"{where} is of type REVISION and must name a revision.")
            if target.revision not in known:
                raise invalid(f"{where} names revision '{target.revision}', which does not exist.")
        if target.tag:
            if len(target.tag) > 63 or not DNS_LABEL.match(target.tag):
                raise invalid(
                    f"{where}.tag '{target.tag}' is invalid: use lowercase letters, digits and '-', "
                    "start with a letter, at most 63 characters."
                )
            if target.tag in tags:
                raise invalid(f"Tag '{target.tag}' is used by more than one traffic target; tags must be unique.")
            tags.add(target.tag)
    total = sum(t.percent for t in traffic)
    if traffic and total != 100:
        raise invalid(f"Traffic percents must add up to 100, got {total}.")


def _parse_service(body: dict[str, Any]) -> Service:
    try:
        return Service.wrap(json_format.ParseDict(body, Service.pb(Service())))
    except json_format.ParseError as e:
        raise invalid(f"Invalid Service JSON: {e}") from e


def _with_outputs(spec: Service, current: Service) -> Service:
    """The body's spec with the server-set fields of the current service."""
    merged = {k: v for k, v in _to_json(spec).items() if k not in OUTPUT_ONLY}
    merged |= {k: v for k, v in _to_json(current).items() if k in OUTPUT_ONLY}
    return Service.wrap(json_format.ParseDict(merged, Service.pb(Service())))


def _to_json(message: Service | Revision) -> dict[str, Any]:
    return json_format.MessageToDict(type(message).pb(message), use_integers_for_enums=True)


def _template_key(template: Any) -> str:
    """What a revision is made of: the template without its name."""
    content = json_format.MessageToDict(type(template).pb(template))
    content.pop("revision", None)
    return json.dumps(content, sort_keys=True)


def _condition(type_: str, state: State, message: str) -> Condition:
    severity = Condition.Severity.ERROR if state == State.CONDITION_FAILED else Condition.Severity.SEVERITY_UNSPECIFIED
    return Condition(type_=type_, state=state, message=message, severity=severity, last_transition_time=_now())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _etag() -> str:
    return f'W/"{secrets.token_hex(8)}"'


# --- HTTP ---------------------------------------------------------------------

_P = r"projects/[^/]+/locations/[^/]+"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"^/v2/({_P})/services$"), "create"),
    ("GET", re.compile(rf"^/v2/({_P})/services$"), "list_services"),
    ("GET", re.compile(rf"^/v2/({_P}/services/[^/:]+)$"), "get_service"),
    ("PATCH", re.compile(rf"^/v2/({_P}/services/[^/:]+)$"), "update"),
    ("DELETE", re.compile(rf"^/v2/({_P}/services/[^/:]+)$"), "delete_service"),
    ("GET", re.compile(rf"^/v2/({_P}/services/[^/:]+)/revisions$"), "list_revisions"),
    ("GET", re.compile(rf"^/v2/({_P}/services/[^/:]+/revisions/[^/:]+)$"), "get_revision"),
    ("GET", re.compile(rf"^/v2/({_P}/operations/[^/:]+)$"), "get_operation"),
]


def _unavailable(method: str, path: str, applied: bool) -> ApiError:
    log.info("injected fault", extra={"method": method, "path": path, "applied": applied})
    return ApiError(503, "UNAVAILABLE", "The service is currently unavailable. (fault injected by the local Cloud Run)")


class _ApiHandler(GoogleApiHandler):
    log = log
    api_name = "the local Cloud Run"

    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        self._answer(path, lambda: self._route(path, urllib.parse.parse_qs(url.query)))

    do_GET = do_POST = do_PATCH = do_DELETE = _dispatch

    def _route(self, path: str, query: dict[str, list[str]]) -> dict[str, Any]:
        cloud: LocalCloudRun = self.server.owner  # type: ignore[attr-defined]
        body = self._json_body()
        if self.command == "POST" and path == "/v2/entries:list":  # Cloud Logging, for the jobs' output
            return list_entries(cloud.state_dir, body)
        found = self._service_call(cloud, path, query, body) or cloud.jobs.route(self.command, path, query, body)
        if found is None:
            raise not_found(f"No such method: {self.command} {path}")
        call, mutating = found
        fault = cloud.draw_fault(mutating)
        if fault == "before":
            raise _unavailable(self.command, path, applied=False)
        result = call()
        if fault == "after":
            raise _unavailable(self.command, path, applied=True)
        return result

    def _service_call(self, cloud: LocalCloudRun, path: str, query: dict[str, list[str]],
                      body: dict[str, Any]) -> tuple[Callable[[], dict[str, Any]], bool] | None:
        """The services (or operations) call answering this request and whether it changes anything."""
        for method, pattern, action in _ROUTES:
            match = pattern.match(path)
            if method == self.command and match:
                resource = match.group(1)
                if action == "create":
                    return lambda: cloud.create_service(resource, query.get("serviceId", [""])[0], body), True
                if action == "update":
                    allow_missing = query.get("allowMissing", ["false"])[0] == "true"
                    return lambda: cloud.update_service(resource, body, allow_missing), True
                return (lambda: getattr(cloud, action)(resource)), self.command != "GET"
        return None
