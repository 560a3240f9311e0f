"""Issue #8's attacks, tried on the local stack as someone with publish rights would: forged builds, forged and
unauthorised commands, forged health samples, self-approval, and an edited audit trail. Each is refused with its
reason and changes nothing; the same actions with the right identities work, and the audit names the verified
sender. Everything goes through the real functions, the real Pub/Sub and Firestore emulators, the local Cloud
Build API and the local ID-token issuer, whose tokens the functions verify exactly as they verify Google's."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pitstop.gcp.store import Store
from pitstop.local.build import build_image, ship
from pitstop.local.cloudbuild import record_build
from pitstop.local.payloads import cloud_build, health_sample
from pitstop.local.emulators import wipe_firestore
from pitstop.local.stack import Stack, wait_for

pytestmark = pytest.mark.emulators
REGION = "us-central1"
ADMIN, OPERATOR, DEPLOYER, APPROVER, VIEWER = ("alice@example.com", "olive@example.com", "bob@example.com",
                                               "carol@example.com", "vic@example.com")
PROBE = "probe@pitstop-test.iam.gserviceaccount.com"
SPEC = f"""
service: web
regions: [{REGION}]
match: {{repo: web}}
triggers: [build-web]
strategy: {{canary: {{steps: [{{weight: 20, pause: 1s, approve: true}}]}}}}
health: {{min_requests: 20, interval: 1s, sources: ["serviceAccount:{PROBE}"]}}
access:
  operator: ["user:{OPERATOR}"]
  deployer: ["user:{DEPLOYER}"]
  approver: ["user:{DEPLOYER}", "user:{APPROVER}"]
  viewer: ["domain:example.com"]
  four_eyes: true
"""


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    # A new local Cloud Run is a new world: what another module left in Firestore names revisions it never had.
    wipe_firestore(emulators.firestore.host, emulators.project)
    with Stack(tmp_path_factory.mktemp("secure"), emulators=emulators, tick_interval=0.5, identity=ADMIN) as running:
        yield running
    for process in running.functions.values():
        print(f"--- {process.name}\n{Path(process.log_path).read_text()[-3000:]}")


@pytest.fixture(scope="module")
def store(stack) -> Store:
    return Store.from_env(stack.project)


def cli(stack: Stack, identity: str, *args: str):
    from typer.testing import CliRunner

    from pitstop.surfaces.cli import _config, app

    _config.cache_clear()
    return CliRunner().invoke(app, list(args), env={**stack.env, "GOOGLE_CLOUD_PROJECT": stack.project,
                                                    "PITSTOP_IDENTITY": identity})


def log_lines(stack: Stack, target: str) -> list[dict]:
    lines = []
    for line in Path(stack.functions[target].log_path).read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def logged(stack: Stack, target: str, text: str) -> bool:
    return any(text in line.get("message", "") for line in log_lines(stack, target))


def command(stack: Stack, token: str | None, **fields) -> str:
    """Publish a command with this token (or none); returns its id."""
    command_id = f"cmd-{uuid.uuid4().hex[:12]}"
    attributes = {"id_token": token} if token else {}
    stack.publish("pitstop-commands", {"id": command_id, **fields}, **attributes)
    return command_id


def snapshot(store: Store, rollout_id: str) -> tuple:
    """What an attack must not change (health samples the test's own probe sent may still add "judged" events)."""
    r = store.rollout(rollout_id)
    decided = [e for e in store.events(rollout_id) if e.input in ("build", "command", "alert")]
    return r.state, r.desired_generation, r.step, tuple((t.revision, t.percent) for t in r.desired), len(decided)


@pytest.fixture(scope="module")
def canary(stack, store, tmp_path_factory):
    """web v1 stable, then v2 deployed by bob (`pitstop deploy`, through the API and the local trigger), held
    at its 20 % approval gate after healthy probes."""
    spec = tmp_path_factory.mktemp("spec") / "web.yaml"
    spec.write_text(SPEC)
    denied = cli(stack, OPERATOR, "apply", str(spec))  # only an admin applies specs
    assert denied.exit_code != 0
    applied = cli(stack, ADMIN, "apply", str(spec))
    assert applied.exit_code == 0, applied.output
    assert f"as {ADMIN}" in applied.output
    first = cli(stack, DEPLOYER, "deploy", "web", "--env", "production", "--ref", "v1", "--wait", "60")
    assert first.exit_code == 0, first.output
    wait_for("web v1 stable", lambda: (store.service("web", REGION) or {}).get("stable_version") == "v1")
    second = cli(stack, DEPLOYER, "deploy", "web", "--env", "production", "--ref", "v2", "--wait", "60")
    assert second.exit_code == 0, second.output
    r = wait_for("v2 at its step", lambda: (x := store.active_rollout("web", REGION)) and x.step_started_at and x)
    assert (r.version, r.started_by) == ("v2", DEPLOYER), "the verified deployer started it"
    started = store.events(r.id)[0]
    assert started.actor == DEPLOYER
    while (r := store.rollout(r.id)).state != "awaiting_approval":
        assert r.state == "progressing", r.message
        probe(stack, r, 200, 0, PROBE)
        time.sleep(0.4)
    return r


def probe(stack: Stack, r, requests: int, errors: int, sender: str | None) -> dict:
    now = datetime.now(timezone.utc)
    start = r.judged_until or r.step_started_at
    sample = health_sample(r.service, r.revision, start, max(now, start + timedelta(milliseconds=10)), requests,
                           errors, 100, source="probe")
    stack.publish("pitstop-health", {**sample, **({"id_token": stack.token(sender)} if sender else {})})
    return sample


# ---------------------------------------------------------------- builds

def test_forged_builds_are_refused_and_nothing_is_deployed(stack, store, canary):
    before = snapshot(store, canary.id)
    forged = []
    # 1. A SUCCESS Cloud Build never ran, naming the attacker's image.
    ghost = cloud_build("SUCCESS", project=stack.project, repo="web", trigger="build-web",
                        image="docker.io/attacker/miner:latest", substitutions={"_VERSION": "v9"})
    forged.append((ghost, f"Cloud Build has no build {ghost['id']}"))
    # 2. A real build, announced with another image and digest than it built.
    name, digest = build_image(stack.state_dir, stack.project, "web", "v10")
    real = cloud_build("SUCCESS", project=stack.project, repo="web", trigger="build-web", image=name, digest=digest,
                       substitutions={"_VERSION": "v10"})
    record_build(stack.state_dir, real)
    swapped = json.loads(json.dumps(real))
    swapped["results"]["images"][0] = {"name": "docker.io/attacker/miner:latest", "digest": "sha256:" + "e" * 64}
    forged.append((swapped, "is not among the build's results.images"))
    # 3. A real build (someone with Cloud Build rights) of an image outside the spec's repositories.
    outside = cloud_build("SUCCESS", project=stack.project, repo="web", trigger="build-web",
                          image="docker.io/attacker/miner:latest", digest="sha256:" + "a" * 64,
                          substitutions={"_VERSION": "v11"})
    record_build(stack.state_dir, outside)
    forged.append((outside, "image docker.io/attacker/miner is not one web--production may run"))
    # 4. A real build of the right image by a trigger the spec does not allow.
    manual = cloud_build("SUCCESS", project=stack.project, repo="web", trigger="someones-manual-trigger",
                         image=name, digest=digest, substitutions={"_VERSION": "v12"})
    record_build(stack.state_dir, manual)
    forged.append((manual, "deploys only builds of trigger build-web"))
    # 5. A message claiming another project's build.
    elsewhere = cloud_build("SUCCESS", project="attacker-project", repo="web", trigger="build-web", image=name,
                            digest=digest, substitutions={"_VERSION": "v13"})
    forged.append((elsewhere, "pitstop deploys only builds of project"))
    for body, _ in forged:
        stack.publish("cloud-builds", body, buildId=body["id"], status="SUCCESS")
    for body, reason in forged:
        record = wait_for(f"build {body['id']} refused", lambda: (
            snap := store.db.collection("builds").document(body["id"]).get()).exists and snap.to_dict())
        assert record["outcome"] == "refused" and reason in record["message"], record["message"]
        assert "Nothing deployed" in record["message"]
    assert snapshot(store, canary.id) == before, "the canary is untouched"
    assert store.active_rollout("web", REGION).id == canary.id, "no rollout started"
    refusals = [line for line in log_lines(stack, "on_build") if "refused" in line.get("message", "")]
    assert len(refusals) >= len(forged) and all(line["severity"] == "ERROR" for line in refusals)


# ---------------------------------------------------------------- commands

def test_commands_without_a_valid_token_or_role_are_refused_and_recorded(stack, store, canary):
    before = snapshot(store, canary.id)
    audience = f"pitstop:{stack.project}"
    attempts = [
        (None, "no ID token", "anonymous (unverified)"),
        (stack.issuer.mint(ADMIN, "https://some-other-service.run.app"), "audience", f"{ADMIN} (unverified)"),
        (stack.issuer.mint(ADMIN, audience, now=time.time() - 7200, lifetime=3600), "expired",
         f"{ADMIN} (unverified)"),
        (stack.token(VIEWER), "lacks permission rollout:operate", VIEWER),
        (stack.token("mallory@evil.example"), "lacks permission rollout:operate", "mallory@evil.example"),
    ]
    ids = [command(stack, token, action="promote", rollout_id=canary.id, full=True) for token, _, _ in attempts]
    for command_id, (_, reason, actor) in zip(ids, attempts):
        record = wait_for(f"{command_id} refused", lambda: store.command(command_id))
        assert record["outcome"] == "refused" and reason in record["reason"], record
        assert record["actor"] == actor and record["verified"] == (not actor.endswith("(unverified)"))
        assert "nothing changed" in record["reason"]
    assert store.command(ids[3])["permission"] == "rollout:operate"
    # The payload's `actor` is no identity: such a message is refused as malformed, and acknowledged.
    stack.publish("pitstop-commands", {"action": "promote", "rollout_id": canary.id, "full": True,
                                       "actor": "cto@example.com"})
    wait_for("the forged actor refused", lambda: logged(stack, "on_command", "'actor' is not accepted"))
    assert snapshot(store, canary.id) == before, "nothing changed"
    assert all(e.actor != "cto@example.com" for e in store.events(canary.id))
    history = cli(stack, VIEWER, "history", "web", "--rollout", canary.id)
    assert history.exit_code == 0 and history.output.count("refused") >= len(attempts), history.output
    assert f"by {ADMIN} (unverified)" in history.output and "by mallory@evil.example" in history.output


def test_approval_needs_a_second_person_and_the_audit_names_the_verified_approver(stack, store, canary):
    own = command(stack, stack.token(DEPLOYER), action="approve", rollout_id=canary.id)
    record = wait_for("self-approval refused", lambda: store.command(own))
    assert record["code"] == "insufficient_permissions" and "four eyes" in record["reason"]
    assert store.rollout(canary.id).state == "awaiting_approval"
    by_operator = command(stack, stack.token(OPERATOR), action="approve", rollout_id=canary.id)
    assert "rollout:approve" in wait_for("operator may not approve", lambda: store.command(by_operator))["reason"]
    approved = cli(stack, APPROVER, "approve", canary.id, "-m", "looks good")
    assert approved.exit_code == 0, approved.output
    assert APPROVER in approved.output
    event = next(e for e in store.events(canary.id) if e.input == "command" and e.decision != "ignored")
    assert event.actor == APPROVER, "the audit's actor is the token's email"


# ---------------------------------------------------------------- health samples

def test_unsigned_or_unlisted_health_samples_change_nothing(stack, store, tmp_path):
    spec = tmp_path / "cart.yaml"
    spec.write_text(SPEC.replace("service: web", "service: cart").replace("repo: web", "repo: cart")
                    .replace("triggers: [build-web]\n", "").replace(", approve: true", ""))
    assert cli(stack, ADMIN, "apply", str(spec)).exit_code == 0
    ship(stack.state_dir, stack.project, "cart", "v1")
    wait_for("cart v1 stable", lambda: (store.service("cart", REGION) or {}).get("stable_version") == "v1")
    ship(stack.state_dir, stack.project, "cart", "v2")
    r = wait_for("cart v2 at its step", lambda: (x := store.active_rollout("cart", REGION)) and x.step_started_at
                 and x)
    before = snapshot(store, r.id)
    probe(stack, r, 200, 150, None)  # failing, unsigned: would roll back if believed
    probe(stack, r, 200, 150, "attacker@evil.example")  # failing, signed by someone the spec does not list
    # pitstop's own sampler token, read off the topic and replayed with another sample: bound to its own sample
    forged = health_sample(r.service, r.revision, r.step_started_at, datetime.now(timezone.utc), 200, 150, 100,
                           source="cloud-monitoring")
    for token in (stack.issuer.mint(stack.sampler_identity, f"pitstop:{stack.project}#{'0' * 32}"),
                  stack.token(stack.sampler_identity)):
        stack.publish("pitstop-health", {**forged, "id_token": token})
    wait_for("all refused", lambda: logged(stack, "on_health", "no ID token")
             and logged(stack, "on_health", "not listed in the spec's health.sources")
             and logged(stack, "on_health", f"is not this pitstop deployment")  # bound to another sample
             and logged(stack, "on_health", "minted for another message"))  # not bound at all
    assert snapshot(store, r.id) == before, "no verdict from either"
    assert store.rollout(r.id).verdict is None
    probe(stack, r, 200, 150, PROBE)  # the same sample from the listed probe is believed
    wait_for("rolled back on the listed probe's word", lambda: store.rollout(r.id).state in ("rolling_back",
                                                                                            "rolled_back"))


# ---------------------------------------------------------------- the audit trail

def test_audit_verify_reports_an_edited_event(stack, store, canary):
    intact = cli(stack, VIEWER, "audit", "verify", canary.id)
    assert intact.exit_code == 0 and "chain intact" in intact.output, intact.output
    events = store.db.collection("rollouts").document(canary.id).collection("events")
    first = next(iter(events.order_by("seq").limit(1).stream()))
    first.reference.update({"actor": "cto@example.com"})
    broken = cli(stack, VIEWER, "audit", "verify", canary.id)
    assert broken.exit_code == 4 and first.id in broken.output and "edited" in broken.output, broken.output
