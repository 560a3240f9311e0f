"""Fixtures shared by the whole suite.

Without xdist, emulators start only when a test asks for them, once per session, so
pure unit tests stay fast and need no gcloud; under xdist (`make test`) the controller
starts one pair that every worker shares, each worker in its own project.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest

from pitstop.local.emulators import Emulators, start_emulators, tail, wipe_firestore
from pitstop.local.functions import FunctionProcess, start_functions

PROJECT = "pitstop-test"


SHARED = "PITSTOP_TEST_EMULATORS"  # "FIRESTORE_HOST,PUBSUB_HOST", set by the xdist controller for its workers


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist the controller starts one pair of emulators for all its workers (each worker then has its own
    project in them, so wipes and topics never cross): two JVMs instead of two per worker, on 2 cores."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    config.stash[_RUNNING] = start_emulators(PROJECT)
    running = config.stash[_RUNNING]
    os.environ[SHARED] = f"{running.firestore.host},{running.pubsub.host}"  # the workers inherit it


def pytest_unconfigure(config: pytest.Config) -> None:
    running = config.stash.get(_RUNNING, None)
    if running is not None:
        running.stop()


_RUNNING = pytest.StashKey[Emulators]()


@dataclass
class _Attached:
    """An emulator another process runs: its address, nothing to stop."""

    host: str
    variable: str

    @property
    def env(self) -> dict[str, str]:
        return {self.variable: self.host}

    def stop(self) -> None:
        pass


@pytest.fixture(scope="session")
def emulators(worker_id: str) -> Iterator[Emulators]:
    """Both emulators, with their env set in os.environ: the controller's (project "pitstop-test-gwN") under
    xdist, else started here (project "pitstop-test")."""
    shared = os.environ.get(SHARED)
    if shared:
        firestore, pubsub = shared.split(",")
        context = nullcontext(Emulators(f"{PROJECT}-{worker_id}", _Attached(firestore, "FIRESTORE_EMULATOR_HOST"),
                                        _Attached(pubsub, "PUBSUB_EMULATOR_HOST")))
    else:
        context = start_emulators(PROJECT)
    with context as running, pytest.MonkeyPatch.context() as mp:
        for name, value in running.env.items():
            mp.setenv(name, value)
        yield running


@pytest.fixture
def firestore_clean(emulators: Emulators) -> Emulators:
    """The emulators, with Firestore emptied before the test."""
    wipe_firestore(emulators.firestore.host, emulators.project)
    return emulators


@pytest.fixture
def functions(emulators: Emulators, tmp_path: Path) -> Iterator[
        Callable[[list[str], Path], dict[str, FunctionProcess]]]:
    """Factory: start functions-framework processes that are stopped after the test.

    Their log tails are printed at teardown; pytest shows them for failed tests.
    """
    started: list[FunctionProcess] = []

    def start(targets: list[str], source: Path) -> dict[str, FunctionProcess]:
        processes = start_functions(targets, source, emulators.env, log_dir=tmp_path / "logs")
        started.extend(processes.values())
        return processes

    yield start
    for process in started:
        process.stop()
        print(f"--- {process.name}: {process.log_path}\n{tail(process.log_path)}")


@contextmanager
def local_stack(emulators: Emulators, state_dir: Path, health_lag: float = 1.5) -> Iterator:
    """The whole local stack on the shared emulators (Firestore wiped first), a tick every 0.5 s; the functions'
    logs are printed when it stops, so a failing stack test shows what the functions said."""
    from pitstop.local.stack import Stack

    wipe_firestore(emulators.firestore.host, emulators.project)
    with Stack(state_dir, emulators=emulators, tick_interval=0.5, health_lag=health_lag,
               identity="alice@example.com") as running:
        yield running
    for process in running.functions.values():
        print(f"--- {process.name}\n{Path(process.log_path).read_text()[-3000:]}")
