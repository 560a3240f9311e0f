"""Revision processes: one real local process per Cloud Run revision.

A revision runs in its own process group (so stopping it also stops anything it
spawned), listens on the `PORT` we give it and is ready once it answers HTTP,
which is stricter than Cloud Run's default TCP startup probe and what a router
in front of it needs. Its stdout and stderr go to files in the state directory;
the stderr tail explains a failed start.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pitstop.local.images import ImageManifest

log = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 2000
# The service's location, given to every revision process by the local Cloud Run. Real Cloud Run sets no
# such variable (only PORT, K_SERVICE, K_REVISION, K_CONFIGURATION); there a container asks the metadata
# server (/computeMetadata/v1/instance/region). Locally there is no per-region metadata server, so this.
REGION_ENV = "PITSTOP_LOCAL_REGION"
STOP_GRACE_S = 5.0


class RevisionFailed(RuntimeError):
    """The revision's process could not start or never answered HTTP."""


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]  # on top of the cloud process's own environment


def launch_spec(
    manifest: ImageManifest,
    command: list[str],
    args: list[str],
    env: dict[str, str],
    platform_env: dict[str, str],
) -> LaunchSpec:
    """Combine image defaults with the container's settings, as Kubernetes does.

    A container `command` replaces the image entrypoint and drops its default
    args; container `args` replace the default args; container env wins over
    the image's, and the platform's variables (K_SERVICE, ..., REGION_ENV) win over both.
    """
    if command:
        argv = list(command) + list(args)
    else:
        argv = list(manifest.command) + list(args or manifest.args)
    if not argv:
        raise RevisionFailed(f"Image {manifest.digest} has no command and the container sets none.")
    return LaunchSpec(argv=argv, env={**manifest.env, **env, **platform_env})


class RevisionProcess:
    def __init__(self, revision: str, spec: LaunchSpec, log_dir: Path, host: str = "127.0.0.1") -> None:
        self.revision = revision
        self.host = host
        self.port = _free_port(host)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{revision}.stdout.log"
        self.stderr_path = log_dir / f"{revision}.stderr.log"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            try:
                self._process = subprocess.Popen(
                    spec.argv,
                    env={**os.environ, **spec.env, "PORT": str(self.port)},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # own process group, stopped as a whole
                )
            except OSError as e:
                raise RevisionFailed(f"Could not start {spec.argv[0]!r}: {e}") from e
        log.info(
            "revision process started",
            extra={
                "revision": revision, "pid": self.pid, "port": self.port, "argv": spec.argv,
                "stdout": str(self.stdout_path), "stderr": str(self.stderr_path),
            },
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self, timeout_s: float) -> None:
        """Return once the process answers HTTP on its port; raise RevisionFailed otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                raise RevisionFailed(
                    f"The user-provided container exited with code {code} before listening on "
                    f"PORT={self.port}. Last stderr:\n{self.stderr_tail()}"
                )
            if self._answers_http():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RevisionFailed(
                    f"The user-provided container failed to start and listen on the port defined "
                    f"by PORT={self.port} within {timeout_s:g} s. Last stderr:\n{self.stderr_tail()}"
                )
            time.sleep(0.05)

    def stderr_tail(self) -> str:
        with open(self.stderr_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
            return f.read().decode(errors="replace").strip() or "(empty)"

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after a grace period."""
        if self._process.returncode is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self._process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self._process.wait()
        _signal_group(self.pid, signal.SIGKILL)  # children that outlived the leader
        log.info("revision process stopped", extra={"revision": self.revision, "pid": self.pid})

    def _answers_http(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _free_port(host: str) -> int:
    # The process binds it itself, so we can only pick a port that is free now.
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
