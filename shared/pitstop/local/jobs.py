"""Local Cloud Run jobs: the Admin API v2 jobs and executions, served by the local Cloud Run.

The same endpoint as services, reached by the real clients over REST:

    run_v2.JobsClient(credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=local_cloud_run.url))   # and ExecutionsClient

Jobs: create (`jobId`), get, list, update (PATCH, `allowMissing`), delete, `:run`
(with `overrides`). Executions: get, list (newest first), delete, `:cancel`.
Create, update and delete answer finished operations; `:run` answers one that
finishes with the execution: its `response` is the Execution when every task
succeeded, else its `error` is the failure, as GCP's Workflows connector reports
a failed run; its `metadata` is the Execution from the start, so a caller learns
the execution's name without waiting.

An execution runs each task as a real local process of the job's image (see
images.py: command and args as Kubernetes combines them, env from image,
template and overrides) with the variables Cloud Run sets: CLOUD_RUN_JOB,
CLOUD_RUN_EXECUTION, CLOUD_RUN_TASK_INDEX, CLOUD_RUN_TASK_COUNT,
CLOUD_RUN_TASK_ATTEMPT. A task attempt is killed at the task timeout and
retried up to `max_retries` times (3 when unset, as on Cloud Run). Each
attempt's stdout, stderr and outcome (exit code, times) stay in the state
directory, where the local Logging (cloudlogging.py) reads them:

    jobs/PROJECT/LOCATION/JOB/EXECUTION/task0-attempt0.{stdout.log,stderr.log,json}

Where a local image "lives": its working directory is the directory of the
script its manifest runs (a Dockerfile's WORKDIR holding the app), and `python`
or `python3` there is the image's interpreter, so a job's `python migrate.py`
runs next to `app.py` as it would in the container. A container `working_dir` wins.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import secrets
import signal
import string
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from google.cloud.run_v2.types import condition as condition_types
from google.cloud.run_v2.types import execution as execution_types
from google.cloud.run_v2.types import job as job_types
from google.cloud.run_v2.types import task_template as task_template_types
from google.protobuf import json_format

from pitstop.local.googleapi import ApiError, invalid, not_found
from pitstop.local.images import ImageManifest, ImageNotFound, resolve_image
from pitstop.local.revisions import REGION_ENV, STOP_GRACE_S, RevisionFailed, launch_spec

log = logging.getLogger(__name__)

Job = job_types.Job
Execution = execution_types.Execution
ExecutionReference = job_types.ExecutionReference
RunJobRequest = job_types.RunJobRequest
TaskTemplate = task_template_types.TaskTemplate
Condition = condition_types.Condition
State = Condition.State
Reason = Condition.ExecutionReason
Completion = ExecutionReference.CompletionStatus

JOB_TYPE_URL = "type.googleapis.com/google.cloud.run.v2.Job"
EXECUTION_TYPE_URL = "type.googleapis.com/google.cloud.run.v2.Execution"
FAILED_PRECONDITION = 9  # google.rpc.Code, for failed operations
CANCELLED = 1

JOB_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DEFAULT_MAX_RETRIES = 3  # Cloud Run's when the template sets none
MAX_RETRIES_LIMIT = 10
DEFAULT_TIMEOUT = timedelta(minutes=10)
MAX_TIMEOUT = timedelta(days=7)
POLL_S = 0.05
# Job fields only the server sets: an update's body cannot change them.
OUTPUT_ONLY = frozenset({
    "name", "uid", "generation", "createTime", "updateTime", "deleteTime", "expireTime", "creator",
    "lastModifier", "observedGeneration", "terminalCondition", "conditions", "executionCount",
    "latestCreatedExecution", "reconciling", "satisfiesPzs", "etag",
})
_SUFFIX = string.ascii_lowercase + string.digits


@dataclass
class _Run:
    """One execution: its resource, the processes of its running attempts, and a way to stop them."""

    resource: Execution
    log_dir: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  # by task index
    finished: threading.Event = field(default_factory=threading.Event)


@dataclass
class _JobState:
    resource: Job
    runs: dict[str, _Run] = field(default_factory=dict)  # by execution id


@dataclass(frozen=True)
class _Outcome:
    status: str  # "succeeded", "failed" or "cancelled"
    message: str = ""


class LocalJobs:
    """Jobs and their executions, for the local Cloud Run that serves them (see route())."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._jobs: dict[str, _JobState] = {}
        self._operations: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    def stop(self) -> None:
        """Kill every running task; their executions end cancelled."""
        with self._lock:
            runs = [r for j in self._jobs.values() for r in j.runs.values()]
        for run in runs:
            run.cancel.set()
        for run in runs:
            run.finished.wait(STOP_GRACE_S + 5)

    def task_pids(self) -> list[int]:
        """Pids of the task processes running now."""
        with self._lock:
            return [p.pid for j in self._jobs.values() for r in j.runs.values() for p in r.processes.values()]

    # --- jobs ------------------------------------------------------------

    def create_job(self, parent: str, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if not JOB_ID.match(job_id):
            raise invalid(
                f"Job id '{job_id}' is invalid: use lowercase letters, digits and '-', start with a letter, "
                "do not end with '-', at most 63 characters."
            )
        spec = _parse(Job, body, "Job")
        _check_template(spec)
        name = f"{parent}/jobs/{job_id}"
        with self._lock:
            if name in self._jobs:
                raise ApiError(409, "ALREADY_EXISTS", f"Job '{job_id}' already exists in {parent}.")
            job = _with_outputs(spec, Job(name=name, uid=str(uuid.uuid4()), create_time=_now()))
            self._jobs[name] = _JobState(resource=job)
            return self._settle_job(job)

    def update_job(self, name: str, body: dict[str, Any], allow_missing: bool) -> dict[str, Any]:
        spec = _parse(Job, body, "Job")
        if spec.name and spec.name != name:
            raise invalid(f"job.name '{spec.name}' does not match the URL's '{name}'.")
        with self._lock:
            state = self._jobs.get(name)
            if state is not None:
                _check_template(spec)
                state.resource = _with_outputs(spec, state.resource)
                return self._settle_job(state.resource)
        if not allow_missing:
            raise not_found(f"Job '{name}' not found.")
        parent, _, job_id = name.rpartition("/jobs/")
        return self.create_job(parent, job_id, body)

    def get_job(self, name: str) -> dict[str, Any]:
        with self._lock:
            return _to_json(self._job(name).resource)

    def list_jobs(self, parent: str) -> dict[str, Any]:
        with self._lock:
            jobs = [_to_json(j.resource) for n, j in sorted(self._jobs.items()) if n.startswith(parent + "/")]
        return {"jobs": jobs} if jobs else {}

    def delete_job(self, name: str) -> dict[str, Any]:
        with self._lock:
            state = self._job(name)
            del self._jobs[name]
            state.resource.delete_time = _now()
        for run in state.runs.values():
            run.cancel.set()
        log.info("job deleted", extra={"job": name})
        with self._lock:
            return self._operation(name, JOB_TYPE_URL, state.resource, done=True)

    def run_job(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        request = _parse(RunJobRequest, body, "RunJobRequest")
        with self._lock:
            state = self._job(name)
            job = state.resource
            if job.terminal_condition.state == State.CONDITION_FAILED:
                raise ApiError(400, "FAILED_PRECONDITION",
                               f"Job '{name}' is not ready: {job.terminal_condition.message}")
            execution = self._new_execution(job, request.overrides)
            if request.validate_only:
                return self._operation(execution.name, EXECUTION_TYPE_URL, execution, done=True)
            short = execution.name.rsplit("/", 1)[1]
            project, location = name.split("/")[1], name.split("/")[3]
            run = _Run(execution, self.state_dir / "jobs" / project / location / _short(name) / short)
            execution.log_uri = run.log_dir.as_uri()
            state.runs[short] = run
            job.execution_count += 1
            job.latest_created_execution = ExecutionReference(
                name=execution.name, create_time=execution.create_time, completion_status=Completion.EXECUTION_RUNNING)
            op_name = self._operation(execution.name, EXECUTION_TYPE_URL, execution)["name"]
        threading.Thread(target=self._execute, args=(state, run, op_name), name=f"execution {short}",
                         daemon=True).start()
        log.info("job execution started", extra={"job": name, "execution": short})
        return self.get_operation(op_name)

    # --- executions and operations ----------------------------------------

    def get_execution(self, name: str) -> dict[str, Any]:
        with self._lock:
            return _to_json(self._run(name).resource)

    def list_executions(self, job_name: str) -> dict[str, Any]:
        with self._lock:
            runs = sorted(self._job(job_name).runs.values(), key=lambda r: r.resource.create_time, reverse=True)
            executions = [_to_json(r.resource) for r in runs]
        return {"executions": executions} if executions else {}

    def delete_execution(self, name: str) -> dict[str, Any]:
        with self._lock:
            run = self._run(name)
            job_name = name.split("/executions/")[0]
            del self._jobs[job_name].runs[_short(name)]
            run.resource.delete_time = _now()
        run.cancel.set()
        run.finished.wait(STOP_GRACE_S + 5)
        with self._lock:
            return self._operation(name, EXECUTION_TYPE_URL, run.resource, done=True)

    def cancel_execution(self, name: str) -> dict[str, Any]:
        with self._lock:
            run = self._run(name)
        run.cancel.set()
        run.finished.wait(STOP_GRACE_S + 5)
        with self._lock:
            return self._operation(name, EXECUTION_TYPE_URL, run.resource, done=run.finished.is_set())

    def get_operation(self, name: str) -> dict[str, Any]:
        with self._lock:
            if name not in self._operations:
                raise not_found(f"Operation '{name}' not found.")
            return dict(self._operations[name])

    # --- running ----------------------------------------------------------

    def _new_execution(self, job: Job, overrides: RunJobRequest.Overrides) -> Execution:
        template = _copy(job.template)
        task = template.template
        if overrides.container_overrides:
            _apply_overrides(task, overrides.container_overrides)
        if overrides.task_count:
            template.task_count = overrides.task_count
        if overrides.timeout:
            task.timeout = overrides.timeout
        if not TaskTemplate.pb(task).HasField("max_retries"):
            task.max_retries = DEFAULT_MAX_RETRIES
        if not task.timeout:
            task.timeout = DEFAULT_TIMEOUT
        task_count = template.task_count or 1
        job_id = _short(job.name)
        return Execution(
            name=f"{job.name}/executions/{job_id}-{''.join(secrets.choice(_SUFFIX) for _ in range(5))}",
            uid=str(uuid.uuid4()),
            generation=1,
            observed_generation=1,
            labels=template.labels,
            annotations=template.annotations,
            create_time=_now(),
            update_time=_now(),
            job=job_id,
            parallelism=min(template.parallelism or task_count, task_count),
            task_count=task_count,
            template=task,
            reconciling=True,
            conditions=[_condition("ResourcesAvailable", State.CONDITION_SUCCEEDED, ""),
                        _condition("Completed", State.CONDITION_PENDING, "")],
            etag=_etag(),
        )

    def _execute(self, state: _JobState, run: _Run, op_name: str) -> None:
        execution = run.resource
        try:
            manifest = resolve_image(self.state_dir, execution.template.containers[0].image)
            with self._lock:
                execution.start_time = _now()
                execution.conditions.insert(1, _condition("Started", State.CONDITION_SUCCEEDED, ""))
            with ThreadPoolExecutor(execution.parallelism, thread_name_prefix=_short(execution.name)) as pool:
                outcomes = list(pool.map(lambda i: self._run_task(run, manifest, i), range(execution.task_count)))
        except ImageNotFound as e:
            outcomes = [_Outcome("failed", str(e))] * execution.task_count
        except Exception as e:  # a bug here must not leave the client polling forever
            log.exception("execution failed unexpectedly", extra={"execution": execution.name})
            outcomes = [_Outcome("failed", f"Local Cloud Run bug: {e!r}")] * execution.task_count
        try:
            with self._lock:
                self._complete(state, run, outcomes, op_name)
        finally:  # whatever happens, nobody waits on this run forever (stop, operation polls)
            run.finished.set()

    def _run_task(self, run: _Run, manifest: ImageManifest, index: int) -> _Outcome:
        task = run.resource.template
        message = ""
        for attempt in range(task.max_retries + 1):
            if run.cancel.is_set():
                return _Outcome("cancelled")
            if attempt == 1:
                with self._lock:
                    run.resource.retried_count += 1
            code, message = self._attempt(run, manifest, index, attempt)
            if code == 0:
                self._count(run, succeeded_count=1)
                return _Outcome("succeeded")
            if run.cancel.is_set():
                return _Outcome("cancelled")
        self._count(run, failed_count=1)
        return _Outcome("failed", f"Task {_short(run.resource.name)}-task{index} failed with message: {message}")

    def _attempt(self, run: _Run, manifest: ImageManifest, index: int, attempt: int) -> tuple[int | None, str]:
        """Run one attempt of a task to its end; (exit code or None, what happened)."""
        execution = run.resource
        container = execution.template.containers[0]
        name = execution.name
        where = run.log_dir / f"task{index}-attempt{attempt}"
        run.log_dir.mkdir(parents=True, exist_ok=True)
        record = {"task_index": index, "attempt": attempt, "start_time": _iso(_now()), "end_time": None,
                  "exit_code": None, "message": ""}
        _write_json(Path(f"{where}.json"), record)  # the local Logging reads a running attempt's output too
        code: int | None = None
        try:
            spec = launch_spec(manifest, command=list(container.command), args=list(container.args),
                               env={e.name: e.value for e in container.env},
                               platform_env={"CLOUD_RUN_JOB": execution.job, "CLOUD_RUN_EXECUTION": _short(name),
                                             "CLOUD_RUN_TASK_INDEX": str(index),
                                             "CLOUD_RUN_TASK_COUNT": str(execution.task_count),
                                             "CLOUD_RUN_TASK_ATTEMPT": str(attempt),
                                             REGION_ENV: name.split("/")[3]})
            argv, cwd = _in_image(manifest, spec.argv, container.working_dir)
            with open(f"{where}.stdout.log", "wb") as out, open(f"{where}.stderr.log", "wb") as err:
                process = subprocess.Popen(argv, env={**os.environ, **spec.env}, cwd=cwd, stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=err, start_new_session=True)
        except (RevisionFailed, OSError) as e:
            message = f"The container could not start: {e}"
            Path(f"{where}.stderr.log").write_text(message + "\n")
        else:
            with self._lock:
                run.processes[index] = process
                execution.running_count += 1
            log.info("task started", extra={"execution": name, "task": index, "attempt": attempt,
                                            "pid": process.pid, "argv": argv})
            code, message = _wait(process, execution.template.timeout.total_seconds(), run.cancel)
            with self._lock:
                del run.processes[index]
                execution.running_count -= 1
        _write_json(Path(f"{where}.json"), record | {"end_time": _iso(_now()), "exit_code": code, "message": message})
        return code, message

    def _count(self, run: _Run, **counts: int) -> None:
        with self._lock:
            for field_name, n in counts.items():
                setattr(run.resource, field_name, getattr(run.resource, field_name) + n)

    def _complete(self, state: _JobState, run: _Run, outcomes: list[_Outcome], op_name: str) -> None:
        execution = run.resource
        now = _now()
        execution.completion_time = now
        execution.update_time = now
        execution.reconciling = False
        execution.running_count = 0
        execution.succeeded_count = sum(o.status == "succeeded" for o in outcomes)
        execution.failed_count = sum(o.status == "failed" for o in outcomes)
        execution.cancelled_count = sum(o.status == "cancelled" for o in outcomes)
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:
            status, reason = Completion.EXECUTION_FAILED, Reason.NON_ZERO_EXIT_CODE
            message = failed[0].message if len(outcomes) == 1 else (
                f"Execution {_short(execution.name)} has failed to complete, "
                f"{execution.succeeded_count}/{len(outcomes)} tasks were a success. {failed[0].message}")
            completed = _condition("Completed", State.CONDITION_FAILED, message, reason)
            error: dict[str, Any] | None = {"code": FAILED_PRECONDITION, "message": message}
        elif execution.cancelled_count:
            status, reason = Completion.EXECUTION_CANCELLED, Reason.CANCELLED
            message = "The execution was cancelled."
            completed = _condition("Completed", State.CONDITION_FAILED, message, reason)
            error = {"code": CANCELLED, "message": message}
        else:
            status = Completion.EXECUTION_SUCCEEDED
            seconds = (now - execution.start_time).total_seconds()
            completed = _condition("Completed", State.CONDITION_SUCCEEDED,
                                   f"Execution completed successfully in {seconds:.2f}s.")
            error = None
        execution.conditions = [c for c in execution.conditions if c.type_ != "Completed"] + [completed]
        execution.etag = _etag()
        latest = state.resource.latest_created_execution
        if latest.name == execution.name:
            latest.completion_time = now
            latest.completion_status = status
        self._operation(execution.name, EXECUTION_TYPE_URL, execution, done=True, error=error, name=op_name)
        log.info("job execution finished", extra={"execution": execution.name, "status": status.name,
                                                  "detail": completed.message})  # `message` is LogRecord's own

    # --- helpers ----------------------------------------------------------

    def _settle_job(self, job: Job) -> dict[str, Any]:
        """A create or update is done at once: the job is ready if its image resolves."""
        job.generation += 1
        job.observed_generation = job.generation
        job.update_time = _now()
        job.reconciling = False
        job.etag = _etag()
        image = job.template.template.containers[0].image
        try:
            resolve_image(self.state_dir, image)
        except ImageNotFound as e:
            job.terminal_condition = _condition("Ready", State.CONDITION_FAILED, str(e))
            return self._operation(job.name, JOB_TYPE_URL, job, done=True,
                                   error={"code": FAILED_PRECONDITION, "message": str(e)})
        job.terminal_condition = _condition("Ready", State.CONDITION_SUCCEEDED, "")
        log.info("job ready", extra={"job": job.name, "generation": job.generation})
        return self._operation(job.name, JOB_TYPE_URL, job, done=True)

    def _operation(self, resource_name: str, type_url: str, resource: Job | Execution, done: bool = False,
                   error: dict[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
        """Record an operation on `resource` (a new one, or `name` again); done ones carry the response or error."""
        location = resource_name.split("/jobs/")[0]
        body = {"@type": type_url, **_to_json(resource)}
        op: dict[str, Any] = {"name": name or f"{location}/operations/{uuid.uuid4()}", "metadata": body, "done": done}
        if done and error is not None:
            op["error"] = error
        elif done:
            op["response"] = body
        self._operations[op["name"]] = op
        return dict(op)

    def _job(self, name: str) -> _JobState:
        state = self._jobs.get(name)
        if state is None:
            raise not_found(f"Job '{name}' not found.")
        return state

    def _run(self, name: str) -> _Run:
        job_name, _, short = name.partition("/executions/")
        run = self._job(job_name).runs.get(short)
        if run is None:
            raise not_found(f"Execution '{name}' not found.")
        return run

    # --- HTTP -------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, list[str]],
              body: dict[str, Any]) -> tuple[Callable[[], dict[str, Any]], bool] | None:
        """The call answering this request and whether it changes anything, or None if it is not for jobs."""
        for verb, pattern, action in _ROUTES:
            match = pattern.match(path)
            if verb == method and match:
                resource = match.group(1)
                if action == "create_job":
                    return lambda: self.create_job(resource, query.get("jobId", [""])[0], body), True
                if action == "update_job":
                    allow = query.get("allowMissing", ["false"])[0] == "true"
                    return lambda: self.update_job(resource, body, allow), True
                if action == "run_job":
                    return lambda: self.run_job(resource, body), True
                return (lambda: getattr(self, action)(resource)), method != "GET"
        return None


_P = r"projects/[^/]+/locations/[^/]+"
_J = rf"{_P}/jobs/[^/:]+"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"^/v2/({_P})/jobs$"), "create_job"),
    ("GET", re.compile(rf"^/v2/({_P})/jobs$"), "list_jobs"),
    ("GET", re.compile(rf"^/v2/({_J})$"), "get_job"),
    ("PATCH", re.compile(rf"^/v2/({_J})$"), "update_job"),
    ("DELETE", re.compile(rf"^/v2/({_J})$"), "delete_job"),
    ("POST", re.compile(rf"^/v2/({_J}):run$"), "run_job"),
    ("GET", re.compile(rf"^/v2/({_J})/executions$"), "list_executions"),
    ("GET", re.compile(rf"^/v2/({_J}/executions/[^/:]+)$"), "get_execution"),
    ("DELETE", re.compile(rf"^/v2/({_J}/executions/[^/:]+)$"), "delete_execution"),
    ("POST", re.compile(rf"^/v2/({_J}/executions/[^/:]+):cancel$"), "cancel_execution"),
]


def _wait(process: subprocess.Popen[bytes], timeout_s: float, cancel: threading.Event) -> tuple[int | None, str]:
    """Wait for a task's process; kill it at the timeout or on cancel. (exit code, message)."""
    deadline = time.monotonic() + timeout_s
    while (code := process.poll()) is None:
        if cancel.is_set():
            _stop(process)
            return None, "The execution was cancelled."
        if time.monotonic() >= deadline:
            _stop(process)
            return None, f"The configured timeout was reached ({timeout_s:g}s)."
        cancel.wait(min(POLL_S, max(0.0, deadline - time.monotonic())))
    _signal_group(process.pid, signal.SIGKILL)  # what it spawned goes with it, as with the container
    if code == 0:
        return 0, ""
    return code, f"Container called exit({code})." if code > 0 else f"Container was killed by signal {-code}."


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the task's process group, SIGKILL what is left after the grace period."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _write_json(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _in_image(manifest: ImageManifest, argv: list[str], working_dir: str) -> tuple[list[str], str | None]:
    """The argv and working directory of a command run "inside" a local image (see the module docstring)."""
    entry = manifest.command + manifest.args  # ENTRYPOINT and CMD: where the image's app and interpreter are
    interpreter = entry[0] if entry and os.path.isabs(entry[0]) and Path(entry[0]).name.startswith("python") else None
    if interpreter and argv[0] in ("python", "python3"):
        argv = [interpreter, *argv[1:]]
    script = next((a for a in entry[1:] if os.path.isabs(a) and os.path.isfile(a)), None)
    workdir = str(Path(script).parent) if script else None
    if working_dir:
        workdir = working_dir if os.path.isabs(working_dir) or workdir is None else os.path.join(workdir, working_dir)
    return argv, workdir


def _apply_overrides(task: TaskTemplate, overrides: list[RunJobRequest.Overrides.ContainerOverride]) -> None:
    """Container overrides as Cloud Run applies them: args replace (or `clear_args` clears), env merges."""
    containers = TaskTemplate.pb(task).containers  # raw protobuf: repeated fields change in place
    for override in overrides:
        matches = [c for c in containers if c.name == override.name] if override.name else containers[:1]
        if not matches:
            raise invalid(f"overrides.containerOverrides names container '{override.name}', which the job lacks.")
        container = matches[0]
        if override.args or override.clear_args:
            del container.args[:]
            container.args.extend(override.args)
        env = {e.name: e for e in container.env} | {e.name: type(e).pb(e) for e in override.env}
        del container.env[:]
        container.env.extend(env.values())


def _check_template(job: Job) -> None:
    template = job.template
    task = template.template
    if not task.containers:
        raise invalid("job.template.template.containers must name one container.")
    if len(task.containers) > 1:
        raise invalid("The local Cloud Run runs one container per task; sidecars are not supported.")
    if not task.containers[0].image:
        raise invalid("job.template.template.containers[0].image is required.")
    if template.task_count < 0 or template.parallelism < 0:
        raise invalid("job.template.taskCount and parallelism must not be negative.")
    if not 0 <= task.max_retries <= MAX_RETRIES_LIMIT:
        raise invalid(f"job.template.template.maxRetries must be between 0 and {MAX_RETRIES_LIMIT}, "
                      f"got {task.max_retries}.")
    if task.timeout and not timedelta(0) < task.timeout <= MAX_TIMEOUT:
        raise invalid(f"job.template.template.timeout must be positive and at most {MAX_TIMEOUT}, got {task.timeout}.")


def _copy(message: Any) -> Any:
    return type(message).wrap(copy.deepcopy(type(message).pb(message)))


def _parse(kind: Any, body: dict[str, Any], what: str) -> Any:
    try:
        return kind.wrap(json_format.ParseDict(body, kind.pb(kind())))
    except json_format.ParseError as e:
        raise invalid(f"Invalid {what} JSON: {e}") from e


def _with_outputs(spec: Job, current: Job) -> Job:
    """The body's spec with the server-set fields of the current job."""
    merged = {k: v for k, v in _to_json(spec).items() if k not in OUTPUT_ONLY}
    merged |= {k: v for k, v in _to_json(current).items() if k in OUTPUT_ONLY}
    return Job.wrap(json_format.ParseDict(merged, Job.pb(Job())))


def _to_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(type(message).pb(message), use_integers_for_enums=True)


def _condition(type_: str, state: State, message: str, reason: Reason | None = None) -> Condition:
    severity = Condition.Severity.ERROR if state == State.CONDITION_FAILED else Condition.Severity.SEVERITY_UNSPECIFIED
    condition = Condition(type_=type_, state=state, message=message, severity=severity, last_transition_time=_now())
    if reason is not None:
        condition.execution_reason = reason
    return condition


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _etag() -> str:
    return f'W/"{secrets.token_hex(8)}"'
