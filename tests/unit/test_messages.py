"""Parsing the real wire formats (GCP-FACTS.md) and refusing bad ones clearly."""

from __future__ import annotations

import base64
import importlib.util
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cloudevents.http.event import CloudEvent
from google.api_core.exceptions import ServiceUnavailable

from pitstop.core.limits import MAX_DOC_BYTES, MAX_TEXT, TRUNCATED, bounded, doc_bytes
from pitstop.core.messages import (
    BadMessage, doc_id, envelope, parse_alert, parse_build, parse_command, parse_health, refusing,
)
from pitstop.core.models import AuditEvent
from pitstop.gcp.store import Contention
from pitstop.local.payloads import cloud_build, health_sample, incident, push_envelope
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
    c = parse_command({"action": "promote", "service": "web", "full": True}, "77")
    assert c.id == "command-77" and c.full and c.actor == "unverified"  # the engine sets it from the token
    with pytest.raises(BadMessage, match="'actor' is not accepted"):  # a claimed identity is no identity
        parse_command({"action": "promote", "service": "web", "full": True, "actor": "cto@example.com"}, "80")
    with pytest.raises(BadMessage, match="deploy needs service, environment and ref"):
        parse_command({"action": "deploy", "service": "web"}, "81")
    with pytest.raises(BadMessage, match="action"):
        parse_command({"action": "explode", "service": "web"}, "78")
    with pytest.raises(BadMessage, match="a rollout_id, a release_id or a service"):
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
    (parse_alert, {"version": "1.2", "incident": {"incident_id": "i", "state": "open", "resource": "web"}},
     "incident.resource is a string, expected an object"),
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


# ---------------------------------------------------------------- parsers never crash (issue 7, item 8)
# Each of these once raised something other than BadMessage (500, redelivered forever) or was accepted
# and then failed at the Firestore commit. All go through the real path: push data -> envelope -> parser.

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _through(payload: dict, parse, attributes: dict | None = None):
    body, attrs, mid = envelope(push_envelope(payload, attributes=attributes))
    if parse is parse_build:
        return parse_build(body, attrs)
    if parse is parse_command:
        return parse_command(body, mid)
    return parse(body)


def _sample(**changes):
    return dict(health_sample("web", "web-v2-1", T0, T0 + timedelta(minutes=1), 100, 3, 250.0), **changes)


def _alert(**changes):
    body = incident("web", "web-00003-canary")
    body["incident"].update(changes)
    return body


@pytest.mark.parametrize("started_at", [1e20, -1e20, float("nan"), float("inf"), 2**64, "1e20", "soon", [1], 0])
def test_alert_with_an_impossible_start_is_refused_naming_started_at(started_at):
    with pytest.raises(BadMessage, match="incident.started_at"):
        _through(_alert(started_at=started_at), parse_alert)


def test_alert_start_as_epoch_seconds_in_a_string_is_read():
    assert _through(_alert(started_at="1746178794"), parse_alert).started_at.year == 2025


@pytest.mark.parametrize("levels", [33, 1_000, 100_000])
def test_deeply_nested_json_is_refused_before_it_is_parsed(levels):
    payload = json.dumps(_sample()).replace('"probe"', "[" * levels + "]" * levels)
    with pytest.raises(BadMessage, match="more than 32 levels deep"):
        envelope(push_envelope(None, raw=payload.encode()))


def test_nesting_as_gcp_sends_it_passes_the_depth_check():
    nested = {"a": {"b": {"c": {"d": {"e": [{"f": [1]}]}}}}}
    payload, _, _ = envelope(push_envelope(dict(cloud_build("SUCCESS"), failureInfo=nested)))
    assert payload["failureInfo"] == nested


def test_deep_values_handed_straight_to_a_parser_are_refused_too():
    deep: list = []
    for _ in range(5_000):
        deep = [deep]
    for parse in (parse_health, parse_alert, lambda p: parse_build(p, {}), lambda p: parse_command(p, "1")):
        with pytest.raises(BadMessage):
            parse({"service": deep, "incident": {"incident_id": "i", "state": "open", "summary": deep},
                   "id": "b-1", "status": "SUCCESS", "substitutions": {"X": deep}, "action": "pause"})


@pytest.mark.parametrize("field, value, fragment", [
    ("request_count", 2**64, "request_count: Input should be less than or equal to 9223372036854775807"),
    ("request_count", 2**63, "request_count"),
    ("error_count", -1, "error_count: Input should be greater than or equal to 0"),
    ("window_end", "9999-12-31T23:59:59-23:59", "window_end: 9999-12-31T23:59:59-23:59 is not a time between"),
    ("window_start", "1999-12-31T23:59:00Z", "window_start: .* is not a time between 2000-01-01 and 2100-01-01"),
    ("window_end", "2100-01-01T00:00:00Z", "window_end: .* is not a time between"),
    ("window_end", "2026-01-09T00:00:01Z", "a sample covers at most 8 days"),
    ("latency_p99_ms", float("inf"), "latency_p99_ms: Input should be a finite number"),
    ("latency_p99_ms", float("nan"), "latency_p99_ms: Input should be a finite number"),
    ("latency_p50_ms", 1e308, "latency_p50_ms: Input should be less than or equal to 86400000"),
    ("source", "s" * 129, "source: String should have at most 128 characters"),
    ("service", "w" * 64, "service: String should have at most 63 characters"),
    ("revision", "web-\ud800", "revision contains a lone surrogate"),
])
def test_implausible_health_samples_are_refused_naming_the_field(field, value, fragment):
    with pytest.raises(BadMessage, match=fragment):
        _through(_sample(**{field: value}), parse_health)


def test_health_sample_at_the_bounds_is_accepted():
    s = _through(_sample(request_count=2**63 - 1, error_count=0, window_start="2000-01-01T00:00:00Z",
                         window_end="2000-01-09T00:00:00Z", latency_p99_ms=86_400_000.0), parse_health)
    assert s.request_count == 2**63 - 1 and s.window_end - s.window_start == timedelta(days=8)


def test_a_megabyte_source_is_refused_and_a_bigger_payload_by_size():
    with pytest.raises(BadMessage, match="source: String should have at most 128 characters"):
        _through(_sample(source="s" * 1_100_000), parse_health)
    with pytest.raises(BadMessage, match="larger than the 4096 KiB pitstop accepts"):
        envelope(push_envelope(_sample(source="s" * 5_000_000)))


def test_an_open_incident_with_a_huge_policy_name_still_rolls_back():
    """Refusing it would lose the rollback: the free text is cut, marked, and the alert kept."""
    via_pubsub = _through(_alert(policy_name="p" * 1_100_000, summary="s" * 5_000), parse_alert)
    assert via_pubsub.state == "open" and via_pubsub.revision == "web-00003-canary"
    assert len(via_pubsub.policy) == MAX_TEXT and via_pubsub.policy.endswith(TRUNCATED)
    assert len(via_pubsub.summary) == MAX_TEXT


def test_free_text_with_a_lone_surrogate_is_repaired_not_refused():
    alert = _through(_alert(summary="5xx \ud800 above threshold"), parse_alert)
    assert alert.summary == "5xx \ufffd above threshold"


@pytest.mark.parametrize("changes, fragment", [
    ({"incident_id": "i" * 129}, "incident_id: String should have at most 128 characters"),
    ({"incident_id": 7}, "incident_id 7 is not a string"),
    ({"state": "x" * 100_000}, "state 'xxxx.*truncated.* is neither open nor closed"),
    ({"resource": {"labels": {"service_name": "w" * 64}}}, "service: String should have at most 63"),
    ({"policy_user_labels": ["web"]}, "incident.policy_user_labels is an array, expected an object"),
])
def test_implausible_alerts_are_refused_naming_the_field(changes, fragment):
    with pytest.raises(BadMessage, match=fragment):
        _through(_alert(**changes), parse_alert)


@pytest.mark.parametrize("digest", ["sha256:" + "0" * 63, "sha256:" + "A" * 64, "sha256:" + "g" * 64,
                                    "md5:" + "0" * 32, "sha256:" + "0" * 64 + "\n", "0" * 64])
def test_an_image_digest_must_be_sha256_and_64_lowercase_hex(digest):
    with pytest.raises(BadMessage, match=r"results.images\[0\].digest .* is not 'sha256:' and 64 lowercase hex"):
        _through(cloud_build("SUCCESS", digest=digest), parse_build)


def test_cloud_build_substitutions_are_bounded_strings():
    build = _through(cloud_build("SUCCESS", substitutions={"_NOTES": "n" * 5_000}), parse_build)
    assert len(build.substitutions["_NOTES"]) == MAX_TEXT and build.substitutions["_NOTES"].endswith(TRUNCATED)
    with pytest.raises(BadMessage, match="substitution '_RETRIES' is a number, expected a string"):
        _through(cloud_build("SUCCESS", substitutions={"_RETRIES": 3}), parse_build)
    with pytest.raises(BadMessage, match="version: String should have at most 128 characters"):
        _through(cloud_build("SUCCESS", substitutions={"_VERSION": "v" * 129}), parse_build)
    with pytest.raises(BadMessage, match="createTime .* is not a time between"):
        _through(dict(cloud_build("SUCCESS"), createTime="1970-01-01T00:00:00Z"), parse_build)


def test_commands_are_bounded():
    cmd = _through({"action": "pause", "service": "web", "reason": "r" * 5_000}, parse_command)
    assert len(cmd.reason) == MAX_TEXT and len(cmd.id) <= 128
    with pytest.raises(BadMessage, match="ref: String should have at most 256"):
        _through({"action": "deploy", "service": "web", "environment": "p", "ref": "a" * 257}, parse_command)
    with pytest.raises(BadMessage, match="environment: String should have at most 63"):
        _through({"action": "pause", "service": "web", "environment": "e" * 64}, parse_command)


def test_long_ids_stay_document_ids_and_stay_apart():
    a, b = doc_id("x" * 300 + "a"), doc_id("x" * 300 + "b")
    assert len(a) == len(b) == 128 and a != b
    assert doc_id("0.nrwotmyokd9n") == "0.nrwotmyokd9n"


@pytest.mark.parametrize("data, fragment", [
    (push_envelope({"a": "x" * 4_300_000}), "larger than the 4096 KiB"),
    (push_envelope(None, raw=b'{"id": ' + b"9" * 5000 + b"}"), "JSON pitstop cannot read"),
    (push_envelope({"a": 1}, attributes={"status": 3}), "attribute 'status' is not a string"),
    ({"message": {"data": "e30=", "attributes": {f"k{i}": "v" for i in range(300)}, "messageId": "1"}},
     "300 attributes"),
    ({"message": {"data": "e30=", "messageId": {"a": 1}}}, "messageId .* is not an id"),
])
def test_envelopes_out_of_bounds_are_refused(data, fragment):
    with pytest.raises(BadMessage, match=fragment):
        envelope(data)


@pytest.mark.parametrize("error", [OverflowError("timestamp out of range"), RecursionError("too deep"),
                                   UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
                                   IndexError("list index out of range")])
def test_refusing_turns_what_python_raises_on_bad_data_into_bad_message(error):
    @refusing("test input")
    def parse() -> None:
        raise error

    with pytest.raises(BadMessage, match="invalid test input"):
        parse()


def test_refusal_reasons_are_short_and_printable():
    with pytest.raises(BadMessage) as err:
        parse_command({"action": "pause", "service": "web", "\ud800" + "k" * 100_000: 1}, "1")
    assert len(str(err.value)) <= MAX_TEXT and str(err.value).encode("utf-8")


# ---------------------------------------------------------------- audit documents fit Firestore

def test_bounded_cuts_strings_lists_and_ints_with_a_marker():
    doc = bounded({"s": "x" * 5_000, "l": list(range(500)), "i": 2**64, "ok": 5, "u": "a\ud800",
                   "nested": {"deep": [{"s": "y" * 2_000}]}, "at": T0})
    assert len(doc["s"]) == MAX_TEXT and doc["s"].endswith(TRUNCATED)
    assert len(doc["l"]) == 101 and doc["l"][-1] == f"{TRUNCATED} 400 more items"
    assert doc["i"] == "18446744073709551616" and doc["ok"] == 5 and doc["u"] == "a\ufffd" and doc["at"] == T0
    assert doc["nested"]["deep"][0]["s"].endswith(TRUNCATED)


def test_bounded_keeps_a_whole_document_under_100_kb():
    doc = bounded({f"k{i}": ["x" * 5_000] * 200 for i in range(200)})
    assert doc_bytes(doc) <= MAX_DOC_BYTES


def test_the_audit_of_an_alert_with_a_huge_policy_fits_firestore():
    alert = parse_alert(_alert(policy_name="p" * 1_100_000))
    reason = f"Cloud Monitoring incident {alert.incident_id} opened: {alert.policy} / {alert.condition}"
    event = AuditEvent(id=alert.id, at=T0, input="alert", actor="cloud-monitoring", decision="rolled_back",
                       reasons=[reason] * 3, state_after="rolling_back", detail={"policy": alert.policy * 2})
    doc = event.to_doc()
    assert all(len(r) <= MAX_TEXT for r in doc["reasons"]) and doc["detail"]["policy"].endswith(TRUNCATED)
    assert doc_bytes(doc) <= MAX_DOC_BYTES


# ---------------------------------------------------------------- the functions acknowledge bad data

def _functions_main():
    path = Path(__file__).resolve().parents[2] / "functions" / "main.py"
    spec = importlib.util.spec_from_file_location("pitstop_functions_main", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Engine:
    def __init__(self, error: BaseException | None) -> None:
        self.error, self.alerts = error, []

    def on_alert(self, alert) -> None:
        self.alerts.append(alert)
        if self.error is not None:
            raise self.error


def _alert_event(payload) -> CloudEvent:
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub/test",
                       "id": "42"}, push_envelope(payload, message_id="42"))


def test_a_message_pitstop_can_never_process_is_logged_and_acknowledged(monkeypatch, capsys):
    main = _functions_main()
    monkeypatch.setattr(main, "engine", lambda: _Engine(None))
    main.on_alert(_alert_event(_alert(started_at=1e20)))  # returns: acknowledged
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["severity"] == "ERROR" and "incident.started_at 1e+20" in line["message"]
    assert "Acknowledged; nothing changed" in line["message"]


@pytest.mark.parametrize("error", [OverflowError("date value out of range"), RecursionError("deep"),
                                   UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")])
def test_data_errors_past_the_parser_are_acknowledged_too(monkeypatch, capsys, error):
    main = _functions_main()
    monkeypatch.setattr(main, "engine", lambda: _Engine(error))
    main.on_alert(_alert_event(_alert()))
    assert type(error).__name__ in capsys.readouterr().out


@pytest.mark.parametrize("error", [ServiceUnavailable("firestore down"), Contention("changed 5 times"),
                                   ValueError("Failed to commit transaction in 5 attempts")])
def test_infrastructure_errors_raise_so_pubsub_redelivers(monkeypatch, error):
    main = _functions_main()
    engine = _Engine(error)
    monkeypatch.setattr(main, "engine", lambda: engine)
    with pytest.raises(type(error)):
        main.on_alert(_alert_event(_alert()))
    assert engine.alerts, "the alert was parsed and handed to the engine"


def test_sender_token_comes_from_the_attribute_or_the_payload():
    from pitstop.core.messages import sender_token

    payload = {"action": "pause", "service": "web", "id_token": "a.b.c"}
    assert sender_token(payload, {}) == "a.b.c" and "id_token" not in payload  # never parsed as a field
    assert sender_token({"action": "pause"}, {"id_token": "x.y.z"}) == "x.y.z"
    assert sender_token({}, {}) is None
    with pytest.raises(BadMessage, match="id_token"):
        sender_token({"id_token": "t" * 9000}, {})
    with pytest.raises(BadMessage, match="id_token"):
        sender_token({"id_token": {"forged": True}}, {})
