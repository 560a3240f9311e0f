"""Parsing the real wire formats (GCP-FACTS.md) and refusing bad ones clearly."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest

from pitstop.local.payloads import cloud_build, health_sample, incident, push_envelope
from pitstop.core.messages import BadMessage, envelope, parse_alert, parse_build, parse_command, parse_health
from pitstop.core.spec import SpecError, load_spec, matches

# The SUCCESS example of GCP-FACTS.md, verbatim but for the elided digest.
FACTS_BUILD = {
    "id": "0d97c63e-a349-4bf7-80d0-8f6e21786d87", "projectId": "p", "status": "SUCCESS",
    "buildTriggerId": "33f60a9c-3d79-4941-bfb1-fccbdd9cf38c",
    "createTime": "2024-02-21T16:56:35.560619Z", "startTime": "2024-02-21T16:56:36.43Z",
    "finishTime": "2024-02-21T16:59:02.96Z",
    "substitutions": {"COMMIT_SHA": "a017b5e59a1cf9fdbed5999e1a9aced5404de4cd", "SHORT_SHA": "a017b5e",
                      "BRANCH_NAME": "main", "REF_NAME": "main", "REPO_NAME": "web", "TRIGGER_NAME": "build-web"},
    "images": ["us-central1-docker.pkg.dev/p/repo/web:a017b5e"],
    "results": {"images": [{"name": "us-central1-docker.pkg.dev/p/repo/web:a017b5e",
                            "digest": "sha256:0bb2f72d" + "0" * 56}]},
    "logUrl": "https://console.cloud.google.com/cloud-build/builds;region=us-central1/0d97c63e?project=39300730911",
}


def test_cloud_build_success_message_as_published():
    data = push_envelope(FACTS_BUILD, attributes={"buildId": FACTS_BUILD["id"], "status": "SUCCESS"})
    payload, attributes, _ = envelope(data)
    build = parse_build(payload, attributes)
    assert (build.status, build.repo, build.branch, build.trigger) == ("SUCCESS", "web", "main", "build-web")
    assert build.id == "build-0d97c63e-a349-4bf7-80d0-8f6e21786d87-SUCCESS"
    a = build.artifact
    assert a.version == "a017b5e" and a.commit.startswith("a017b5e59")
    assert a.image_by_digest == "us-central1-docker.pkg.dev/p/repo/web@sha256:0bb2f72d" + "0" * 56


def test_version_prefers_explicit_substitution_then_tag():
    b = parse_build(cloud_build("SUCCESS", tag="v1.2.3", branch=None), {})
    assert b.tag == "v1.2.3" and b.branch is None and b.artifact.version == "v1.2.3"
    b = parse_build(cloud_build("SUCCESS", substitutions={"_VERSION": "1.4.0"}), {})
    assert b.artifact.version == "1.4.0"


def test_success_without_images_has_no_artifact_and_failure_keeps_detail():
    assert parse_build(cloud_build("SUCCESS", with_images=False), {}).artifact is None
    failed = parse_build(cloud_build("FAILURE"), {})
    assert failed.artifact is None and "pytest" in failed.status_detail


def test_status_from_attributes_when_body_lacks_it():
    body = cloud_build("WORKING")
    del body["status"]
    assert parse_build(body, {"buildId": body["id"], "status": "WORKING"}).status == "WORKING"


@pytest.mark.parametrize("data, fragment", [
    ({"message": {"data": "!!!not base64", "messageId": "1"}}, "not valid base64"),
    ({"message": {"data": base64.b64encode(b"{nope").decode(), "messageId": "2"}}, "not JSON"),
    ({"message": {"data": base64.b64encode(b"[1, 2]").decode(), "messageId": "3"}}, "expected an object"),
    ({"message": {"messageId": "4"}}, "has no data"),
    ({"nothing": 1}, "no 'message' object"),
])
def test_bad_envelopes_say_what_is_wrong(data, fragment):
    with pytest.raises(BadMessage, match=fragment):
        envelope(data)


def test_unknown_build_status_is_refused():
    with pytest.raises(BadMessage, match="status"):
        parse_build({"id": "x", "status": "EXPLODED"}, {})


def test_health_sample_validation_names_the_field():
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    good = health_sample("web", "web-v2-1", t, t + timedelta(minutes=1), 100, 3, 250.0)
    a, b = parse_health(good), parse_health(dict(good))
    assert a.id == b.id, "the same sample published twice is one input"
    bad = dict(good, error_count=500)
    with pytest.raises(BadMessage, match="error_count cannot exceed"):
        parse_health(bad)
    missing = {k: v for k, v in good.items() if k != "request_count"}
    with pytest.raises(BadMessage, match="request_count: Field required"):
        parse_health(missing)
    with pytest.raises(BadMessage, match="window_end"):
        parse_health(dict(good, window_end="yesterday"))


def test_alert_schema_1_2_and_test_notifications():
    a = parse_alert(incident("web", "web-00003-canary"))
    assert (a.state, a.service, a.revision, a.location, a.test) == ("open", "web", "web-00003-canary",
                                                                     "us-central1", False)
    assert a.id == "alert-0.nrwotmyokd9n-open" and a.observed_value == "0.31"
    closed = parse_alert(incident("web", None, state="closed"))
    assert closed.state == "closed" and closed.revision is None
    t = parse_alert(incident("web", None, test=True))
    assert t.test and t.state == "open"
    with pytest.raises(BadMessage, match="incident"):
        parse_alert({"version": "1.2"})


def test_commands():
    c = parse_command({"action": "promote", "service": "web", "full": True, "actor": "alice"}, "77")
    assert c.id == "command-77" and c.full
    with pytest.raises(BadMessage, match="action"):
        parse_command({"action": "explode", "service": "web"}, "78")
    with pytest.raises(BadMessage, match="rollout_id or a service"):
        parse_command({"action": "pause"}, "79")


def test_spec_errors_name_the_field():
    with pytest.raises(SpecError) as err:
        load_spec("service: Web_1\nregions: []\nmatch: {}\nstrategy: {canary: {steps: [{weight: 150}]}}\n"
                  "health: {max_error_rate: 2, colour: red}")
    text = str(err.value)
    for fragment in ("service:", "regions:", "match:", "strategy.canary.steps.0.weight:", "health.max_error_rate:",
                     "health.colour: unknown field"):
        assert fragment in text, text
    with pytest.raises(SpecError, match="pause.*expected a duration"):
        load_spec("service: web\nregions: [r]\nmatch: {repo: web}\nstrategy: {canary: {steps: [{weight: 5, "
                  "pause: soon}]}}")
    with pytest.raises(SpecError, match="strictly increase"):
        load_spec("service: web\nregions: [r]\nmatch: {repo: web}\nstrategy: {canary: {steps: [{weight: 50}, "
                  "{weight: 10}]}}")
    with pytest.raises(SpecError, match="exactly one of canary or blue_green"):
        load_spec("service: web\nregions: [r]\nmatch: {repo: web}\nstrategy: {}")


def test_spec_matching():
    spec = load_spec("service: web\nregions: [r]\nmatch: {repo: web, branch: 'release/*'}")
    assert spec.strategy.canary.steps[0].weight == 5, "default steps 5 -> 10 -> 25"
    assert matches(spec, parse_build(cloud_build("SUCCESS", branch="release/1.2"), {}))
    assert not matches(spec, parse_build(cloud_build("SUCCESS", branch="main"), {}))
    assert not matches(spec, parse_build(cloud_build("SUCCESS", repo="api", branch="release/1"), {}))
    assert not matches(spec, parse_build(cloud_build("SUCCESS", branch="release/1",
                                                     substitutions={"_SERVICE": "api"}), {}))
    tags = load_spec("service: web\nregions: [r]\nmatch: {tag: 'v*'}")
    assert matches(tags, parse_build(cloud_build("SUCCESS", tag="v2.0.0", branch=None), {}))
    assert not matches(tags, parse_build(cloud_build("SUCCESS"), {}))
    assert json.loads(spec.model_dump_json())["strategy"]["canary"]["steps"][0]["pause"] == "5m"


@pytest.mark.parametrize("parse, payload, fragment", [
    (parse_alert, {"version": "1.2", "incident": {"incident_id": "i", "state": "open",
                                                                     "resource": "web"}}, "AttributeError"),
    (parse_alert, {"version": "1.2", "incident": {"incident_id": "i", "state": "open",
                                                                     "policy_name": ["x"]}}, "policy"),
    (lambda p: parse_build(p, {}), dict(cloud_build("SUCCESS"), results={"images": [{"name": "r/web:1",
                                                                                      "digest": 5}]}), "digest"),
    (lambda p: parse_build(p, {}), {"id": "a/b", "status": "SUCCESS"}, "not a build id"),
    (lambda p: parse_command(p, "m"), {"action": "abort", "rollout_id": "a/b"}, "rollout_id"),
    (lambda p: parse_command(p, "m"), {"action": "abort", "rollout_id": "__x__"}, "rollout_id"),
])
def test_wrong_types_deep_inside_are_refused_not_crashing(parse, payload, fragment):
    with pytest.raises(BadMessage, match=fragment):
        parse(payload)


def test_timestamps_without_a_zone_are_refused():
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    sample = health_sample("web", "web-v2-1", t, t + timedelta(minutes=1), 100, 0, 10)
    with pytest.raises(BadMessage, match="window_start.*timezone"):
        parse_health(dict(sample, window_start="2026-01-01T00:00:00"))


def test_envelope_with_wrong_shapes_is_refused():
    with pytest.raises(BadMessage):
        envelope({"message": {"data": {"a": 1}, "messageId": "1"}})
    with pytest.raises(BadMessage):
        envelope({"message": {"data": base64.b64encode(b"{}").decode(), "attributes": [1], "messageId": "1"}})


def test_trigger_matches_by_name_or_id_and_creation_time_is_kept():
    build = parse_build(FACTS_BUILD, {})
    assert build.trigger == "build-web" and build.trigger_id == "33f60a9c-3d79-4941-bfb1-fccbdd9cf38c"
    assert build.artifact.created_at.isoformat() == "2024-02-21T16:56:35.560619+00:00"
    by_id = load_spec("service: web\nregions: [r]\nmatch: {trigger: 33f60a9c-3d79-4941-bfb1-fccbdd9cf38c}")
    assert matches(by_id, build)
