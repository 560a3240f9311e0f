"""Local Cloud Run jobs, driven through the real google-cloud-run REST clients (JobsClient, ExecutionsClient).

Tasks are real processes of a local image: the example app's image runs the example
migration, and a test task (next to the image's app, as in a container's WORKDIR) shows
what Cloud Run gives a task: its variables, args, attempts, a timeout's kill.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from pitstop.local.cloudrun import LocalCloudRun
from pitstop.local.images import register_image

PARENT = "projects/demo/locations/local"
EXAMPLE_APP = Path(__file__).resolve().parents[2] / "examples" / "web" / "app.py"
Condition = run_v2.Condition
Override = run_v2.RunJobRequest.Overrides.ContainerOverride

# Prints what it was given, then behaves as its env says: SLEEP seconds, EXIT code, FAIL_ATTEMPTS first attempts fail.
TASK = '''
import json, os, sys, time
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "python": sys.executable,
                  "env": {k: v for k, v in os.environ.items() if k.startswith(("CLOUD_RUN_", "GREETING", "PORT"))}}))
sys.stdout.flush()
time.sleep(float(os.environ.get("SLEEP", "0")))
if int(os.environ["CLOUD_RUN_TASK_ATTEMPT"]) < int(os.environ.get("FAIL_ATTEMPTS", "0")):
    print("attempt failed on purpose", file=sys.stderr)
    sys.exit(2)
sys.exit(int(os.environ.get("EXIT", "0")))
'''


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("jobs-state")
    image_dir = state / "image"
    image_dir.mkdir()
    (image_dir / "app.py").write_text("print('the app')\n")
    (image_dir / "task.py").write_text(TASK)
    register_image(state, "local/tasks:v1", [sys.executable, str(image_dir / "app.py")])
    register_image(state, "local/web:v1", [sys.executable, str(EXAMPLE_APP)], env={"APP_VERSION": "v1"})
    # A Dockerfile's `CMD ["python", "app.py"]`: no entrypoint, so a container's args replace the whole command.
    register_image(state, "local/cmd:v1", [], args=[sys.executable, str(image_dir / "app.py")])
    return state


@pytest.fixture(scope="module")
def cloud(state: Path) -> Iterator[LocalCloudRun]:
    cloud_run = LocalCloudRun(state).start()
    yield cloud_run
    cloud_run.stop()


def _client(kind: type, cloud: LocalCloudRun):  # noqa: ANN202
    return kind(credentials=AnonymousCredentials(), transport="rest",
                client_options=ClientOptions(api_endpoint=cloud.url))


@pytest.fixture(scope="module")
def jobs(cloud: LocalCloudRun) -> run_v2.JobsClient:
    return _client(run_v2.JobsClient, cloud)


@pytest.fixture(scope="module")
def executions(cloud: LocalCloudRun) -> run_v2.ExecutionsClient:
    return _client(run_v2.ExecutionsClient, cloud)


def job(image: str = "local/tasks:v1", command: tuple[str, ...] = ("python", "task.py"), args: tuple[str, ...] = (),
        env: dict[str, str] | None = None, timeout_s: float = 60, max_retries: int = 0,
        task_count: int = 1) -> run_v2.Job:
    container = run_v2.Container(image=image, command=list(command), args=list(args),
                                 env=[run_v2.EnvVar(name=k, value=v) for k, v in (env or {}).items()])
    task = run_v2.TaskTemplate(containers=[container], timeout=timedelta(seconds=timeout_s), max_retries=max_retries)
    return run_v2.Job(template=run_v2.ExecutionTemplate(task_count=task_count, template=task))


def create(jobs: run_v2.JobsClient, job_id: str, spec: run_v2.Job) -> run_v2.Job:
    return jobs.create_job(parent=PARENT, job=spec, job_id=job_id).result(timeout=10)


def run(jobs: run_v2.JobsClient, job_id: str, *overrides: Override, timeout: float = 30):  # noqa: ANN201
    request = run_v2.RunJobRequest(name=f"{PARENT}/jobs/{job_id}",
                                   overrides=run_v2.RunJobRequest.Overrides(container_overrides=list(overrides)))
    return jobs.run_job(request=request)


def completed(execution: run_v2.Execution) -> run_v2.Condition:
    return next(c for c in execution.conditions if c.type_ == "Completed")


def output(execution: run_v2.Execution, task: int = 0, attempt: int = 0, stream: str = "stdout") -> str:
    log_dir = Path(execution.log_uri.removeprefix("file://"))
    return (log_dir / f"task{task}-attempt{attempt}.{stream}.log").read_text()


# --- jobs -----------------------------------------------------------------


def test_create_get_list_update_delete(jobs: run_v2.JobsClient) -> None:
    created = create(jobs, "crud", job(args=("one",)))
    assert created.name == f"{PARENT}/jobs/crud"
    assert created.generation == 1 and created.observed_generation == 1 and not created.reconciling
    assert created.terminal_condition.state == Condition.State.CONDITION_SUCCEEDED
    assert created.template.template.containers[0].args == ["one"]

    fetched = jobs.get_job(name=created.name)
    fetched.template.template.containers[0].args = ["two"]
    updated = jobs.update_job(job=fetched).result(timeout=10)
    assert updated.generation == 2 and updated.uid == created.uid
    assert jobs.get_job(name=created.name).template.template.containers[0].args == ["two"]
    assert f"{PARENT}/jobs/crud" in [j.name for j in jobs.list_jobs(parent=PARENT)]

    missing = job()
    missing.name = f"{PARENT}/jobs/made-by-patch"
    with pytest.raises(exceptions.NotFound):
        jobs.update_job(job=missing).result(timeout=10)
    made = jobs.update_job(request=run_v2.UpdateJobRequest(job=missing, allow_missing=True)).result(timeout=10)
    assert made.generation == 1

    jobs.delete_job(name=created.name).result(timeout=10)
    with pytest.raises(exceptions.NotFound):
        jobs.get_job(name=created.name)
    with pytest.raises(exceptions.Conflict, match="already exists"):
        create(jobs, "made-by-patch", job())


@pytest.mark.parametrize("job_id", ["Upper", "1starts-with-digit", "ends-with-", "a" * 64, "under_score"])
def test_job_ids_are_validated(jobs: run_v2.JobsClient, job_id: str) -> None:
    with pytest.raises(exceptions.BadRequest, match="Job id"):
        create(jobs, job_id, job())


def test_templates_are_validated(jobs: run_v2.JobsClient) -> None:
    with pytest.raises(exceptions.BadRequest, match="image is required"):
        create(jobs, "no-image", job(image=""))
    with pytest.raises(exceptions.BadRequest, match="containers"):
        create(jobs, "no-container", run_v2.Job(template=run_v2.ExecutionTemplate()))
    with pytest.raises(exceptions.BadRequest, match="maxRetries"):
        create(jobs, "many-retries", job(max_retries=11))


def test_an_image_that_does_not_exist_fails_the_job(jobs: run_v2.JobsClient) -> None:
    with pytest.raises(exceptions.FailedPrecondition, match="not found"):
        create(jobs, "no-such-image", job(image="local/nothing:v9"))
    failed = jobs.get_job(name=f"{PARENT}/jobs/no-such-image").terminal_condition
    assert failed.state == Condition.State.CONDITION_FAILED
    with pytest.raises(exceptions.BadRequest, match="not ready"):
        run(jobs, "no-such-image")


# --- executions -------------------------------------------------------------


def test_a_run_is_a_real_process_with_cloud_runs_variables(jobs: run_v2.JobsClient, state: Path) -> None:
    create(jobs, "hello", job(args=("a", "b"), env={"GREETING": "hi"}))
    op = run(jobs, "hello")
    started = op.metadata.name  # known before it finishes
    assert started.startswith(f"{PARENT}/jobs/hello/executions/hello-")
    execution = op.result(timeout=30)

    assert execution.name == started and execution.job == "hello"
    assert (execution.task_count, execution.succeeded_count, execution.failed_count) == (1, 1, 0)
    assert execution.running_count == 0 and not execution.reconciling
    assert execution.create_time <= execution.start_time <= execution.completion_time
    assert completed(execution).state == Condition.State.CONDITION_SUCCEEDED
    assert "completed successfully" in completed(execution).message
    seen = json.loads(output(execution))
    assert seen["argv"] == ["a", "b"]
    assert seen["env"] == {"CLOUD_RUN_JOB": "hello", "CLOUD_RUN_EXECUTION": started.rsplit("/", 1)[1],
                           "CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "1", "CLOUD_RUN_TASK_ATTEMPT": "0",
                           "GREETING": "hi"}  # no PORT: a task serves nothing
    assert seen["cwd"] == str(state / "image")  # the image's "WORKDIR"
    assert seen["python"] == sys.executable  # `python` is the image's interpreter
    record = json.loads((Path(execution.log_uri.removeprefix("file://")) / "task0-attempt0.json").read_text())
    assert record["exit_code"] == 0 and record["end_time"] >= record["start_time"]


def test_args_replace_an_images_cmd(jobs: run_v2.JobsClient, state: Path) -> None:
    create(jobs, "cmd-image", job(image="local/cmd:v1", command=(), args=("python", "task.py", "x")))
    seen = json.loads(output(run(jobs, "cmd-image").result(timeout=30)))
    assert (seen["argv"], seen["cwd"], seen["python"]) == (["x"], str(state / "image"), sys.executable)


def test_a_failed_run_names_the_task_and_its_exit_code(jobs: run_v2.JobsClient,
                                                        executions: run_v2.ExecutionsClient) -> None:
    create(jobs, "fails", job(env={"EXIT": "3"}))
    op = run(jobs, "fails")
    with pytest.raises(exceptions.FailedPrecondition, match=r"task0 failed with message: Container called exit\(3\)"):
        op.result(timeout=30)
    execution = executions.get_execution(name=op.metadata.name)
    assert (execution.succeeded_count, execution.failed_count) == (0, 1)
    condition = completed(execution)
    assert condition.state == Condition.State.CONDITION_FAILED
    assert condition.execution_reason == Condition.ExecutionReason.NON_ZERO_EXIT_CODE
    task = f"{execution.name.rsplit('/', 1)[1]}-task0"
    assert condition.message == f"Task {task} failed with message: Container called exit(3)."
    latest = jobs.get_job(name=f"{PARENT}/jobs/fails").latest_created_execution
    assert latest.name == execution.name
    assert latest.completion_status == run_v2.ExecutionReference.CompletionStatus.EXECUTION_FAILED


def test_overrides_replace_args_and_merge_env(jobs: run_v2.JobsClient) -> None:
    create(jobs, "overridden", job(args=("template",), env={"GREETING": "template", "EXIT": "0"}))
    execution = run(jobs, "overridden", Override(args=["override"], env=[run_v2.EnvVar(name="GREETING", value="o")])
                    ).result(timeout=30)
    seen = json.loads(output(execution))
    assert seen["argv"] == ["override"] and seen["env"]["GREETING"] == "o"
    assert list(execution.template.containers[0].args) == ["override"]
    cleared = run(jobs, "overridden", Override(clear_args=True)).result(timeout=30)
    assert json.loads(output(cleared))["argv"] == []
    with pytest.raises(exceptions.BadRequest, match="sidecar"):
        run(jobs, "overridden", Override(name="sidecar", args=["x"]))


def test_a_task_is_killed_at_its_timeout(jobs: run_v2.JobsClient, cloud: LocalCloudRun) -> None:
    create(jobs, "slow", job(env={"SLEEP": "60"}, timeout_s=1))
    began = time.monotonic()
    op = run(jobs, "slow")
    with pytest.raises(exceptions.FailedPrecondition, match="timeout was reached"):
        op.result(timeout=30)
    assert time.monotonic() - began < 10
    assert not cloud.jobs.task_pids()


def test_failed_attempts_are_retried(jobs: run_v2.JobsClient) -> None:
    create(jobs, "flaky", job(env={"FAIL_ATTEMPTS": "1"}, max_retries=1))
    execution = run(jobs, "flaky").result(timeout=30)
    assert (execution.succeeded_count, execution.failed_count, execution.retried_count) == (1, 0, 1)
    assert "failed on purpose" in output(execution, attempt=0, stream="stderr")
    assert json.loads(output(execution, attempt=1))["env"]["CLOUD_RUN_TASK_ATTEMPT"] == "1"

    create(jobs, "flaky-no-retry", job(env={"FAIL_ATTEMPTS": "1"}, max_retries=0))
    with pytest.raises(exceptions.FailedPrecondition, match=r"exit\(2\)"):
        run(jobs, "flaky-no-retry").result(timeout=30)


def test_tasks_of_one_execution_get_their_index(jobs: run_v2.JobsClient) -> None:
    create(jobs, "parallel", job(task_count=3))
    execution = run(jobs, "parallel").result(timeout=30)
    assert (execution.task_count, execution.succeeded_count) == (3, 3)
    indexes = {json.loads(output(execution, task=i))["env"]["CLOUD_RUN_TASK_INDEX"] for i in range(3)}
    assert indexes == {"0", "1", "2"}


def test_executions_are_listed_newest_first_and_deleted(jobs: run_v2.JobsClient,
                                                        executions: run_v2.ExecutionsClient) -> None:
    create(jobs, "twice", job())
    first = run(jobs, "twice").result(timeout=30).name
    second = run(jobs, "twice").result(timeout=30).name
    assert [e.name for e in executions.list_executions(parent=f"{PARENT}/jobs/twice")] == [second, first]
    assert jobs.get_job(name=f"{PARENT}/jobs/twice").execution_count == 2
    executions.delete_execution(name=first).result(timeout=10)
    assert [e.name for e in executions.list_executions(parent=f"{PARENT}/jobs/twice")] == [second]
    with pytest.raises(exceptions.NotFound):
        executions.get_execution(name=first)


def test_an_execution_can_be_cancelled(jobs: run_v2.JobsClient, executions: run_v2.ExecutionsClient,
                                       cloud: LocalCloudRun) -> None:
    create(jobs, "cancelled", job(env={"SLEEP": "60"}))
    op = run(jobs, "cancelled")
    deadline = time.monotonic() + 10
    while not cloud.jobs.task_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert executions.get_execution(name=op.metadata.name).running_count == 1
    execution = executions.cancel_execution(name=op.metadata.name).result(timeout=30)
    assert (execution.cancelled_count, execution.failed_count, execution.succeeded_count) == (1, 0, 0)
    assert completed(execution).execution_reason == Condition.ExecutionReason.CANCELLED
    assert not cloud.jobs.task_pids()
    with pytest.raises(exceptions.Cancelled):
        op.result(timeout=10)


# --- the example migration ------------------------------------------------------


def test_the_example_migration_is_idempotent(jobs: run_v2.JobsClient, tmp_path: Path) -> None:
    db = tmp_path / "web.db"
    create(jobs, "migrate", job(image="local/web:v1", command=("python", "migrate.py"), env={"DB_PATH": str(db)}))
    first = run(jobs, "migrate").result(timeout=30)
    assert "pitstop-summary: applied=2 skipped=0" in output(first)
    columns = {row[1] for row in sqlite3.connect(db).execute("PRAGMA table_info(visits)")}
    assert columns == {"id", "path", "at", "region"}
    again = run(jobs, "migrate").result(timeout=30)
    assert "pitstop-summary: applied=0 skipped=2" in output(again)

    fresh = tmp_path / "fresh.db"
    op = run(jobs, "migrate", Override(env=[run_v2.EnvVar(name="MIGRATE_FAIL", value="1"),
                                            run_v2.EnvVar(name="DB_PATH", value=str(fresh))]))
    with pytest.raises(exceptions.FailedPrecondition, match=r"exit\(1\)"):
        op.result(timeout=30)
    assert not fresh.exists()


def test_stopping_the_cloud_stops_running_tasks(state: Path) -> None:
    cloud = LocalCloudRun(state).start()
    try:
        client = _client(run_v2.JobsClient, cloud)
        create(client, "outlived", job(env={"SLEEP": "60"}))
        run(client, "outlived")
        deadline = time.monotonic() + 10
        while not cloud.jobs.task_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = cloud.jobs.task_pids()
        assert pids
    finally:
        cloud.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --- the local Logging: the tasks' output as log entries ----------------------------------


def test_output_is_served_as_cloud_logging_entries(jobs: run_v2.JobsClient, cloud: LocalCloudRun) -> None:
    create(jobs, "logged", job(image="local/tasks:v1", command=("python", "-c", LOGGED)))
    execution = run(jobs, "logged").result(timeout=30)
    short = execution.name.rsplit("/", 1)[1]

    def entries(filter_: str, order: str = "timestamp asc", **more: object) -> httpx.Response:
        body = {"resourceNames": ["projects/demo"], "filter": filter_, "orderBy": order, **more}
        return httpx.post(f"{cloud.url}/v2/entries:list", json=body, timeout=10)

    mine = f'resource.type="cloud_run_job" labels."run.googleapis.com/execution_name"="{short}"'
    listed = entries(mine).json()["entries"]
    assert [e.get("textPayload") or e["jsonPayload"]["message"] for e in listed] == ["out 1", "structured", "err 1"]
    assert [e["severity"] for e in listed] == ["DEFAULT", "WARNING", "ERROR"]
    assert listed[0]["resource"]["labels"] == {"project_id": "demo", "job_name": "logged", "location": "local"}
    assert listed[0]["logName"] == "projects/demo/logs/run.googleapis.com%2Fstdout"
    assert listed[0]["labels"]["run.googleapis.com/task_index"] == "0"

    newest = entries(mine, "timestamp desc", pageSize=2).json()
    assert [e["insertId"] for e in newest["entries"]] == [listed[2]["insertId"], listed[1]["insertId"]]
    assert entries(mine, "timestamp desc", pageSize=2, pageToken=newest["nextPageToken"]).json()["entries"] == [
        listed[0]]
    assert len(entries(f'{mine} AND severity>=WARNING').json()["entries"]) == 2
    assert len(entries(f'{mine} AND textPayload:"err"').json()["entries"]) == 1
    assert entries(f'{mine} AND timestamp>"2999-01-01T00:00:00Z"').json() == {}
    for unsupported in (f'{mine} OR severity=ERROR', 'NOT severity=ERROR', '(severity=ERROR)', 'severity'):
        refused = entries(unsupported)
        assert refused.status_code == 400 and refused.json()["error"]["status"] == "INVALID_ARGUMENT", unsupported


LOGGED = '''
import json, sys
print("out 1")
print(json.dumps({"severity": "WARNING", "message": "structured"}))
print("err 1", file=sys.stderr)
'''
