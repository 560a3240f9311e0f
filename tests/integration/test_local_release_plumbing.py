"""Local-stack pieces releases need: tag builds, per-region app behaviour, load on several URLs.

Through the real clients: builds are read back from the Pub/Sub emulator and the local Cloud Build
API and parsed by the production parser; services are created in two locations of the local Cloud
Run with the real run_v2 client, from the example app's image.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from pitstop.core.messages import parse_build
from pitstop.gcp.cloudbuild import CloudBuild
from pitstop.local.build import build_image, ship
from pitstop.local.cloudbuild import read_build, start_cloudbuild
from pitstop.local.cloudrun import LocalCloudRun
from pitstop.local.emulators import Emulators
from pitstop.local.load import APP_5XX, OK, MultiLoad
from pitstop.local.wiring import create_topics

PROJECT = "pitstop-test"
HEALTHY, FAILING = "us-central1", "europe-west1"


# --- tag builds ----------------------------------------------------------------------

def _published(emulators: Emulators, subscription: str, build_id: str, n: int) -> dict[str, dict[str, Any]]:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        response = subscriber.pull(subscription=subscription, max_messages=20, timeout=5)
        for received in response.received_messages:
            if received.message.attributes["buildId"] == build_id:
                got[received.message.attributes["status"]] = json.loads(received.message.data)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
    subscriber.close()
    return got


@pytest.mark.emulators
def test_a_tag_build_reads_as_a_tag_build_from_the_message_and_the_api(emulators: Emulators, tmp_path: Path) -> None:
    from google.cloud import pubsub_v1

    create_topics(emulators.project, ["cloud-builds"])
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(emulators.project, f"tag-builds-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=f"projects/{emulators.project}/topics/cloud-builds")
    server = start_cloudbuild(tmp_path, emulators.project)
    try:
        build_id = ship(tmp_path, emulators.project, "web", "v1.4.0", tag="v1.4.0")
        published = _published(emulators, subscription, build_id, 3)
        fetched = CloudBuild.from_endpoint(server.url).build(emulators.project, build_id)  # as engine._confirmed
    finally:
        server.stop()
        subscriber.delete_subscription(subscription=subscription)
        subscriber.close()

    assert sorted(published) == ["QUEUED", "SUCCESS", "WORKING"]
    assert fetched == published["SUCCESS"]
    subs = fetched["substitutions"]
    assert "BRANCH_NAME" not in subs and subs["TAG_NAME"] == subs["REF_NAME"] == "v1.4.0"
    for body in (*published.values(), fetched):
        build = parse_build(body, {})
        assert (build.branch, build.tag) == (None, "v1.4.0")
    artifact = parse_build(fetched, {}).artifact
    assert artifact is not None and (artifact.branch, artifact.tag, artifact.version) == (None, "v1.4.0", "v1.4.0")

    branch_build = parse_build(read_build(tmp_path, ship(tmp_path, emulators.project, "web", "v2")), {})
    assert (branch_build.branch, branch_build.tag) == ("main", None)  # the default is unchanged


@pytest.mark.emulators
def test_dev_ship_takes_a_tag_or_a_branch_not_both(emulators: Emulators, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pitstop.surfaces.cli import _config, app

    env = {**emulators.env, "GOOGLE_CLOUD_PROJECT": emulators.project, "PITSTOP_LOCAL_STATE": str(tmp_path),
           "PITSTOP_USE_GCP": "1"}  # not a dev stack's .pitstop/dev.env that may exist here

    def dev_ship(*args: str):
        _config.cache_clear()
        return CliRunner().invoke(app, ["dev", "ship", *args], env=env)

    refs = {}
    for args in (["v5", "--tag", "v5"], ["v6", "--branch", "release"], ["v7"]):
        result = dev_ship(*args)
        assert result.exit_code == 0, result.output
        build = parse_build(read_build(tmp_path, re.search(r"build ([0-9a-f-]{36})", result.output).group(1)), {})
        refs[args[0]] = (build.branch, build.tag)
    assert refs == {"v5": (None, "v5"), "v6": ("release", None), "v7": ("main", None)}

    both = dev_ship("v8", "--tag", "v8", "--branch", "main")
    assert both.exit_code == 1 and "not both" in both.output


# --- per-region behaviour and load on several URLs --------------------------------------

@pytest.fixture(scope="module")
def two_regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Service `web` in HEALTHY and FAILING from one image with FAIL_RATE=1 FAIL_REGIONS=FAILING: {location: url}."""
    state = tmp_path_factory.mktemp("release-plumbing")
    name, digest = build_image(state, PROJECT, "web", "v3", {"FAIL_RATE": "1", "FAIL_REGIONS": f" {FAILING} ,x"})
    cloud_run = LocalCloudRun(state, startup_timeout_s=30)
    cloud_run.start()
    try:
        services = run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                         client_options=ClientOptions(api_endpoint=cloud_run.url))
        template = run_v2.RevisionTemplate(revision="web-v3", containers=[run_v2.Container(
            image=f"{name.split(':')[0]}@{digest}")])
        operations = {location: services.create_service(
            parent=f"projects/{PROJECT}/locations/{location}", service_id="web",
            service=run_v2.Service(template=template)) for location in (HEALTHY, FAILING)}
        yield {location: op.result(timeout=60).uri for location, op in operations.items()}
    finally:
        cloud_run.stop()


def test_fail_regions_fail_only_where_the_revision_runs_in_one(two_regions: dict[str, str]) -> None:
    with httpx.Client(timeout=10) as http:
        answers = {location: [http.get(url) for _ in range(5)] for location, url in two_regions.items()}
    assert {r.status_code for r in answers[HEALTHY]} == {200}
    assert {r.status_code for r in answers[FAILING]} == {500}
    for location, responses in answers.items():  # the app knows its region from PITSTOP_LOCAL_REGION
        assert {r.json()["region"] for r in responses} == {location}


def test_multiload_loads_each_url_with_its_share_of_the_rate(two_regions: dict[str, str]) -> None:
    with MultiLoad({f"production/{location}": url for location, url in two_regions.items()},
                   rps=40, max_duration_s=1) as load:
        deadline = time.monotonic() + 15
        while load.running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not load.running
    counts = load.counts()
    assert set(counts) == {f"production/{HEALTHY}", f"production/{FAILING}"}
    assert set(counts[f"production/{HEALTHY}"]) == {OK} and set(counts[f"production/{FAILING}"]) == {APP_5XX}
    for results in load.results().values():
        assert 15 <= len(results) <= 21  # 20/s for 1 s: slots 0..20
        assert {r.revision for r in results} == {"web-v3"}

    with pytest.raises(ValueError):
        MultiLoad([], rps=10)
    assert set(MultiLoad(list(two_regions.values()), rps=10).loads) == set(two_regions.values())
