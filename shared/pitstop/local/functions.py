"""Run Cloud Functions entry points locally, one functions-framework process each.

This is how Cloud Functions runs them too: one target per instance. The
framework turns a Pub/Sub push into a CloudEvent, so the same code path is
exercised as on GCP.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import tempfile
from pathlib import Path

from pitstop.local.emulators import ManagedProcess, free_port, start_together

START_TIMEOUT_S = 60.0
HTTP_TARGETS = {"api", "on_drain"}  # HTTP functions; every other one is fed by a Pub/Sub push (a CloudEvent)


def signature_type(target: str) -> str:
    return "http" if target in HTTP_TARGETS else "cloudevent"


class FunctionProcess(ManagedProcess):
    """A functions-framework server for one target; `url` takes the push requests."""

    stop_leaves_first = False  # the gunicorn master stops its workers itself

    def __init__(self, target: str, source: Path, port: int, env: dict[str, str],
                 log_path: Path) -> None:
        self.target = target
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        argv = [
            sys.executable, "-m", "functions_framework",
            f"--target={target}", f"--source={source}", f"--signature-type={signature_type(target)}",
            "--host=127.0.0.1", f"--port={port}",
        ]
        # Unbuffered, so the log file is complete when a test prints it.
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        super().__init__(f"function {target} (port {port})", argv, log_path, env=full_env)


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_function(target: str, source: Path, port: int = 0,
                   env: dict[str, str] | None = None, log_dir: Path | None = None,
                   timeout: float = START_TIMEOUT_S) -> FunctionProcess:
    """Start `target` from the file `source` and wait until its port accepts connections.

    The framework imports the source before it binds, so an accepting port
    means the function loaded; an import error ends the process and is
    raised here with the log tail. Logs go to `log_dir` (a temp dir if None).
    """
    source = Path(source).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"Function source {source} does not exist; pass the path of main.py.")
    port = port or free_port()
    log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="pitstop-functions-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    process = FunctionProcess(target, source, port, env or {}, log_dir / f"{target}.log")
    try:
        process.wait_until(lambda: _accepts_connections(port), timeout)
    except BaseException:  # also Ctrl-C: never leave a server behind
        process.stop()
        raise
    return process


def start_functions(targets: list[str], source: Path, env: dict[str, str] | None = None,
                    log_dir: Path | None = None) -> dict[str, FunctionProcess]:
    """Start several targets in parallel; if any fails, stop them all."""
    log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="pitstop-functions-"))
    return start_together({t: functools.partial(start_function, t, source, 0, env, log_dir) for t in targets})
