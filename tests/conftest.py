"""Fixtures shared by the whole suite.

Emulators start only when a test asks for them, once per session, so pure
unit tests stay fast and need no gcloud.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pitstop.local.emulators import Emulators, start_emulators, tail, wipe_firestore
from pitstop.local.functions import FunctionProcess, start_functions

PROJECT = "pitstop-test"


@pytest.fixture(scope="session")
def emulators() -> Iterator[Emulators]:
    """Both emulators for project "pitstop-test", with their env set in os.environ."""
    with start_emulators(PROJECT) as running, pytest.MonkeyPatch.context() as mp:
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
