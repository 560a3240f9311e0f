"""DORA metrics and `status ID` exit codes on the real Firestore emulator: the store's history read,
`dora_report`, the API route (the real `api` function, tokens signed by the local issuer), and the CLI."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app
from typer.testing import CliRunner

from pitstop.core import machine
from pitstop.core.models import Applied, Artifact, Command, Health, Rollout, Strategy, Target
from pitstop.core.release import RegionProgress, Release, Stage
from pitstop.core.spec import load_spec
from pitstop.gcp.store import Store
from pitstop.local.emulators import wipe_firestore
from pitstop.local.issuer import IssuerServer, start_issuer
from pitstop.surfaces import cli
from pitstop.surfaces.client import ApiError as ClientError, Caller
from pitstop.surfaces.metrics import dora_report
from rollouts import start

pytestmark = pytest.mark.emulators

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(timezone.utc).replace(microsecond=0)
ADMIN, VIEWER, STRANGER = "admin@example.com", "vera@example.com", "eve@example.com"


def rollout(rid: str, state: str, days_ago: float, version: str, environment: str = "production",
            region: str = "us-central1", service: str = "web", lead_min: float = 30, restore_min: float = 0,
            release_id: str | None = None) -> Rollout:
    """A finished rollout `days_ago`; built `lead_min` before it ended; rolled back ones restored in `restore_min`."""
    end = NOW - timedelta(days=days_ago)
    decided = end - timedelta(minutes=restore_min)
    artifact = Artifact(image=f"us-docker.pkg.dev/p/r/{service}:{version}", digest="sha256:" + "b" * 64,
                        build_id="b-" + version, version=version, created_at=end - timedelta(minutes=lead_min))
    return Rollout(id=rid, service=service, environment=environment, region=region, project="p", kind="canary",
                   version=version, revision=f"{service}-{version}", image="img", artifact=artifact,
                   strategy=Strategy.model_validate({"canary": {}}), health=Health(), max_hold=3600, state=state,
                   desired=[Target(revision=f"{service}-{version}", percent=100)], desired_at=decided,
                   created_at=end - timedelta(minutes=20), updated_at=end, finished_at=end, release_id=release_id)


def history() -> tuple[list[Rollout], list[Release]]:
    """web/production: 4 changes in the last week (1 rolled back after 12 min), one 40 days ago, one 100 days ago
    (outside every window); web/staging: a release stage; api/production: one change."""
    rollouts = [
        rollout("w1", "succeeded", 1, "v6", lead_min=60), rollout("w1b", "succeeded", 1.01, "v6", region="eu"),
        rollout("w2", "rolled_back", 2, "v5", restore_min=12),
        rollout("w3", "succeeded", 3, "v4", lead_min=120), rollout("w4", "succeeded", 5, "v3", lead_min=30),
        rollout("w5", "succeeded", 40, "v2"), rollout("w6", "succeeded", 100, "v1"),
        rollout("s1", "succeeded", 2, "v6", environment="staging", release_id="web-rel"),
        rollout("a1", "succeeded", 3, "v9", service="api"),
    ]
    end = NOW - timedelta(days=2)
    rel = Release(id="web-rel", service="web", digest="sha256:" + "c" * 64, image="img", version="v6",
                  build_id="b-v6", route=["staging"], created_at=end - timedelta(hours=1), updated_at=end,
                  state="succeeded", stages={"staging": Stage(
                      environment="staging", state="succeeded", waves=[["us-central1"]],
                      strategy=Strategy.model_validate({"canary": {}}), health=Health(), entered_at=end,
                      finished_at=end, regions={"us-central1": RegionProgress(rollout_id="s1", state="succeeded")})})
    return rollouts, [rel]


@pytest.fixture(scope="module")
def store(emulators) -> Store:
    """Firestore holding `history()`, written as the store writes documents (every field of the model)."""
    wipe_firestore(emulators.firestore.host, emulators.project)
    store = Store.from_env(emulators.project)
    rollouts, releases = history()
    for r in rollouts:
        store.db.collection("rollouts").document(r.id).set(r.model_dump(mode="python"))
    for rel in releases:
        store.db.collection("releases").document(rel.id).set(rel.model_dump(mode="python"))
    return store


def window(report: dict[str, Any], service: str, environment: str, days: int) -> dict[str, Any]:
    group = next(g for g in report["services"] if (g["service"], g["environment"]) == (service, environment))
    return group["windows"][f"{days}d"]


# ---------------------------------------------------------------- reading and computing

def test_the_store_reads_the_history_since_a_time_bounded(store: Store) -> None:
    rollouts, releases, truncated = store.history_since(NOW - timedelta(days=92))
    assert {r.id for r in rollouts} == {"w1", "w1b", "w2", "w3", "w4", "w5", "s1", "a1"} and not truncated
    assert [rel.id for rel in releases] == ["web-rel"]
    assert [r.created_at for r in rollouts] == sorted((r.created_at for r in rollouts), reverse=True)
    only_api, _, _ = store.history_since(NOW - timedelta(days=92), "api")
    assert [r.id for r in only_api] == ["a1"]
    newest, _, truncated = store.history_since(NOW - timedelta(days=92), cap=3)
    assert [r.id for r in newest] == ["w1", "w1b", "w2"] and truncated


def test_dora_report_from_the_stored_history(store: Store) -> None:
    report = dora_report(store, now=NOW)
    assert [(g["service"], g["environment"]) for g in report["services"]] == [
        ("api", "production"), ("web", "production"), ("web", "staging")]
    week = window(report, "web", "production", 7)
    # v6 (two regions, once), v5 rolled back, v4, v3
    assert week["deployment_frequency"]["samples"] == 3 and week["deployment_frequency"]["band"] == "high"
    assert week["change_failure_rate"] | {} == {**week["change_failure_rate"], "value": 0.25, "failed": 1,
                                                "samples": 4, "band": "low"}
    assert (week["lead_time"]["p50"], week["lead_time"]["from"]) == (3600.0, "build created")  # 30, 60, 120 min
    assert (week["time_to_restore"]["value"], week["time_to_restore"]["band"]) == (720.0, "elite")
    assert window(report, "web", "production", 90)["deployment_frequency"]["samples"] == 4  # + v2; never v1
    assert window(report, "web", "staging", 7)["deployment_frequency"]["samples"] == 1  # the release's stage
    assert window(report, "web", "staging", 7)["time_to_restore"]["band"] == "n/a"

    only = dora_report(store, "web", "staging", now=NOW)
    assert [(g["service"], g["environment"]) for g in only["services"]] == [("web", "staging")]


# ---------------------------------------------------------------- the API

@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerServer]:
    with start_issuer(tmp_path_factory.mktemp("dora-issuer")) as server:
        yield server


@pytest.fixture(scope="module")
def api(store: Store, issuer: IssuerServer, emulators) -> Iterator[Any]:
    """The `api` function's test client on this module's Firestore; VIEWER may read web/production only."""
    audience = f"pitstop:{emulators.project}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"GOOGLE_CLOUD_PROJECT": emulators.project, "PITSTOP_AUDIENCE": audience,
                            "PITSTOP_ADMINS": f"user:{ADMIN}", "PITSTOP_TOKEN_CERTS": issuer.certs_url,
                            "PITSTOP_TOKEN_ISSUERS": issuer.url}.items():
            mp.setenv(name, value)
        flask_app = create_app(target="api", source=str(ROOT / "functions" / "main.py"), signature_type="http")
        mp.setattr(sys.modules["main"], "_engine", None)
        store.put_spec(load_spec(f"service: web\nenvironment: production\nregions: [us-central1]\nmatch: {{repo: web}}"
                                 f"\naccess: {{viewer: [user:{VIEWER}]}}\n"), "test", NOW)

        def call(path: str, who: str) -> Any:
            return flask_app.test_client().get(path, headers={"X-Pitstop-Token": issuer.mint(who, audience)})
        yield call


def test_the_api_shows_each_caller_only_what_they_may_read(api: Any) -> None:
    everything = api("/api/v1/metrics/dora", ADMIN).get_json()
    assert len(everything["services"]) == 3 and everything["lead_time_from"] == "build created"
    mine = api("/api/v1/metrics/dora", VIEWER)
    assert mine.status_code == 200
    assert [(g["service"], g["environment"]) for g in mine.get_json()["services"]] == [("web", "production")]
    assert api("/api/v1/metrics/dora?service=web&environment=staging", VIEWER).get_json()["services"] == []
    assert api("/api/v1/metrics/dora", STRANGER).get_json()["services"] == []
    one = api("/api/v1/metrics/dora?service=web&environment=production&hotfix_days=3", ADMIN).get_json()
    assert len(one["services"]) == 1 and one["hotfix_days"] == 3


@pytest.mark.parametrize("query, words", [("service=Web%2F..", "not a service name"),
                                          ("environment=PROD!", "not an environment name"),
                                          ("hotfix_days=0", "from 1 to 90"), ("hotfix_days=x", "from 1 to 90")])
def test_the_api_refuses_bad_parameters_with_a_sentence(api: Any, query: str, words: str) -> None:
    response = api(f"/api/v1/metrics/dora?{query}", ADMIN)
    assert response.status_code == 400 and words in response.get_json()["error"]["message"]


# ---------------------------------------------------------------- the CLI

def test_pitstop_metrics_from_the_store_and_through_the_api(store: Store, api: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_store", lambda: store)
    monkeypatch.setattr(cli, "_caller", lambda: Caller("pitstop:test"))  # no PITSTOP_API: the store directly
    run = CliRunner()
    result = run.invoke(cli.app, ["metrics", "web", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert window(report, "web", "production", 7)["change_failure_rate"]["value"] == 0.25
    table = run.invoke(cli.app, ["metrics", "web", "--env", "production"])
    assert table.exit_code == 0, table.output
    for fragment in ("web (production)", "deployment frequency", "25.0% (1 of 4)", "elite", "build created"):
        assert fragment in table.output, (fragment, table.output)
    assert "no changes recorded" in run.invoke(cli.app, ["metrics", "nothing"]).output

    def through_api(self: Caller, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = api(path, VIEWER)
        if response.status_code >= 400:
            raise ClientError(response.get_json()["error"]["code"], "refused", response.status_code)
        return response.get_json()

    monkeypatch.setattr(cli, "_caller", lambda: Caller("pitstop:test", "http://api.test"))
    monkeypatch.setattr(Caller, "call", through_api)
    seen = json.loads(run.invoke(cli.app, ["metrics", "--json"]).output)
    assert [(g["service"], g["environment"]) for g in seen["services"]] == [("web", "production")]


# ---------------------------------------------------------------- status ID: the exit code says how it ended

def drive(store: Store, rollout_id: str, *inputs: Any) -> None:
    for inp in inputs:
        store.apply(rollout_id, inp.id, lambda r, inp=inp: machine.decide(r, inp, datetime.now(timezone.utc)))


def applied(store: Store, rollout_id: str) -> Applied:
    r = store.rollout(rollout_id)
    return Applied(id=f"applied-{r.desired_generation}", generation=r.desired_generation, observed=r.desired)


def test_status_exit_codes_for_finished_and_unfinished_rollouts(store: Store,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Last in this file: it adds rollouts and releases to the history the tests above measure."""
    monkeypatch.setattr(cli, "_store", lambda: store)
    run = CliRunner()
    first = start(store, "stat0001", "v1").decision.rollout.id  # the first version: done once applied
    drive(store, first, applied(store, first))
    assert store.rollout(first).state == "succeeded"
    second = start(store, "stat0002", "v2").decision.rollout.id  # a canary over v1
    drive(store, second, applied(store, second))

    result = run.invoke(cli.app, ["status", second])  # in progress: not finished
    assert result.exit_code == 2 and "not finished" in result.output, result.output
    result = run.invoke(cli.app, ["status", second, "--wait", "--timeout", "1"])
    assert result.exit_code == 2 and "still so after 1s" in result.output, result.output

    def abort_soon() -> None:
        time.sleep(1.5)
        drive(store, second, Command(id="abort-1", action="abort", rollout_id=second, actor=ADMIN))
        drive(store, second, applied(store, second))

    worker = threading.Thread(target=abort_soon)
    worker.start()
    result = run.invoke(cli.app, ["status", second, "--wait", "--timeout", "60"])
    worker.join()
    assert result.exit_code == 1, result.output
    assert "rolled back" in result.output and store.rollout(second).message in result.output.replace("\n", " ")
    assert run.invoke(cli.app, ["status", first]).exit_code == 0  # finished: no --wait needed
    row = json.loads(run.invoke(cli.app, ["status", second, "--json"]).output)
    assert (row["state"], row["finished"], row["exit_code"]) == ("rolled_back", True, 1)

    third = start(store, "stat0003", "v3").decision.rollout.id
    start(store, "stat0004", "v4")  # supersedes v3
    assert store.rollout(third).state == "superseded"
    assert run.invoke(cli.app, ["status", third]).exit_code == 3
    assert run.invoke(cli.app, ["status", "web-rel", "--wait"]).exit_code == 1  # not a release id: says so

    result = run.invoke(cli.app, ["status", "web-00000000000000ff", "--wait", "--timeout", "1"])
    assert result.exit_code == 2 and "did not start within 1s" in result.output, result.output  # CI came too early
    rel = history()[1][0]
    for state, code in (("succeeded", 0), ("rolled_back", 1), ("cancelled", 3), ("waiting", 2)):
        doc = rel.model_copy(update={"id": "web-00000000000000aa", "state": state, "message": f"it {state}"})
        store.db.collection("releases").document(doc.id).set(doc.model_dump(mode="python"))
        result = run.invoke(cli.app, ["status", doc.id])
        assert result.exit_code == code and f"it {state}" in result.output, (state, result.output)
    assert run.invoke(cli.app, ["status", "web"]).exit_code == 0  # a service: the tables, as ever
