"""Cloud Run jobs for release checks, over the Admin API v2 (`run_v2.JobsClient`, `ExecutionsClient`).

A check is a job run once per release, check and environment: a migration before
traffic, an E2E test against a URL. Three calls:

- `ensure`: the job exists and its template is this one (created or updated);
- `run_once`: start the job's one execution, or name the one it already has, so a
  redelivered message never runs a migration twice (the caller derives job names
  unique per release and check);
- `execution`: where a run is (`JobRun`), with what it printed once it has finished.

Nothing here waits for a run: a check takes minutes and a Cloud Function must not
sit on it. `run_once` answers as soon as Cloud Run has created the execution (its
name is in the run operation's metadata); the caller reads it on later ticks.

A run's output: on GCP a job's stdout and stderr are Cloud Logging entries of
resource type `cloud_run_job`, labelled with the execution. They are read over
Logging's REST API (`entries:list`, the request google-cloud-logging's HTTP client
makes) with google-auth's session: google-cloud-logging's generated client has no
REST transport, and its HTTP client takes no per-call timeout, so pitstop does not
depend on it. Logging shows a line seconds after it was written: `JobRun.settled`
says when a finished run's output can be trusted to be complete.

Errors become `JobsError` (a CloudRunError), permanent when retrying cannot help.
No call retries behind the caller's back. The same code talks to GCP and to the
local stand-ins (pitstop.local.jobs, pitstop.local.cloudlogging); only endpoints differ.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Literal, TypeVar

from pitstop.gcp.cloudrun import PERMANENT, CloudRunError, _sent, _status, _transport_errors, call

if TYPE_CHECKING:
    from google.cloud import run_v2

RPC_TIMEOUT = 10.0  # seconds for one request
ENSURE_WAIT = 10.0  # seconds ensure() waits for a job's create or update before answering "not yet" (False)
POLL_FIRST, POLL_MAX = 0.5, 2.0
LOG_LAG = timedelta(seconds=30)  # Cloud Logging may show a line this long after it was written
OUTPUT_LINES = 50  # the newest lines of a run's output that are read
LOGGING_ENDPOINT = "https://logging.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]

RunState = Literal["running", "succeeded", "failed", "cancelled"]
T = TypeVar("T")

# `pitstop-summary: passed=12 failed=1` anywhere in a line; pytest's closing line `== 12 passed, 1 failed in 3.2s ==`.
_SUMMARY = re.compile(r"pitstop-summary:\s*((?:[a-z_]+=\d+\s*)+)")
_PYTEST_WORDS = "passed|failed|skipped|errors?|xfailed|xpassed|warnings?|deselected"
_PYTEST = re.compile(rf"^=*\s*(\d+ (?:{_PYTEST_WORDS})(?:, \d+ (?:{_PYTEST_WORDS}))*)(?: in [\d.]+s\b.*?)?\s*=*$")


class JobsError(CloudRunError):
    """A jobs call failed; `permanent` when retrying cannot help."""


@dataclass(frozen=True)
class JobRun:
    """One execution of a job, as Cloud Run and its output tell."""

    name: str  # projects/P/locations/L/jobs/J/executions/E
    state: RunState
    exit_message: str | None  # the Completed condition's message once finished ("Task … failed with message: …")
    started_at: datetime | None
    finished_at: datetime | None
    log_uri: str
    summary: dict[str, int] | None  # {"passed": 12, "failed": 1} if the output says so
    output: tuple[str, ...] = ()  # the newest lines of its output, oldest first (read once it has finished)
    output_error: str | None = None  # why its output could not be read (no permission to read logs, say)

    def settled(self, now: datetime | None = None) -> bool:
        """Finished, and its output read in full: it has a summary, or Logging has had time to show it all
        (or its output cannot be read at all)."""
        if self.state == "running" or self.finished_at is None:
            return False
        now = now or datetime.now(timezone.utc)
        return self.summary is not None or self.output_error is not None or now - self.finished_at >= LOG_LAG


def job_path(project: str, region: str, job: str) -> str:
    return f"projects/{project}/locations/{region}/jobs/{job}"


def parse_summary(lines: tuple[str, ...] | list[str]) -> dict[str, int] | None:
    """The counts of the last summary line: `pitstop-summary: k=v ...` or pytest's closing line; else None."""
    for line in reversed(lines):
        if found := _SUMMARY.search(line):
            return {k: int(v) for k, v in (pair.split("=") for pair in found.group(1).split())}
        if found := _PYTEST.match(line.strip()):
            counts = {}
            for part in found.group(1).split(", "):
                n, word = part.split(" ")
                counts[{"error": "errors", "warning": "warnings"}.get(word, word)] = int(n)
            return counts
    return None


class Jobs:
    def __init__(self, jobs: run_v2.JobsClient, executions: run_v2.ExecutionsClient, logs: ExecutionLogs) -> None:
        self.jobs = jobs
        self.executions = executions
        self.logs = logs

    @classmethod
    def from_endpoint(cls, endpoint: str | None, logging_endpoint: str | None = None) -> Jobs:
        """GCP with default credentials, or the local stand-ins (REST, anonymous).

        Locally the Cloud Run endpoint also answers Logging's `entries:list`, so
        `logging_endpoint` defaults to `endpoint`.
        """
        from google.cloud.run_v2.services.executions import ExecutionsClient  # late: run_v2 imports are slow
        from google.cloud.run_v2.services.jobs import JobsClient

        from pitstop.gcp.endpoint import google_client

        return cls(google_client(JobsClient, endpoint), google_client(ExecutionsClient, endpoint),
                   ExecutionLogs(logging_endpoint or endpoint))

    # ------------------------------------------------------------ the job

    def ensure(self, project: str, region: str, job: str, image: str, command: list[str] | None,
               args: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None,
               timeout_s: float = 600.0, max_retries: int = 0, wait: float = ENSURE_WAIT,
               service_account: str | None = None) -> bool:
        """Make `job` run `image` with `command` and `args` and `env`, one task of at most `timeout_s`
        seconds, retried `max_retries` times. As in Kubernetes, `command` replaces the image's
        ENTRYPOINT and `args` its CMD: `args=["python", "migrate.py"]` alone runs that in an image
        whose Dockerfile says `CMD ["python", "app.py"]`.

        `service_account`: the identity the job runs as (a check job runs as the service it checks; without
        one Cloud Run picks the project's default compute account, which pitstop may not act as).

        True once Cloud Run has the job so; False if it is still working on it after
        `wait` seconds (ensure again later). Raises JobsError.
        """
        from google.cloud.run_v2.types import Job

        deadline = time.monotonic() + max(wait, 0.0)
        name = job_path(project, region, job)
        where = f"job {job} in {project}/{region}"
        current = self._read_job(name, where)
        if current is None:
            want = Job()
            _set_template(want, image, command, args, env or {}, timeout_s, max_retries, service_account)
            doing = f"creating {where}"
            # ALREADY_EXISTS: another call created it since we read; ensuring again compares and updates.
            op = self._call(lambda: self.jobs.create_job(parent=f"projects/{project}/locations/{region}", job=want,
                                                         job_id=job, timeout=RPC_TIMEOUT, retry=None),
                            doing, _sent, transient={"ALREADY_EXISTS"})
            return self._outcome(op, deadline, doing)
        if _has_template(current, image, command, args, env or {}, timeout_s, max_retries, service_account):
            if not current.reconciling and current.observed_generation == current.generation:
                _check_ready(current, where)
                return True
            return self._watch_job(name, where, deadline)
        current.name = name
        _set_template(current, image, command, args, env or {}, timeout_s, max_retries, service_account)
        doing = f"updating {where} to run {image}"
        op = self._call(lambda: self.jobs.update_job(job=current, timeout=RPC_TIMEOUT, retry=None), doing, _sent)
        return self._outcome(op, deadline, doing)

    # ------------------------------------------------------------ runs

    def run_once(self, project: str, region: str, job: str) -> str:
        """The name of the job's execution: the one it has, else one started now. Does not wait for it.

        Two callers racing both settle on the oldest execution; the one that started a
        second cancels it (its task may have begun: checks must be idempotent anyway).
        """
        name = job_path(project, region, job)
        where = f"job {job} in {project}/{region}"
        runs = self._runs(name, where)
        if runs:
            return runs[0]
        op = self._call(lambda: self.jobs.run_job(name=name, timeout=RPC_TIMEOUT, retry=None), f"running {where}",
                        lambda status: "no execution started" if status in PERMANENT else
                        "an execution may or may not have started; run_once again finds it")
        started = _started(op)
        runs = self._runs(name, where)
        if not runs:
            if started:
                return started
            raise JobsError(f"running {where}: Cloud Run accepted the run but lists no execution yet; "
                            "run_once again finds it")
        if started and started != runs[0]:
            self.cancel(started, quietly=True)
        return runs[0]

    def execution(self, name: str) -> JobRun:
        """Where the execution `name` is; once finished, with its output's newest lines and summary."""
        from google.api_core import exceptions

        try:
            ex = self._call(lambda: self.executions.get_execution(name=name, timeout=RPC_TIMEOUT, retry=None),
                            f"reading execution {name}", "nothing changed", passing=exceptions.NotFound)
        except exceptions.NotFound as err:
            raise JobsError(f"execution {name} does not exist (deleted, or its job was)", permanent=True) from err
        state, message = _state(ex)
        output: tuple[str, ...] = ()
        unreadable = None
        if state != "running":
            try:
                output = self.logs.read(ex)
            except JobsError as err:
                if not err.permanent:
                    raise  # read again on the next call
                unreadable = str(err)  # the outcome stands without its output
        return JobRun(name=name, state=state, exit_message=message, started_at=ex.start_time,
                      finished_at=ex.completion_time if state != "running" else None, log_uri=ex.log_uri,
                      summary=parse_summary(output), output=output, output_error=unreadable)

    def cancel(self, name: str, quietly: bool = False) -> None:
        """Ask Cloud Run to cancel the execution `name` (without waiting); `quietly`: ignore failures."""
        try:
            self._call(lambda: self.executions.cancel_execution(name=name, timeout=RPC_TIMEOUT, retry=None),
                       f"cancelling execution {name}", "it may still run")
        except JobsError:
            if not quietly:
                raise

    # ------------------------------------------------------------ steps

    def _read_job(self, name: str, where: str) -> Any | None:
        from google.api_core import exceptions

        try:
            return self._call(lambda: self.jobs.get_job(name=name, timeout=RPC_TIMEOUT, retry=None),
                              f"reading {where}", "nothing changed", passing=exceptions.NotFound)
        except exceptions.NotFound:
            return None

    def _runs(self, name: str, where: str) -> list[str]:
        """The job's executions, oldest first."""
        from google.api_core import exceptions

        def listed() -> list[Any]:
            return list(self.executions.list_executions(parent=name, timeout=RPC_TIMEOUT, retry=None))

        try:
            runs = self._call(listed, f"listing executions of {where}", "nothing changed", passing=exceptions.NotFound)
        except exceptions.NotFound as err:
            raise JobsError(f"{where} does not exist: ensure it first", permanent=True) from err
        return [r.name for r in sorted(runs, key=lambda r: (r.create_time, r.name))]

    def _watch_job(self, name: str, where: str, deadline: float) -> bool:
        pause = POLL_FIRST
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(pause, remaining))
            job = self._read_job(name, where)
            if job is None:
                raise JobsError(f"{where} was deleted while Cloud Run was updating it", permanent=True)
            if not job.reconciling and job.observed_generation == job.generation:
                _check_ready(job, where)
                return True
            pause = min(pause * 1.5, POLL_MAX)
        return False

    def _outcome(self, op: Any, deadline: float, doing: str) -> bool:
        """True if the job operation finished by `deadline`, False if it is still running."""
        from google.api_core import exceptions
        from google.api_core.future import polling
        from google.api_core.retry import Retry

        try:
            if op.operation.done:
                op.result()
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            op.result(timeout=remaining, retry=Retry(predicate=lambda _: False),
                      polling=polling.DEFAULT_POLLING.with_delay(initial=POLL_FIRST, maximum=POLL_MAX))
            return True
        except TimeoutError:
            return False
        except exceptions.GoogleAPICallError as err:
            if op.operation.done:  # Cloud Run's own verdict (an image it cannot pull, say)
                raise JobsError(f"{doing} failed ({_status(err)}): {err.message}",
                                permanent=_status(err) in PERMANENT) from err
            raise JobsError(f"{doing}: polling its operation failed ({_status(err)}): {err.message}; "
                            "ensure again") from err
        except _transport_errors() as err:
            raise JobsError(f"{doing}: polling its operation failed ({type(err).__name__}: {err}); "
                            "ensure again") from err

    def _call(self, request: Callable[[], T], doing: str, left: str | Callable[[str], str],
              passing: type[Exception] | None = None, transient: set[str] | None = None) -> T:
        return call(request, doing, left, passing, transient, error=JobsError)


class ExecutionLogs:
    """The newest lines a job execution wrote, from Cloud Logging's REST API (`entries:list`)."""

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = (endpoint or LOGGING_ENDPOINT).rstrip("/")
        self.local = endpoint is not None
        self._session: Any = None

    def read(self, execution: Any) -> tuple[str, ...]:
        """At most OUTPUT_LINES lines, oldest first. Raises JobsError."""
        _, project, _, location, _, job, _, short = execution.name.split("/")
        terms = ['resource.type="cloud_run_job"', f'resource.labels.job_name="{job}"',
                 f'resource.labels.location="{location}"', f'labels."run.googleapis.com/execution_name"="{short}"']
        if execution.create_time:  # bounds the search; truncated to microseconds, so still inclusive
            terms.append(f'timestamp>="{execution.create_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}"')
        body = {"resourceNames": [f"projects/{project}"], "filter": " AND ".join(terms),
                "orderBy": "timestamp desc", "pageSize": OUTPUT_LINES}
        doing = f"reading the output of execution {short} from Cloud Logging"
        try:
            response = self._authorized().post(f"{self.endpoint}/v2/entries:list", json=body, timeout=RPC_TIMEOUT)
        except _transport_errors() as err:
            raise JobsError(f"{doing} failed ({type(err).__name__}: {err})") from err
        if response.status_code != 200:
            status = _rest_status(response)
            raise JobsError(f"{doing} failed (HTTP {response.status_code} {status}): {response.text[:300]}",
                            permanent=status in PERMANENT)
        entries = response.json().get("entries", [])
        return tuple(_text(e) for e in reversed(entries))

    def _authorized(self) -> Any:
        if self._session is None:
            import google.auth
            from google.auth.credentials import AnonymousCredentials
            from google.auth.transport.requests import AuthorizedSession

            credentials = AnonymousCredentials() if self.local else google.auth.default(scopes=SCOPES)[0]
            self._session = AuthorizedSession(credentials)
        return self._session


def _text(entry: dict[str, Any]) -> str:
    if "textPayload" in entry:
        return str(entry["textPayload"])
    payload = entry.get("jsonPayload") or {}
    return str(payload.get("message", payload))


def _rest_status(response: Any) -> str:
    try:
        return str(response.json()["error"]["status"])
    except Exception:  # not Google's error shape
        return "UNKNOWN"


def _started(op: Any) -> str | None:
    """The execution a run operation started, from its metadata (an Execution)."""
    try:
        return op.metadata.name or None
    except Exception:  # no metadata, or not an Execution
        return None


def _state(ex: Any) -> tuple[RunState, str | None]:
    from google.cloud.run_v2.types import Condition

    completed = next((c for c in ex.conditions if c.type_ == "Completed"), None)
    message = (completed.message or None) if completed else None
    if completed and completed.state == Condition.State.CONDITION_SUCCEEDED:
        return "succeeded", message
    if completed and completed.state == Condition.State.CONDITION_FAILED:
        cancelled = completed.execution_reason == Condition.ExecutionReason.CANCELLED
        return ("cancelled" if cancelled or (ex.cancelled_count and not ex.failed_count) else "failed"), message
    if ex.completion_time is None:
        return "running", None
    if ex.failed_count:
        return "failed", message
    if ex.cancelled_count:
        return "cancelled", message
    return "succeeded", message


def _set_template(job: Any, image: str, command: list[str] | None, args: Any, env: dict[str, str],
                  timeout_s: float, max_retries: int, service_account: str | None = None) -> None:
    from google.cloud.run_v2.types import Container, EnvVar

    job.template.task_count = 1
    job.template.template.service_account = service_account or ""
    job.template.template.max_retries = max_retries
    job.template.template.timeout = timedelta(seconds=timeout_s)
    job.template.template.containers = [Container(image=image, command=list(command or []), args=list(args),
                                                  env=[EnvVar(name=k, value=v) for k, v in sorted(env.items())])]


def _has_template(job: Any, image: str, command: list[str] | None, args: Any, env: dict[str, str],
                  timeout_s: float, max_retries: int, service_account: str | None = None) -> bool:
    task = job.template.template
    if len(task.containers) != 1 or (service_account and task.service_account != service_account):
        return False
    c = task.containers[0]
    return (c.image == image and list(c.command) == list(command or []) and list(c.args) == list(args)
            and {e.name: e.value for e in c.env} == env and task.max_retries == max_retries
            and task.timeout == timedelta(seconds=timeout_s) and job.template.task_count in (0, 1))


def _check_ready(job: Any, where: str) -> None:
    from google.cloud.run_v2.types import Condition

    if job.terminal_condition.state == Condition.State.CONDITION_FAILED:
        raise JobsError(f"{where} is not ready: {job.terminal_condition.message}", permanent=True)
