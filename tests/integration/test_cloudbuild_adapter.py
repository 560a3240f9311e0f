"""The Cloud Build adapter against the local Cloud Build, through the real cloudbuild_v1 REST client.

No mocks: builds are the ones the stand-ins announce on the Pub/Sub emulator's
`cloud-builds` topic, read back here through a pull subscription.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions

from pitstop.core.messages import parse_build
from pitstop.gcp.cloudbuild import CloudBuild
from pitstop.local.build import ship
from pitstop.local.cloudbuild import LocalCloudBuild, record_build, register_trigger, start_cloudbuild
from pitstop.local.emulators import Emulators
from pitstop.local.payloads import cloud_build
from pitstop.local.wiring import create_topics

pytestmark = pytest.mark.emulators

REGION = "us-central1"


class Inbox:
    """Every message on `cloud-builds`, pulled as it comes, by build id."""

    def __init__(self, project: str) -> None:
        import json

        from google.cloud import pubsub_v1

        self._json = json
        create_topics(project, ["cloud-builds"])
        self.subscriber = pubsub_v1.SubscriberClient()
        self.path = self.subscriber.subscription_path(project, f"cloudbuild-adapter-{uuid.uuid4().hex[:8]}")
        self.subscriber.create_subscription(name=self.path, topic=f"projects/{project}/topics/cloud-builds")
        self.by_build: dict[str, list[tuple[dict[str, str], dict[str, Any]]]] = {}

    def wait(self, build_id: str, statuses: list[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
        """The payloads published for `build_id`, by status, once all of `statuses` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            got = {attrs["status"]: body for attrs, body in self.by_build.get(build_id, [])}
            if set(statuses) <= set(got) or time.monotonic() > deadline:
                assert set(statuses) <= set(got), f"build {build_id}: published {sorted(got)}, expected {statuses}"
                return got
            response = self.subscriber.pull(subscription=self.path, max_messages=50, timeout=5)
            for received in response.received_messages:
                attrs = dict(received.message.attributes)
                self.by_build.setdefault(attrs["buildId"], []).append(
                    (attrs, self._json.loads(received.message.data)))
            if response.received_messages:
                self.subscriber.acknowledge(subscription=self.path,
                                            ack_ids=[m.ack_id for m in response.received_messages])

    def statuses(self, build_id: str) -> list[str]:
        return [attrs["status"] for attrs, _ in self.by_build.get(build_id, [])]

    def close(self) -> None:
        self.subscriber.delete_subscription(subscription=self.path)
        self.subscriber.close()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cloudbuild")


@pytest.fixture(scope="module")
def inbox(emulators: Emulators) -> Iterator[Inbox]:
    box = Inbox(emulators.project)
    yield box
    box.close()


@pytest.fixture(scope="module")
def server(emulators: Emulators, state: Path) -> Iterator[LocalCloudBuild]:
    running = start_cloudbuild(state, emulators.project)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cb(server: LocalCloudBuild) -> CloudBuild:
    return CloudBuild.from_endpoint(server.url)


@pytest.fixture(scope="module")
def trigger(state: Path) -> dict[str, str]:
    return register_trigger(state, "build-web", "web")


# --- get_build -------------------------------------------------------------------

def test_a_shipped_build_is_fetched_as_it_was_published(
        cb: CloudBuild, inbox: Inbox, state: Path, emulators: Emulators) -> None:
    build_id = ship(state, emulators.project, "web", "v7", branch="release")
    published = inbox.wait(build_id, ["QUEUED", "WORKING", "SUCCESS"])["SUCCESS"]

    fetched = cb.build(emulators.project, build_id)
    regional = cb.build(emulators.project, build_id, location=REGION)

    assert fetched == published  # the JSON survives the API's proto round trip exactly
    assert regional == published
    ours, theirs = parse_build(fetched, {}), parse_build(published, {})
    assert ours == theirs
    artifact = ours.artifact
    assert artifact is not None and artifact == theirs.artifact
    assert (artifact.version, artifact.branch, artifact.trigger) == ("v7", "release", "build-web")
    assert artifact.image == f"us-central1-docker.pkg.dev/{emulators.project}/apps/web:v7"
    assert artifact.digest.startswith("sha256:") and artifact.commit == published["substitutions"]["COMMIT_SHA"]


def test_every_status_ship_announces_is_recorded_before_it_is_published(
        cb: CloudBuild, inbox: Inbox, state: Path, emulators: Emulators) -> None:
    build_id = ship(state, emulators.project, "web", "v8", fail=True)
    inbox.wait(build_id, ["QUEUED", "WORKING", "FAILURE"])
    fetched = cb.build(emulators.project, build_id)
    assert fetched is not None and fetched["status"] == "FAILURE"
    assert fetched["statusDetail"].startswith("Build step 1")
    assert parse_build(fetched, {}).artifact is None


def test_unknown_build_is_none(cb: CloudBuild, emulators: Emulators) -> None:
    assert cb.build(emulators.project, str(uuid.uuid4())) is None
    assert cb.build(emulators.project, str(uuid.uuid4()), location=REGION) is None
    for not_an_id in ("../triggers/x", "a/b", "", "x" * 101, "id with spaces"):  # ids come from messages
        assert cb.build(emulators.project, not_an_id) is None


def test_a_build_of_another_project_is_none(cb: CloudBuild, state: Path, emulators: Emulators) -> None:
    theirs = cloud_build("SUCCESS", project="someone-else")
    record_build(state, theirs)

    assert cb.build(emulators.project, theirs["id"]) is None
    assert cb.build(emulators.project, theirs["id"], location=REGION) is None
    assert cb.build("someone-else", theirs["id"]) == theirs


def test_a_regional_build_is_found_only_in_its_location(cb: CloudBuild, state: Path, emulators: Emulators) -> None:
    build = cloud_build("SUCCESS", project=emulators.project)
    build["name"] = f"projects/{emulators.project}/locations/europe-west1/builds/{build['id']}"
    record_build(state, build)

    assert cb.build(emulators.project, build["id"], location="europe-west1") == build
    assert cb.build(emulators.project, build["id"]) is None
    assert cb.build(emulators.project, build["id"], location=REGION) is None


# --- run_trigger -----------------------------------------------------------------

@pytest.mark.parametrize("ref, version", [
    ({"branch": "feature/login"}, "feature-login"),
    ({"tag": "v1.4.0"}, "v1.4.0"),
    ({"commit": "4f2a9c0e1d7b3a5c6e8f9a0b1c2d3e4f5a6b7c8d"}, "4f2a9c0"),
])
def test_run_trigger_answers_at_once_then_the_build_succeeds(
        cb: CloudBuild, inbox: Inbox, trigger: dict[str, str], emulators: Emulators,
        ref: dict[str, str], version: str) -> None:
    started = time.monotonic()
    build = cb.run_trigger(emulators.project, "build-web", **ref)
    assert time.monotonic() - started < 2  # answered without waiting for the build

    assert build["status"] == "QUEUED" and build["id"] and build["logUrl"]
    assert build["buildTriggerId"] == trigger["id"]
    published = inbox.wait(build["id"], ["QUEUED", "WORKING", "SUCCESS"])
    assert inbox.statuses(build["id"]) == ["QUEUED", "WORKING", "SUCCESS"]

    done = cb.build(emulators.project, build["id"])
    assert done is not None and done["status"] == "SUCCESS"
    assert done == published["SUCCESS"]
    [image] = done["results"]["images"]
    assert image["name"].endswith(f"/web:{version}") and image["digest"].startswith("sha256:")
    finished = parse_build(done, {})
    assert finished.artifact is not None and finished.artifact.version == version
    assert finished.trigger == "build-web" and finished.trigger_id == trigger["id"]
    assert (finished.branch, finished.tag) == (ref.get("branch"), ref.get("tag"))
    if "commit" in ref:
        assert finished.commit == ref["commit"]


def test_run_a_regional_trigger_by_id_with_substitutions(
        cb: CloudBuild, inbox: Inbox, trigger: dict[str, str], emulators: Emulators) -> None:
    build = cb.run_trigger(emulators.project, trigger["id"], branch="main", location=REGION,
                           substitutions={"_SERVICE": "web"})

    inbox.wait(build["id"], ["SUCCESS"])
    assert cb.build(emulators.project, build["id"]) is None  # regional: not under the global path
    done = cb.build(emulators.project, build["id"], location=REGION)
    assert done is not None and done["status"] == "SUCCESS"
    assert done["substitutions"]["_SERVICE"] == "web" and done["substitutions"]["_VERSION"] == "main"


def test_the_operation_can_be_polled_to_the_finished_build(
        cb: CloudBuild, trigger: dict[str, str], emulators: Emulators) -> None:
    from google.cloud.devtools.cloudbuild_v1.types import Build, RepoSource

    operation = cb.client.run_build_trigger(project_id=emulators.project, trigger_id="build-web",
                                            source=RepoSource(tag_name="v2.0.0"))
    result = operation.result(timeout=30)
    assert result.status == Build.Status.SUCCESS
    assert result.results.images[0].name.endswith("/web:v2.0.0")


def test_unknown_trigger_is_a_clear_not_found(cb: CloudBuild, trigger: dict[str, str],
                                              emulators: Emulators) -> None:
    with pytest.raises(exceptions.NotFound, match="'deploy-nothing' not found"):
        cb.run_trigger(emulators.project, "deploy-nothing", branch="main")
    with pytest.raises(exceptions.NotFound, match="'build-web' not found"):  # triggers belong to a project
        cb.run_trigger("someone-else", "build-web", branch="main")


@pytest.mark.parametrize("refs", [{"branch": "main", "tag": "v1"}, {"tag": "v1", "commit": "abc1234"}, {}])
def test_run_trigger_needs_exactly_one_ref(cb: CloudBuild, refs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly one of branch, tag or commit"):
        cb.run_trigger("any", "build-web", **refs)
