"""The local plumbing against the real emulators and functions-framework."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pitstop.local import emulators as emulators_module
from pitstop.local.emulators import (
    Emulators, MissingTool, PortInUse, check_prerequisites, start_firestore, start_pubsub, wipe_firestore,
)
from pitstop.local.functions import start_function
from pitstop.local.wiring import ROUTES, TOPICS, create_push_subscription, publish, wire

pytestmark = pytest.mark.emulators

# Two CloudEvent sinks that append what they receive to a file beside the source.
SINK_SOURCE = '''
import json
from pathlib import Path

import functions_framework


def _record(name, event):
    line = {"id": event["id"], "type": event["type"], "message": event.data["message"]}
    with open(Path(__file__).with_name(name), "a") as f:
        f.write(json.dumps(line) + "\\n")


@functions_framework.cloud_event
def sink(event):
    _record("sink.jsonl", event)


@functions_framework.cloud_event
def sink_b(event):
    _record("sink_b.jsonl", event)
'''

DELIVERY_WAIT_S = 60.0  # the emulator pushes within a second or so; be generous


def _write_sink(directory: Path) -> Path:
    source = directory / "main.py"
    source.write_text(SINK_SOURCE)
    return source


def _received(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_for_message(path: Path, message_id: str) -> dict:
    deadline = time.monotonic() + DELIVERY_WAIT_S
    while time.monotonic() < deadline:
        for event in _received(path):
            if event["message"]["messageId"] == message_id:
                return event
        time.sleep(0.1)
    raise AssertionError(f"message {message_id} never reached {path.name}: {_received(path)}")


def _live_pids_in_group(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "pgid=", "-o", "stat="],
                         capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid, group, stat in (line.split(maxsplit=2) for line in out.splitlines())
            if int(group) == pgid and not stat.startswith("Z")]


def _port_open(host: str) -> bool:
    address, port = host.split(":")
    try:
        with socket.create_connection((address, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_firestore_emulator_serves_the_real_client_and_wipes(firestore_clean: Emulators) -> None:
    from google.cloud import firestore

    assert os.environ["FIRESTORE_EMULATOR_HOST"] == firestore_clean.firestore.host
    db = firestore.Client(project=firestore_clean.project)
    ref = db.collection("rollouts").document("r1")
    ref.set({"state": "pending", "service": "web"})
    assert ref.get().to_dict() == {"state": "pending", "service": "web"}

    wipe_firestore(firestore_clean.firestore.host, firestore_clean.project)

    assert not ref.get().exists


def test_pubsub_emulator_publish_and_pull(emulators: Emulators) -> None:
    from google.cloud import pubsub_v1

    assert os.environ["PUBSUB_EMULATOR_HOST"] == emulators.pubsub.host
    topic = f"plumbing-pull-{uuid.uuid4().hex[:8]}"
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(emulators.project, topic))
    with pubsub_v1.SubscriberClient() as subscriber:
        subscription = subscriber.subscription_path(emulators.project, topic)
        subscriber.create_subscription(
            name=subscription, topic=publisher.topic_path(emulators.project, topic))

        message_id = publish(emulators.project, topic, b"hello", buildId="b1", status="SUCCESS")

        response = subscriber.pull(subscription=subscription, max_messages=1, timeout=30)
    [received] = response.received_messages
    assert received.message.message_id == message_id
    assert received.message.data == b"hello"
    assert dict(received.message.attributes) == {"buildId": "b1", "status": "SUCCESS"}


def test_push_subscription_delivers_a_cloudevent(emulators: Emulators, functions, tmp_path: Path) -> None:
    from google.cloud import pubsub_v1

    source = _write_sink(tmp_path)
    sink = functions(["sink"], source)["sink"]
    topic = f"plumbing-push-{uuid.uuid4().hex[:8]}"

    wire(emulators.project, {topic: sink.url})
    wire(emulators.project, {topic: sink.url})  # idempotent: a second run changes nothing
    message_id = publish(emulators.project, topic, b'{"rollout": "r1"}', buildId="b1", status="SUCCESS")

    event = _wait_for_message(tmp_path / "sink.jsonl", message_id)
    assert event["id"] == message_id
    assert event["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert base64.b64decode(event["message"]["data"]) == b'{"rollout": "r1"}'
    assert event["message"]["attributes"] == {"buildId": "b1", "status": "SUCCESS"}
    publisher = pubsub_v1.PublisherClient()
    existing = {t.name.rsplit("/", 1)[1] for t in publisher.list_topics(project=f"projects/{emulators.project}")}
    assert set(TOPICS) | {topic} <= existing


def test_push_subscription_can_be_pointed_at_a_new_endpoint(
        emulators: Emulators, functions, tmp_path: Path) -> None:
    source = _write_sink(tmp_path)
    started = functions(["sink", "sink_b"], source)
    topic = f"plumbing-rewire-{uuid.uuid4().hex[:8]}"
    wire(emulators.project, {topic: started["sink"].url})
    first = publish(emulators.project, topic, b"1")
    _wait_for_message(tmp_path / "sink.jsonl", first)

    create_push_subscription(emulators.project, topic, started["sink_b"].url)
    second = publish(emulators.project, topic, b"2")

    _wait_for_message(tmp_path / "sink_b.jsonl", second)
    assert [e["message"]["messageId"] for e in _received(tmp_path / "sink.jsonl")] == [first]


def test_routes_name_the_consuming_functions() -> None:
    assert ROUTES == {
        "cloud-builds": "on_build", "pitstop-health": "on_health", "pitstop-ticks": "on_tick",
        "pitstop-alerts": "on_alert", "pitstop-commands": "on_command", "pitstop-events": "on_event",
    }
    assert set(ROUTES) <= set(TOPICS)


def test_emulator_stop_leaves_no_process_or_port_behind() -> None:
    with start_firestore("pitstop-stop-test") as emulator:
        pids = _live_pids_in_group(emulator.pid)
        assert len(pids) >= 2  # the gcloud wrapper and the JVM it spawned
        assert _port_open(emulator.host)

    assert _live_pids_in_group(emulator.pid) == []
    assert not _port_open(emulator.host)
    emulator.stop()  # a second stop is harmless


def test_function_stop_leaves_no_process_or_port_behind(tmp_path: Path) -> None:
    process = start_function("sink", _write_sink(tmp_path), log_dir=tmp_path)
    pids = _live_pids_in_group(process.pid)
    assert len(pids) >= 2  # gunicorn master and its worker

    process.stop()

    assert _live_pids_in_group(process.pid) == []
    assert not _port_open(f"127.0.0.1:{process.port}")


def test_function_that_cannot_load_fails_with_its_traceback(tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text("import no_such_module_in_pitstop\n")

    with pytest.raises(RuntimeError, match="before it was ready") as failure:
        start_function("sink", source, log_dir=tmp_path)

    assert "no_such_module_in_pitstop" in str(failure.value)


def test_emulator_on_a_taken_port_fails_fast_with_its_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(PortInUse, match="Pub/Sub emulator .* could not bind") as failure:
            start_pubsub("pitstop-bind-test", port=port)

    assert "Address already in use" in str(failure.value)
    kept_log = re.search(r"Last lines of its log \((.+?)\)", str(failure.value))
    assert kept_log and Path(kept_log[1]).is_file()  # the path shown to the user exists
    shutil.rmtree(Path(kept_log[1]).parent)


def test_emulator_picks_another_port_when_its_free_port_was_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        # The race free_port() cannot exclude: another process takes the port first.
        ports = iter([taken_port])
        real_free_port = emulators_module.free_port
        monkeypatch.setattr(emulators_module, "free_port", lambda: next(ports, None) or real_free_port())

        with start_pubsub("pitstop-retry-test") as emulator:
            assert emulator.host != f"127.0.0.1:{taken_port}"
            assert _port_open(emulator.host)


def _path_with(tmp_path: Path, **programs: str | None) -> str:
    """A PATH holding only the named programs (name -> what they link to)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in programs.items():
        assert target, f"{name} must be installed to run this test"
        (bin_dir / name).symlink_to(target)
    return str(bin_dir)


def test_missing_gcloud_names_the_install_commands(tmp_path: Path) -> None:
    java = shutil.which("java")

    with pytest.raises(MissingTool) as failure:
        check_prerequisites(_path_with(tmp_path, java=java))

    message = str(failure.value)
    assert "`gcloud` is not on PATH" in message
    assert "https://cloud.google.com/sdk/docs/install" in message
    assert "gcloud components install cloud-firestore-emulator pubsub-emulator beta" in message
    assert "`java` is not on PATH" not in message


def test_missing_java_names_how_to_install_it(tmp_path: Path) -> None:
    gcloud = shutil.which("gcloud")

    with pytest.raises(MissingTool, match="`java` is not on PATH.*openjdk"):
        check_prerequisites(_path_with(tmp_path, gcloud=gcloud))


def test_gcloud_without_emulator_components_names_them(tmp_path: Path) -> None:
    fake_sdk_bin = tmp_path / "sdk" / "bin"
    fake_sdk_bin.mkdir(parents=True)
    (fake_sdk_bin / "gcloud").write_text("#!/bin/sh\n")
    (fake_sdk_bin / "gcloud").chmod(0o755)
    java = shutil.which("java")

    with pytest.raises(MissingTool) as failure:
        check_prerequisites(f"{fake_sdk_bin}{os.pathsep}{_path_with(tmp_path, java=java)}")

    message = str(failure.value)
    assert "lacks the components cloud-firestore-emulator, pubsub-emulator, beta" in message
    assert "google-cloud-cli-firestore-emulator" in message


def test_start_without_gcloud_raises_missing_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(MissingTool, match="gcloud"):
        start_firestore("pitstop-missing")
