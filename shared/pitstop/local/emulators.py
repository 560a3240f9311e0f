"""Start and stop the real Firestore and Pub/Sub emulators on 127.0.0.1.

`gcloud emulators ... start` is a Python wrapper that spawns a shell script
and a JVM. Each one runs in its own session (process group) so that stop()
can end the whole tree, and its output goes to a log file whose tail is shown
when it fails to come up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Self, TypeVar

INSTALL_EMULATORS = (
    "gcloud components install cloud-firestore-emulator pubsub-emulator beta"
    " (or, for an apt/yum install of the Google Cloud CLI: install the packages"
    " google-cloud-cli-firestore-emulator and google-cloud-cli-pubsub-emulator)"
)
INSTALL_GCLOUD = "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
INSTALL_JAVA = (
    "install a Java runtime, 21 or newer recommended (Debian/Ubuntu:"
    " `sudo apt-get install openjdk-21-jre-headless`; macOS: `brew install openjdk@21`)"
)
START_TIMEOUT_S = 90.0  # a cold JVM on a busy two-core laptop can take a while


class MissingTool(Exception):
    """A program the local stack needs is not installed."""


class PortInUse(RuntimeError):
    """The process could not bind its port because something else holds it."""


# What a JVM or Python server prints when its port is taken. The Pub/Sub
# emulator keeps running after that, so without this it would look merely slow.
PORT_IN_USE_MARKERS = ("Address already in use", "BindException")


def check_prerequisites(path: str | None = None) -> None:
    """Raise MissingTool naming every missing tool and how to install it.

    `path` is a PATH string to search instead of the current one.
    """
    search = os.environ.get("PATH", "") if path is None else path
    problems = []
    gcloud = shutil.which("gcloud", path=search)
    if gcloud is None:
        problems.append(f"`gcloud` is not on PATH: {INSTALL_GCLOUD}, then {INSTALL_EMULATORS}")
    else:
        sdk_root = Path(gcloud).resolve().parent.parent
        wanted = {
            "cloud-firestore-emulator": sdk_root / "platform" / "cloud-firestore-emulator",
            "pubsub-emulator": sdk_root / "platform" / "pubsub-emulator",
            "beta": sdk_root / "lib" / "surface" / "beta",
        }
        missing = [name for name, where in wanted.items() if not where.exists()]
        if missing:
            problems.append(
                f"the Google Cloud CLI at {sdk_root} lacks the components {', '.join(missing)}:"
                f" {INSTALL_EMULATORS}"
            )
    if shutil.which("java", path=search) is None:
        problems.append(f"`java` is not on PATH (the emulators run on the JVM): {INSTALL_JAVA}")
    if problems:
        raise MissingTool("The local emulators cannot start: " + "; ".join(problems))


def free_port() -> int:
    """A port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def live_group_members(pgid: int) -> dict[int, int]:
    """Pid -> parent pid of the processes in group `pgid` that have not exited."""
    out = subprocess.run(
        ["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "pgid=", "-o", "stat="],
        capture_output=True, text=True, check=True,
    ).stdout
    members = {}
    for line in out.splitlines():
        pid, ppid, group, stat = line.split(maxsplit=3)
        if int(group) == pgid and not stat.startswith("Z"):
            members[int(pid)] = int(ppid)
    return members


class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    # Whether stop() signals the innermost processes and lets each parent exit
    # after its child: right for gcloud -> bash -> JVM, where a parent killed
    # first orphans the JVM; wrong for a gunicorn master, which would replace
    # a worker killed under it.
    stop_leaves_first = True

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.failed = False  # set when it did not come up; its log is then kept
        self._log = open(log_path, "wb")
        try:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_until(self, ready: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> None:
        """Poll `ready` until true; on exit or timeout stop and raise with the log tail."""
        deadline = time.monotonic() + timeout
        while not ready():
            if any(marker in self._log_text() for marker in PORT_IN_USE_MARKERS):
                self._fail("could not bind its port: something else is using it", PortInUse)
            if self.popen.poll() is not None:
                self._fail(f"exited with status {self.popen.returncode} before it was ready")
            if time.monotonic() > deadline:
                self._fail(f"was not ready after {timeout:.0f} s")
            time.sleep(0.1)

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _fail(self, what: str, error: type[RuntimeError] = RuntimeError) -> None:
        self.failed = True
        self.stop()
        raise error(
            f"{self.name} {what}. Last lines of its log ({self.log_path}):\n{tail(self.log_path)}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """End the whole process tree and wait for it. Safe to call twice.

        The leader must outlive its children so that it reaps them: an orphan
        becomes a zombie wherever init does not reap (containers, sandboxes).
        """
        pgid = self.popen.pid
        try:
            if self.popen.poll() is None:
                if self.stop_leaves_first:
                    members = live_group_members(pgid)
                    for pid in set(members) - set(members.values()):  # the leaves
                        _signal(pid, signal.SIGTERM)
                else:
                    _signal(pgid, signal.SIGTERM)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(pgid, signal.SIGTERM)
                    try:
                        self.popen.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        _signal_group(pgid, signal.SIGKILL)
                        self.popen.wait()
            deadline = time.monotonic() + timeout
            while live_group_members(pgid):
                if time.monotonic() > deadline:
                    _signal_group(pgid, signal.SIGKILL)
                time.sleep(0.1)
        except BaseException:  # a second Ctrl-C while stopping: don't wait, kill
            _signal_group(pgid, signal.SIGKILL)
            raise
        finally:
            self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


P = TypeVar("P", bound=ManagedProcess)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _answers_http(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


class Emulator(ManagedProcess):
    """A running emulator: `host` is "127.0.0.1:PORT", `env` what clients need."""

    def __init__(self, name: str, argv: list[str], port: int, env_var: str,
                 workdir: Path) -> None:
        self.host = f"127.0.0.1:{port}"
        self.env = {env_var: self.host}
        self._workdir = workdir
        super().__init__(name, argv, workdir / "emulator.log")

    def stop(self, timeout: float = 15.0) -> None:
        try:
            super().stop(timeout)
        finally:
            # Keep the log of a failed start so the path in the error still works.
            if not self.failed:
                shutil.rmtree(self._workdir, ignore_errors=True)


def _start(name: str, argv: Callable[[int, Path], list[str]], port: int, env_var: str,
           workdir_prefix: str, timeout: float, retries: int = 2) -> Emulator:
    """Start and wait; a port we picked ourselves that got taken meanwhile is picked again."""
    check_prerequisites()
    chosen = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
    emulator = Emulator(f"{name} (port {chosen})", argv(chosen, workdir), chosen, env_var, workdir)
    try:
        emulator.wait_until(lambda: _answers_http(emulator.host), timeout)
    except PortInUse:
        if port or not retries:
            raise
        shutil.rmtree(workdir, ignore_errors=True)
        return _start(name, argv, 0, env_var, workdir_prefix, timeout, retries - 1)
    except BaseException:  # also Ctrl-C: never leave a JVM behind
        emulator.stop()
        raise
    return emulator


def start_firestore(project: str, port: int = 0, timeout: float = START_TIMEOUT_S) -> Emulator:
    """Start the Firestore emulator; `project` only names it (it serves any project)."""
    return _start(
        "Firestore emulator",
        lambda p, _: ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{p}"],
        port, "FIRESTORE_EMULATOR_HOST", f"pitstop-firestore-{project}-", timeout,
    )


def start_pubsub(project: str, port: int = 0, timeout: float = START_TIMEOUT_S) -> Emulator:
    """Start the Pub/Sub emulator with its own data dir, so runs don't share state."""
    return _start(
        "Pub/Sub emulator",
        lambda p, workdir: ["gcloud", "beta", "emulators", "pubsub", "start",
                            f"--host-port=127.0.0.1:{p}", f"--project={project}",
                            f"--data-dir={workdir}"],
        port, "PUBSUB_EMULATOR_HOST", f"pitstop-pubsub-{project}-", timeout,
    )


@dataclass
class Emulators:
    """Both emulators for one project."""

    project: str
    firestore: Emulator
    pubsub: Emulator

    @property
    def env(self) -> dict[str, str]:
        """Everything a client or a function needs to reach the emulators."""
        return {**self.firestore.env, **self.pubsub.env, "GOOGLE_CLOUD_PROJECT": self.project}

    def stop(self) -> None:
        try:
            self.firestore.stop()
        finally:
            self.pubsub.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_together(starts: dict[str, Callable[[], P]]) -> dict[str, P]:
    """Run several starts in parallel; if any fails (or Ctrl-C), stop those that did start."""
    pool = ThreadPoolExecutor(max_workers=max(1, len(starts)))
    futures = {}
    try:
        for name, start in starts.items():
            futures[name] = pool.submit(start)
        return {name: future.result() for name, future in futures.items()}
    except BaseException:  # wait for the other starts, then stop them
        for future in futures.values():
            try:
                future.result().stop()
            except Exception:
                pass  # this one failed to start; it already stopped itself
        raise
    finally:
        pool.shutdown()


def start_emulators(project: str) -> Emulators:
    """Start both emulators in parallel; if either fails, stop the other."""
    check_prerequisites()
    started = start_together({"firestore": lambda: start_firestore(project),
                              "pubsub": lambda: start_pubsub(project)})
    return Emulators(project, started["firestore"], started["pubsub"])


def wipe_firestore(host: str, project: str) -> None:
    """Delete every document in the emulator's default database for `project`."""
    url = f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30):
            pass
    except OSError as e:
        raise RuntimeError(
            f"Could not wipe the Firestore emulator at {host} (DELETE {url}): {e}."
            " Is the emulator still running?"
        ) from e
