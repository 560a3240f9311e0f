"""The jobs adapter (gcp/jobs.py) against the local Cloud Run and its Logging, through the real clients.

No mocks: tasks are real processes of a local image (the example app's, running the
example migration and E2E checks), output is read back over Logging's REST API.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from pitstop.gcp.cloudrun import CloudRunError
from pitstop.gcp.jobs import LOG_LAG, ExecutionLogs, JobRun, Jobs, JobsError, parse_summary
from pitstop.local.cloudrun import LocalCloudRun
from pitstop.local.images import register_image

P, R = "demo", "local"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "web"
IMAGE = "local/web:v1"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloudRun]:
    state = tmp_path_factory.mktemp("jobs-adapter")
    # As a Dockerfile's `CMD ["python", "app.py"]`: a job's args alone replace it (`python migrate.py`).
    register_image(state, IMAGE, [], args=[sys.executable, str(EXAMPLES / "app.py")], env={"APP_VERSION": "v1"})
    cloud_run = LocalCloudRun(state).start()
    yield cloud_run
    cloud_run.stop()


@pytest.fixture(scope="module")
def jobs(cloud: LocalCloudRun) -> Jobs:
    return Jobs.from_endpoint(cloud.url)


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    """The example app, v1, serving on a local port (what an E2E job checks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = subprocess.Popen([sys.executable, str(EXAMPLES / "app.py")],
                           env={**os.environ, "PORT": str(port), "APP_VERSION": "v1", "LATENCY_MS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the example app did not start"
            time.sleep(0.05)
    yield url
    app.terminate()
    app.wait(10)


def finished(jobs: Jobs, name: str, timeout: float = 30) -> JobRun:
    deadline = time.monotonic() + timeout
    while (run := jobs.execution(name)).state == "running":
        assert time.monotonic() < deadline, f"{name} still running"
        time.sleep(0.1)
    return run


def executions(cloud: LocalCloudRun, job: str) -> list[str]:
    listed = cloud.jobs.list_executions(f"projects/{P}/locations/{R}/jobs/{job}")
    return [e["name"] for e in listed.get("executions", [])]


# --- ensure -----------------------------------------------------------------


def test_ensure_creates_then_updates_only_what_changed(jobs: Jobs, cloud: LocalCloudRun) -> None:
    assert jobs.ensure(P, R, "ensured", IMAGE, ["python", "migrate.py"], env={"DB_PATH": "/tmp/x.db"}, timeout_s=60)
    name = f"projects/{P}/locations/{R}/jobs/ensured"
    assert cloud.jobs.get_job(name)["generation"] == "1"
    assert jobs.ensure(P, R, "ensured", IMAGE, ["python", "migrate.py"], env={"DB_PATH": "/tmp/x.db"}, timeout_s=60)
    assert cloud.jobs.get_job(name)["generation"] == "1"  # the same template: no update

    assert jobs.ensure(P, R, "ensured", IMAGE, ["python", "e2e.py"], timeout_s=30, max_retries=2)
    job = cloud.jobs.get_job(name)
    task = job["template"]["template"]
    assert job["generation"] == "2"
    assert task["containers"][0]["command"] == ["python", "e2e.py"] and "env" not in task["containers"][0]
    assert (task["timeout"], task["maxRetries"]) == ("30s", 2)


def test_ensure_refuses_an_image_that_does_not_exist(jobs: Jobs) -> None:
    with pytest.raises(JobsError, match="not found") as refused:
        jobs.ensure(P, R, "no-image", "local/nothing:v1", ["python", "migrate.py"])
    assert refused.value.permanent and isinstance(refused.value, CloudRunError)
    with pytest.raises(JobsError, match="not ready") as again:
        jobs.ensure(P, R, "no-image", "local/nothing:v1", ["python", "migrate.py"])
    assert again.value.permanent


# --- running once ---------------------------------------------------------------


def test_run_once_runs_once(jobs: Jobs, cloud: LocalCloudRun, tmp_path: Path) -> None:
    jobs.ensure(P, R, "migrate-once", IMAGE, ["python", "migrate.py"], env={"DB_PATH": str(tmp_path / "db")})
    name = jobs.run_once(P, R, "migrate-once")
    assert name.startswith(f"projects/{P}/locations/{R}/jobs/migrate-once/executions/migrate-once-")
    assert jobs.run_once(P, R, "migrate-once") == name  # a redelivered message finds it
    run = finished(jobs, name)
    assert jobs.run_once(P, R, "migrate-once") == name  # also once it has finished
    assert executions(cloud, "migrate-once") == [name]

    assert run.state == "succeeded" and run.settled()
    assert run.summary == {"applied": 2, "skipped": 0}
    assert run.output[-1] == "pitstop-summary: applied=2 skipped=0"
    assert "completed successfully" in (run.exit_message or "")
    assert run.started_at is not None and run.finished_at is not None and run.started_at <= run.finished_at
    assert run.log_uri.startswith("file://")


def test_args_alone_run_in_place_of_the_images_cmd(jobs: Jobs, tmp_path: Path) -> None:
    """As checkrun.py ensures a check declared `{args: [python, migrate.py]}`: no command."""
    jobs.ensure(P, R, "args-only", IMAGE, None, ["python", "migrate.py"], {"DB_PATH": str(tmp_path / "db")}, 60, 0)
    assert finished(jobs, jobs.run_once(P, R, "args-only")).summary == {"applied": 2, "skipped": 0}
    assert jobs.ensure(P, R, "args-only", IMAGE, None, ["python", "migrate.py"], {"DB_PATH": str(tmp_path / "db")},
                       60, 0)


def test_run_once_does_not_wait_for_the_run(jobs: Jobs) -> None:
    jobs.ensure(P, R, "slow-check", IMAGE, ["python", "-c", "import time; time.sleep(3); print('1 passed in 3.0s')"])
    began = time.monotonic()
    name = jobs.run_once(P, R, "slow-check")
    assert time.monotonic() - began < 2
    running = jobs.execution(name)
    assert (running.state, running.finished_at, running.summary, running.output) == ("running", None, None, ())
    assert not running.settled()
    assert finished(jobs, name).summary == {"passed": 1}  # pytest's closing line


def test_a_run_lost_in_transit_is_found_not_repeated(jobs: Jobs, cloud: LocalCloudRun,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """GCP started the execution but the answer was lost (503): run_once again names it."""
    jobs.ensure(P, R, "lost-answer", IMAGE, ["python", "-c", "print('ok')"])
    monkeypatch.setattr(cloud, "draw_fault", lambda mutating: "after" if mutating else None)
    with pytest.raises(JobsError, match="UNAVAILABLE") as lost:
        jobs.run_once(P, R, "lost-answer")
    assert not lost.value.permanent
    monkeypatch.undo()
    started = executions(cloud, "lost-answer")
    assert len(started) == 1
    assert jobs.run_once(P, R, "lost-answer") == started[0]
    assert executions(cloud, "lost-answer") == started


def test_racing_run_once_calls_settle_on_one_execution(jobs: Jobs, cloud: LocalCloudRun) -> None:
    jobs.ensure(P, R, "raced", IMAGE, ["python", "-c", "import time; time.sleep(1)"])
    names: list[str] = []
    barrier = threading.Barrier(3)

    def deliver() -> None:
        barrier.wait()
        names.append(jobs.run_once(P, R, "raced"))

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(names)) == 1 and len(names) == 3
    kept = names[0]
    for other in set(executions(cloud, "raced")) - {kept}:  # started by a loser of the race: cancelled
        assert finished(jobs, other).state == "cancelled"
    assert finished(jobs, kept).state == "succeeded"


def test_run_once_of_a_job_that_does_not_exist(jobs: Jobs) -> None:
    with pytest.raises(JobsError, match="ensure it first") as refused:
        jobs.run_once(P, R, "never-ensured")
    assert refused.value.permanent


# --- outcomes -----------------------------------------------------------------------


def test_a_failed_migration(jobs: Jobs, tmp_path: Path) -> None:
    jobs.ensure(P, R, "migrate-fails", IMAGE, ["python", "migrate.py"],
                env={"DB_PATH": str(tmp_path / "db"), "MIGRATE_FAIL": "1"})
    run = finished(jobs, jobs.run_once(P, R, "migrate-fails"))
    assert run.state == "failed" and run.summary is None
    assert run.exit_message is not None and "task0 failed with message: Container called exit(1)." in run.exit_message
    assert any("MIGRATE_FAIL=1" in line for line in run.output)  # stderr is output too
    assert not (tmp_path / "db").exists()
    assert not run.settled(now=run.finished_at)  # no summary: Logging may still be catching up...
    assert run.settled(now=run.finished_at + LOG_LAG)  # ...but not forever


def test_e2e_checks_against_a_url(jobs: Jobs, target: str) -> None:
    jobs.ensure(P, R, "e2e-passes", IMAGE, ["python", "e2e.py"], env={"TARGET_URL": target, "E2E_REQUESTS": "5"})
    passed = finished(jobs, jobs.run_once(P, R, "e2e-passes"))
    assert passed.state == "succeeded" and passed.summary == {"passed": 3, "failed": 0}

    jobs.ensure(P, R, "e2e-fails", IMAGE, ["python", "e2e.py"], env={"TARGET_URL": target, "E2E_FAIL": "1"})
    failed = finished(jobs, jobs.run_once(P, R, "e2e-fails"))
    assert failed.state == "failed" and failed.summary == {"passed": 3, "failed": 1}
    assert "FAIL forced failure: failed on purpose (E2E_FAIL=1)" in failed.output

    jobs.ensure(P, R, "e2e-wrong-version", IMAGE, ["python", "e2e.py"],
                env={"TARGET_URL": target, "EXPECT_VERSION": "v2"})
    wrong = finished(jobs, jobs.run_once(P, R, "e2e-wrong-version"))
    assert wrong.summary == {"passed": 2, "failed": 1}
    assert any("serves version 'v1', expected 'v2'" in line for line in wrong.output)


def test_a_run_past_its_timeout_fails(jobs: Jobs) -> None:
    jobs.ensure(P, R, "too-slow", IMAGE, ["python", "-c", "import time; time.sleep(60)"], timeout_s=1)
    run = finished(jobs, jobs.run_once(P, R, "too-slow"))
    assert run.state == "failed" and "timeout was reached" in (run.exit_message or "")


def test_a_run_can_be_cancelled(jobs: Jobs) -> None:
    jobs.ensure(P, R, "cancel-me", IMAGE, ["python", "-c", "import time; time.sleep(60)"])
    name = jobs.run_once(P, R, "cancel-me")
    jobs.cancel(name)
    run = finished(jobs, name)
    assert run.state == "cancelled"


def test_an_execution_that_does_not_exist(jobs: Jobs) -> None:
    with pytest.raises(JobsError, match="does not exist") as refused:
        jobs.execution(f"projects/{P}/locations/{R}/jobs/nothing/executions/nothing-abcde")
    assert refused.value.permanent


def test_only_the_executions_own_output_is_read(jobs: Jobs, cloud: LocalCloudRun) -> None:
    script = "import os\nfor i in range(80): print(i, os.environ['CLOUD_RUN_EXECUTION'])"
    jobs.ensure(P, R, "chatty", IMAGE, ["python", "-c", script])
    first = finished(jobs, jobs.run_once(P, R, "chatty")).name
    other = cloud.jobs.run_job(f"projects/{P}/locations/{R}/jobs/chatty", {})["metadata"]["name"]
    finished(jobs, other)  # another execution of the same job, later
    short = first.rsplit("/", 1)[1]
    assert jobs.execution(first).output == tuple(f"{i} {short}" for i in range(30, 80))  # the newest 50, oldest first


def test_unreadable_output_leaves_the_outcome(jobs: Jobs, cloud: LocalCloudRun) -> None:
    jobs.ensure(P, R, "unread", IMAGE, None, ["python", "-c", "print('1 passed')"])
    name = jobs.run_once(P, R, "unread")
    finished(jobs, name)
    refused = Jobs(jobs.jobs, jobs.executions, ExecutionLogs(cloud.url + "/no-logging-here"))  # answers 404
    run = refused.execution(name)
    assert run.state == "succeeded" and run.summary is None and run.output == ()
    assert run.output_error and "NOT_FOUND" in run.output_error and run.settled(now=run.finished_at)

    with socket.socket() as s:  # a port nobody listens on: Logging unreachable, worth reading again
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(JobsError, match="Cloud Logging") as unreachable:
        Jobs(jobs.jobs, jobs.executions, ExecutionLogs(f"http://127.0.0.1:{closed}")).execution(name)
    assert not unreachable.value.permanent


# --- summaries ---------------------------------------------------------------------------


@pytest.mark.parametrize(("lines", "summary"), [
    (["pitstop-summary: passed=12 failed=1"], {"passed": 12, "failed": 1}),
    (["x", "[e2e] pitstop-summary: passed=3 failed=0 skipped=2", "bye"], {"passed": 3, "failed": 0, "skipped": 2}),
    (["======= 12 passed, 1 failed in 3.21s ======="], {"passed": 12, "failed": 1}),
    (["1 failed, 12 passed, 1 error, 3 warnings in 0.50s (0:00:00)"],
     {"failed": 1, "passed": 12, "errors": 1, "warnings": 3}),
    (["pitstop-summary: passed=1 failed=0", "pitstop-summary: passed=2 failed=1"], {"passed": 2, "failed": 1}),
    (["no summary", "12 tests passed somewhere"], None),
    ([], None),
])
def test_summaries_are_parsed(lines: list[str], summary: dict[str, int] | None) -> None:
    assert parse_summary(lines) == summary


def test_settled() -> None:
    now = datetime.now(timezone.utc)
    run = JobRun(name="n", state="failed", exit_message=None, started_at=now, finished_at=now, log_uri="",
                 summary=None)
    assert not run.settled(now) and run.settled(now + timedelta(seconds=31))
