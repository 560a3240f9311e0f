"""`pitstop dev up --detach` / `pitstop dev down` as a person runs them: everything starts,
the CLI finds the stack by itself, and nothing is left running afterwards."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.emulators
PITSTOP = [sys.executable, "-m", "pitstop.surfaces.cli"]


def run(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOOGLE_CLOUD_PROJECT", "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")}
    return subprocess.run([*PITSTOP, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def listening(host_port: str) -> bool:
    host, port = host_port.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,pgid=,stat="], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()]
    return [int(r[0]) for r in rows if (r[1] == str(pid) or r[2] == str(pid)) and not r[3].startswith("Z")]


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_dev_up_detached_then_down_leaves_nothing_running(tmp_path):
    up = run(tmp_path, "dev", "up", "--detach", "--tick", "2", "--health-lag", "4.5")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "a tick every 2 s" in up.stdout and "Monitoring shows requests 4.5 s after they are served" in up.stdout
    # From here on the stack runs detached: whatever fails, `dev down` below stops it (a failed check must not
    # leave emulators behind for the rest of the suite).
    try:
        env = dict(line.removeprefix("export ").split("=", 1)
                   for line in (tmp_path / ".pitstop" / "dev.env").read_text().splitlines())
        pid = int((tmp_path / ".pitstop" / "dev.pid").read_text())
        functions = re.findall(r"on_\w+\s+(http://127\.0\.0\.1:\d+)", (tmp_path / ".pitstop" / "dev.log").read_text())
        assert len(functions) == 7  # on_build, on_health, on_tick, on_alert, on_command, on_event, on_drain
        endpoints = [env["FIRESTORE_EMULATOR_HOST"], env["PUBSUB_EMULATOR_HOST"], env["PITSTOP_RUN_ENDPOINT"],
                     env["PITSTOP_MONITORING_ENDPOINT"], *functions]
        assert all(listening(e) for e in endpoints), endpoints
        assert children_of(pid), "the stack runs its emulators and functions as children"
        lags = {environ(child).get("PITSTOP_HEALTH_LAG") for child in children_of(pid)}
        assert "4.5" in lags, "the functions' sampler allows for the lag the stack runs with"
        spec = Path(__file__).resolve().parents[2] / "examples" / "web" / "rollout.yaml"
        applied = run(tmp_path, "apply", str(spec))
        assert applied.returncode == 0 and "applied spec web--production" in applied.stdout, applied.stderr
        assert "local stack" in applied.stderr, "the CLI says it found the local stack by itself"
        status = run(tmp_path, "status")
        assert status.returncode == 0 and "no rollouts yet" in status.stdout
    finally:
        down = run(tmp_path, "dev", "down", timeout=120)
    assert down.returncode == 0 and "local stack stopped" in down.stdout, down.stderr
    assert not any(listening(e) for e in endpoints)
    assert not children_of(pid)
    assert not (tmp_path / ".pitstop" / "dev.env").exists()
