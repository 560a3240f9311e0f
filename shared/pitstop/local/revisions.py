"""Revision processes: one real local process per Cloud Run revision.

A revision runs in its own process group (so stopping it also stops anything it
spawned), listens on the `PORT` we give it and is ready once it answers HTTP,
which is stricter than Cloud Run's default TCP startup probe and what a router
in front of it needs. Its stdout and stderr go to files in the state directory;
the stderr tail explains a failed start.

`UsageSampler` measures what each revision's processes use, as Cloud Run's container/cpu/utilizations and
container/memory/utilizations do: CPU time over wall time of the revision's CPU limit, resident memory over
its memory limit, about every half second, into the RequestLog the local Monitoring serves. It reads /proc
(Linux); elsewhere there is nothing to read and the utilizations have no data.
"""

from __future__ import annotations

import http.client
import logging
import math
import os
import signal
import socket
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pitstop.local.images import ImageManifest
from pitstop.local.requestlog import RequestLog, Usage

log = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 2000
# The service's location, given to every revision process by the local Cloud Run. Real Cloud Run sets no
# such variable (only PORT, K_SERVICE, K_REVISION, K_CONFIGURATION); there a container asks the metadata
# server (/computeMetadata/v1/instance/region). Locally there is no per-region metadata server, so this.
REGION_ENV = "PITSTOP_LOCAL_REGION"
STOP_GRACE_S = 5.0
# Cloud Run's defaults when a container sets no limits.
DEFAULT_CPU = 1.0
DEFAULT_MEMORY_BYTES = 512 * 2**20
USAGE_PERIOD_S = 0.5
# A revision's process group is re-listed this often: a process it forks is counted from then on.
GROUP_RESCAN_S = 5.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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

    @property
    def running(self) -> bool:
        return self._process.poll() is None

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


# ---------------------------------------------------------------- resource usage


def parse_cpu(value: str | None) -> float:
    """A Kubernetes CPU quantity ("1", "2", "500m") in vCPUs; Cloud Run's 1 when unset."""
    if not value:
        return DEFAULT_CPU
    text = value.strip()
    cpus = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    if not cpus > 0:
        raise ValueError(f"a CPU limit must be positive, got {value!r}")
    return cpus


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def parse_memory(value: str | None) -> int:
    """A Kubernetes memory quantity ("512Mi", "1Gi", "2G", bytes) in bytes; Cloud Run's 512 MiB when unset."""
    if not value:
        return DEFAULT_MEMORY_BYTES
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kMGT]i?|Ki)?\s*", value)
    if match is None or match.group(2) not in _UNITS and match.group(2) is not None:
        raise ValueError(f"not a memory quantity: {value!r} (e.g. 512Mi, 1Gi)")
    size = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if size <= 0:
        raise ValueError(f"a memory limit must be positive, got {value!r}")
    return size


@dataclass(frozen=True)
class Measured:
    """A running revision the sampler measures, with the labels its samples carry."""

    project: str
    location: str
    service: str
    revision: str
    process: RevisionProcess
    cpu_limit: float = DEFAULT_CPU  # vCPUs
    memory_limit: int = DEFAULT_MEMORY_BYTES  # bytes


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(process group, CPU seconds including reaped children, resident bytes) of one process; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = text[text.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    # fields 5 (pgrp), 14-17 (utime, stime, cutime, cstime) and 24 (rss) of proc(5), counted from `state` (3)
    ticks = sum(int(rest[i]) for i in range(11, 15))
    return int(rest[2]), ticks / _CLOCK_TICKS, int(rest[21]) * _PAGE_BYTES


def _group_members(pgids: set[int]) -> dict[int, set[int]]:
    """pgid -> the pids in that process group now (one pass over /proc)."""
    members: dict[int, set[int]] = {g: {g} for g in pgids}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return members
    for pid in pids:
        stat = _stat(pid)
        if stat is not None and stat[0] in members:
            members[stat[0]].add(pid)
    return members


class UsageSampler:
    """Every `period` seconds: each running revision's CPU share (of its CPU limit, since the last sample)
    and resident memory (of its memory limit), summed over its process group, as a `Usage` in `log`."""

    def __init__(self, log: RequestLog, revisions: Callable[[], list[Measured]], period: float = USAGE_PERIOD_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._log, self._revisions, self._period, self._clock = log, revisions, period, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[int, tuple[float, float]] = {}  # leader pid -> (wall time, CPU seconds) last sampled
        self._groups: dict[int, set[int]] = {}
        self._rescanned = -math.inf

    def start(self) -> UsageSampler:
        if os.path.isdir("/proc"):
            self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
            self._thread.start()
        else:
            log.warning("no /proc here: the local Monitoring reports no CPU or memory utilization")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.sample()
            except Exception:  # a sampler bug must not take the local cloud down; the next round tries again
                log.exception("usage sampling failed")

    def sample(self) -> None:
        """One round: a Usage per revision measured before (the first round of a revision only starts its clock)."""
        measured = [m for m in self._revisions() if m.process.running]
        now = time.monotonic()
        leaders = {m.process.pid for m in measured}
        if now - self._rescanned >= GROUP_RESCAN_S or not leaders <= self._groups.keys():
            self._groups, self._rescanned = _group_members(leaders), now
        self._last = {pid: v for pid, v in self._last.items() if pid in leaders}
        for m in measured:
            stats = [s for s in map(_stat, self._groups.get(m.process.pid, {m.process.pid})) if s is not None]
            if not stats:
                continue
            cpu_seconds, rss = sum(s[1] for s in stats), sum(s[2] for s in stats)
            previous = self._last.get(m.process.pid)
            self._last[m.process.pid] = (now, cpu_seconds)
            if previous is None or now <= previous[0]:
                continue
            # A child that exits moves its time into its parent's cutime: the sum barely moves; clamp the rest.
            cpu = (cpu_seconds - previous[1]) / (now - previous[0]) / m.cpu_limit
            self._log.add_usage(Usage(at=self._clock(), project=m.project, location=m.location, service=m.service,
                                      revision=m.revision, cpu=min(max(cpu, 0.0), 1.0),
                                      memory=rss / m.memory_limit))
