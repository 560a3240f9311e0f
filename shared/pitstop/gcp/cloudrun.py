"""Cloud Run traffic, over the Admin API v2 (`run_v2.ServicesClient`).

Three things: start making a service serve a split (creating the new revision in
the same update when asked), read what it serves now (`traffic`), and name the
revision taking most traffic (`serving`).

Cloud Run's updates are long-running operations: a new revision can take minutes
to start. A Cloud Function must not sit on them, so `apply` waits at most `wait`
seconds and otherwise answers None ("still working"); the caller observes the
outcome later with `traffic()`. Applying is idempotent: asking again for a split
Cloud Run is already working on watches it instead of sending a new update.

Errors become `CloudRunError`, marked permanent when retrying cannot help, and
saying what was left in which state; none of them ever judges the new version.
The client never retries behind the caller's back (each call is one request,
bounded by RPC_TIMEOUT): the caller owns the retry budget.

The same code talks to GCP and to the local stand-in (pitstop.local.cloudrun);
only the endpoint differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from pitstop.core.models import Target, describe_split

if TYPE_CHECKING:
    from google.cloud import run_v2

APPLY_WAIT = 5.0  # seconds apply() waits for Cloud Run before answering "pending" (None)
RPC_TIMEOUT = 10.0  # seconds for one request (read, create, update); an operation poll cannot be given one
POLL_FIRST, POLL_MAX = 0.5, 2.0  # seconds between operation polls: short, since the budget is short

# gRPC code names (also in REST error bodies' "status") that retrying cannot fix.
PERMANENT = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "PERMISSION_DENIED",
                       "UNAUTHENTICATED", "NOT_FOUND", "ALREADY_EXISTS", "UNIMPLEMENTED"})
# When a REST error carries no "status", the HTTP status says which code it was.
_STATUS_BY_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                   409: "ABORTED", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                   500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                   504: "DEADLINE_EXCEEDED"}

T = TypeVar("T")


class CloudRunError(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Traffic:
    """What Cloud Run serves now, read from the service (traffic_statuses)."""

    split: list[Target]  # from traffic_statuses (revision name resolved for LATEST entries), tags kept
    settled: bool  # observed_generation == generation, not reconciling, and traffic == traffic_statuses
    latest_ready: str | None  # latest_ready_revision short name
    revisions: frozenset[str]  # revisions named in template/traffic/traffic_statuses (to know if one exists)
    error: str | None = None  # terminal_condition message when the last reconcile failed


def service_path(project: str, region: str, service: str) -> str:
    return f"projects/{project}/locations/{region}/services/{service}"


class CloudRun:
    def __init__(self, client: run_v2.ServicesClient) -> None:
        self.client = client

    @classmethod
    def from_endpoint(cls, endpoint: str | None) -> CloudRun:
        """GCP with default credentials, or a local stand-in at `endpoint` (REST, anonymous)."""
        from google.cloud.run_v2.services.services import ServicesClient  # late: run_v2 imports are slow

        from pitstop.gcp.endpoint import google_client

        return cls(google_client(ServicesClient, endpoint))

    # ------------------------------------------------------------ reading

    def traffic(self, project: str, region: str, service: str) -> Traffic | None:
        """What the service serves now, or None if it does not exist."""
        svc = self._read(service_path(project, region, service), f"service {service} in {project}/{region}")
        return None if svc is None else _traffic(svc)

    def urls(self, project: str, region: str, service: str) -> dict[str, str]:
        """The service's URL (key "") and each traffic tag's URL (key: the tag), as Cloud Run reports them;
        empty if the service does not exist. A check probes the new revision at 0 % on its tag's URL."""
        svc = self._read(service_path(project, region, service), f"service {service} in {project}/{region}")
        if svc is None:
            return {}
        found = {t.tag: t.uri for t in svc.traffic_statuses if t.tag and t.uri}
        return {"": svc.uri, **found} if svc.uri else found

    def runtime_account(self, project: str, region: str, service: str) -> str | None:
        """The service account the service's revisions run as (a check's job runs as it too)."""
        svc = self._read(service_path(project, region, service), f"service {service} in {project}/{region}")
        return (svc.template.service_account or None) if svc is not None else None

    def serving(self, project: str, region: str, service: str) -> str | None:
        """The revision taking most traffic now, or None if the service does not exist."""
        now = self.traffic(project, region, service)
        if now is None:
            return None
        serving = [t for t in now.split if t.percent > 0]
        return max(serving, key=lambda t: t.percent).revision if serving else now.latest_ready

    # ------------------------------------------------------------ applying

    def apply(self, project: str, region: str, service: str, split: list[Target],
              revision: str | None = None, image: str | None = None,
              wait: float = APPLY_WAIT) -> list[Target] | None:
        """Start making Cloud Run serve `split` (deploying `revision` from `image` first if missing).

        Returns the observed split if it is real within `wait` seconds, None if Cloud
        Run is still working on it (observe it later with `traffic()`). Raises
        CloudRunError, permanent when retrying cannot help.
        """
        deadline = time.monotonic() + max(wait, 0.0)
        name = service_path(project, region, service)
        where = f"service {service} in {project}/{region}"
        svc = self._read(name, where)
        if svc is None:
            if revision is None or image is None:
                raise CloudRunError(f"{where} does not exist and no image was given to create it; nothing changed",
                                    permanent=True)
            return self._create(project, region, service, split, revision, image, deadline)

        deploy = bool(revision and image and revision not in _traffic(svc).revisions)
        if not deploy and _same(svc.traffic, split):
            # Asked already (a re-apply, or an earlier call that answered None): watch, don't ask again,
            # which would restart Cloud Run's work. Ask again only if that attempt failed.
            if _in_flight(svc):
                svc = self._watch(name, where, deadline)
                if svc is None:
                    return None
            now = _traffic(svc)
            if _same(svc.traffic, split) and now.settled:
                return now.split

        svc.name = name  # the PATCH is addressed by it; never trust an answer to carry it
        svc.traffic = [_target(t) for t in split]
        if deploy:
            # One update makes the revision and names it in traffic (at 0 % for a canary), the way
            # `gcloud run deploy --tag` does: no window where the new revision could take traffic.
            if not svc.template.containers:
                raise CloudRunError(f"{where} has no container in its template to deploy {image} into; "
                                    "nothing changed", permanent=True)
            svc.template.revision = revision
            svc.template.containers[0].image = image
        doing = f"updating {where} to serve {describe_split(split)}"
        doing += f" with new revision {revision}" if deploy else ""
        op = self._call(lambda: self.client.update_service(service=svc, timeout=RPC_TIMEOUT, retry=None),
                        doing, _sent)
        return self._outcome(op, deadline, doing)

    # ------------------------------------------------------------ steps

    def _create(self, project: str, region: str, service: str, split: list[Target],
                revision: str, image: str, deadline: float) -> list[Target] | None:
        from google.cloud.run_v2.types import Container, RevisionTemplate, Service

        svc = Service(template=RevisionTemplate(revision=revision, containers=[Container(image=image)]),
                      traffic=[_target(t) for t in split])
        doing = f"creating service {service} in {project}/{region} with revision {revision}"
        # ALREADY_EXISTS: another call created it since we read; applying again updates it.
        op = self._call(lambda: self.client.create_service(
            parent=f"projects/{project}/locations/{region}", service=svc, service_id=service,
            timeout=RPC_TIMEOUT, retry=None), doing, _sent, transient={"ALREADY_EXISTS"})
        return self._outcome(op, deadline, doing)

    def _read(self, name: str, where: str) -> Any | None:
        from google.api_core import exceptions

        try:
            return self._call(lambda: self.client.get_service(name=name, timeout=RPC_TIMEOUT, retry=None),
                              f"reading {where}", "nothing changed", passing=exceptions.NotFound)
        except exceptions.NotFound:
            return None

    def _watch(self, name: str, where: str, deadline: float) -> Any | None:
        """Read the service until Cloud Run is done with it; None if not done by `deadline`."""
        pause = POLL_FIRST
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(pause, remaining))
            svc = self._read(name, where)
            if svc is None:
                raise CloudRunError(f"{where} was deleted while Cloud Run was updating it", permanent=True)
            if not _in_flight(svc):
                return svc
            pause = min(pause * 1.5, POLL_MAX)
        return None

    def _outcome(self, op: Any, deadline: float, doing: str) -> list[Target] | None:
        """The operation's observed split if it finishes by `deadline`, None if it is still running."""
        from google.api_core import exceptions
        from google.api_core.future import polling
        from google.api_core.retry import Retry

        try:
            if op.operation.done:  # the update answered done: no poll needed
                return _traffic(op.result()).split
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Polling runs in this thread and stops at the timeout: nothing is left running after it.
            # A failing poll is not retried (the client would for 10 s): the caller owns retries.
            svc = op.result(timeout=remaining, retry=Retry(predicate=lambda _: False),
                            polling=polling.DEFAULT_POLLING.with_delay(initial=POLL_FIRST, maximum=POLL_MAX))
            return _traffic(svc).split
        except TimeoutError:  # concurrent.futures.TimeoutError is this one since 3.11
            return None
        except exceptions.GoogleAPICallError as err:
            if op.operation.done:  # Cloud Run's own verdict on the update
                raise _error(f"{doing} failed", err, "Cloud Run keeps serving the traffic it served before") from err
            raise _error(f"{doing}: polling its operation {op.operation.name} failed", err,
                         "the update was accepted and may still complete; traffic() shows where it got") from err
        except _transport_errors() as err:
            raise CloudRunError(f"{doing}: polling its operation {op.operation.name} failed "
                                f"({type(err).__name__}: {err}); the update was accepted and may still complete; "
                                "traffic() shows where it got") from err

    def _call(self, request: Callable[[], T], doing: str, left: str | Callable[[str], str],
              passing: type[Exception] | None = None, transient: set[str] | None = None) -> T:
        return call(request, doing, left, passing, transient)


def call(request: Callable[[], T], doing: str, left: str | Callable[[str], str],
         passing: type[Exception] | None = None, transient: set[str] | None = None,
         error: type[CloudRunError] | None = None) -> T:
    """One Cloud Run request (services or jobs); its failure as a CloudRunError (or `error`, a subclass) saying
    what is `left` (or computed from the code). `passing` errors are raised as they are; `transient` codes are
    retryable here whatever they are elsewhere."""
    from google.api_core import exceptions

    error = error or CloudRunError
    try:
        return request()
    except exceptions.GoogleAPICallError as err:
        if passing is not None and isinstance(err, passing):
            raise
        status = _status(err)
        raise _error(f"{doing} failed", err, left(status) if callable(left) else left,
                     permanent=status in PERMANENT - (transient or set()), kind=error) from err
    except exceptions.RetryError as err:
        raise error(f"{doing} failed (retries exhausted: {err}); state unknown, applying again is safe") from err
    except _transport_errors() as err:
        raise error(f"{doing} failed ({type(err).__name__}: {err}); the request may or may not "
                    "have reached Cloud Run; applying again is safe") from err


def _sent(status: str) -> str:
    """What state a refused update leaves: a 4xx changed nothing; a 5xx may have been applied anyway."""
    if status in PERMANENT:
        return "nothing changed"
    return "the update may or may not have been applied; applying again is safe"


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection reset, DNS, read timeouts: the REST transport raises these unwrapped."""
    import requests
    from google.auth import exceptions as auth_exceptions

    return (requests.exceptions.RequestException, auth_exceptions.TransportError, ConnectionError)


def _status(err: Any) -> str:
    """The gRPC code name of an API error: from the REST body, the exception, or the HTTP status."""
    response = getattr(err, "response", None)
    if response is not None:
        try:
            status = response.json()["error"]["status"]
            if isinstance(status, str) and status:
                return status
        except Exception:  # not JSON, or not Google's error shape
            pass
    if getattr(err, "grpc_status_code", None) is not None:
        return err.grpc_status_code.name
    return _STATUS_BY_HTTP.get(getattr(err, "code", None), "UNKNOWN")


def _error(what: str, err: Any, left: str, permanent: bool | None = None,
           kind: type[CloudRunError] | None = None) -> CloudRunError:
    status = _status(err)
    code = getattr(err, "code", None)
    # Operation errors come as gRPC codes; their `code` is the HTTP equivalent, worth naming only for REST.
    rest = hasattr(getattr(err, "response", None), "status_code")  # an operation's error carries the operation
    label = f"HTTP {code} {status}" if rest and code else status
    return (kind or CloudRunError)(f"{what} ({label}): {err.message}; {left}",
                                   permanent=status in PERMANENT if permanent is None else permanent)


def _in_flight(svc: Any) -> bool:
    return svc.reconciling or svc.observed_generation != svc.generation


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _key(entries: Any, spec: bool = True) -> list[tuple[int, str, int, str]]:
    """Traffic entries comparable across spec and status: LATEST unresolved, untagged 0 % dropped, unordered."""
    from google.cloud.run_v2.types import TrafficTargetAllocationType

    latest = TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    if not entries and spec:  # an empty traffic spec means 100 % to the latest ready revision
        return [(int(latest), "", 100, "")]
    return sorted((int(t.type_), "" if t.type_ == latest else t.revision, t.percent, t.tag)
                  for t in entries if t.percent > 0 or t.tag)


def _same(traffic: Any, split: list[Target]) -> bool:
    return _key(traffic) == _key([_target(t) for t in split])


def _traffic(svc: Any) -> Traffic:
    from google.cloud.run_v2.types import Condition

    latest = _short(svc.latest_ready_revision) or None
    # A LATEST entry with no ready revision serves nothing: it has no place in the split.
    split = [Target(revision=t.revision or latest, percent=t.percent, tag=t.tag or None)
             for t in svc.traffic_statuses if t.revision or latest]
    named = {svc.template.revision, _short(svc.latest_ready_revision), _short(svc.latest_created_revision)}
    named |= {t.revision for t in svc.traffic} | {t.revision for t in svc.traffic_statuses}
    failed = svc.terminal_condition.state == Condition.State.CONDITION_FAILED
    return Traffic(
        split=split,
        settled=not _in_flight(svc) and _key(svc.traffic) == _key(svc.traffic_statuses, spec=False),
        latest_ready=latest,
        revisions=frozenset(named - {""}),
        error=(svc.terminal_condition.message or svc.terminal_condition.reason.name) if failed else None,
    )


def _target(t: Target) -> Any:
    from google.cloud.run_v2.types import TrafficTarget, TrafficTargetAllocationType

    return TrafficTarget(type_=TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                         revision=t.revision, percent=t.percent, tag=t.tag or "")
