"""What a person sees of pipelines and releases: `pitstop apply --dry-run` of a pipeline, the Releases table of
`pitstop status`, a release's merged timeline and its JSON rows. Releases come from the pure release world."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from pitstop.core.models import AuditEvent
from pitstop.surfaces import cli, render
from pitstop.surfaces.releases import looks_like_release, pipeline_lines, release_detail, release_row, timeline

from release_world import PIPELINE, World


def text_of(renderable) -> str:
    console = Console(width=220, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.fixture
def world() -> World:
    """v2 through staging, sent on to production by its tag, approved: wave 1 (us-central1) at 5 %."""
    w = World()
    w.build("v2", branch="main")
    w.wait(120)
    w.build("v2", branch=None, tag="v2")
    w.command("approve", actor="ana@example.com")
    w.wait(20)
    assert (w.release.state, w.release.current, w.percent("production", "us-central1")) == ("running", "production", 5)
    return w


def test_a_release_id_is_the_service_and_16_hex_digits() -> None:
    assert looks_like_release("web-0123456789abcdef") and looks_like_release("my-api-0123456789abcdef")
    for other in ("web", "web-production-us-central1-1a2b3c4d", "web-0123456789ABCDEF", "web-0123456789abcde",
                  "-0123456789abcdef", "web-staging-europe-west1-revertabcdef123456"):
        assert not looks_like_release(other), other


def test_a_pipeline_in_a_few_lines() -> None:
    from pitstop.core.pipeline import load_pipeline

    assert pipeline_lines(load_pipeline(PIPELINE)) == [
        "pipeline web: 2 environments",
        "  staging (acme-staging): us-central1; on branch main; canary 50% → 100%",
        "  production (acme-prod): us-central1 → europe-west1, asia-northeast1 (2 waves); on tag v*; after staging; "
        "an approver starts it; canary 5% → 25% → 100%",
        "  path hotfix: branch hotfix/* → production directly; an approver starts it; canary 25% → 100%",
        "  freeze: 0 16 * * FRI (Europe/Berlin) for 64h, except hotfix",
    ]
    soaked = load_pipeline(PIPELINE.replace("    promote_from: staging\n", "    promote_from: staging\n    soak: 2h\n"))
    assert "after staging, by itself 2h later" in pipeline_lines(soaked)[2]


def test_apply_dry_run_of_a_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    result = CliRunner().invoke(cli.app, ["apply", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("valid: pipeline web: 2 environments\n")
    for fragment in ("us-central1 → europe-west1, asia-northeast1 (2 waves)", "on tag v*", "path hotfix:",
                     "freeze: 0 16 * * FRI (Europe/Berlin) for 64h, except hotfix"):
        assert fragment in result.output, (fragment, result.output)

    path.write_text(PIPELINE.replace("promote_from: staging", "promote_from: qa"))
    result = CliRunner().invoke(cli.app, ["apply", str(path), "--dry-run"])
    assert result.exit_code == 1 and "invalid pipeline" in result.output and "'qa'" in result.output

    spec = tmp_path / "spec.yaml"  # a spec still reads as a spec
    spec.write_text("service: web\nregions: [us-central1]\nmatch: {repo: web}\n")
    result = CliRunner().invoke(cli.app, ["apply", str(spec), "--dry-run"])
    assert result.exit_code == 0 and result.output.startswith("valid: web (production) in us-central1"), result.output


def test_status_shows_releases_above_rollouts(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    class Store:
        def recent(self, service, limit):
            return list(world.rollouts.values())

        def releases(self, service, limit):
            return [world.release]

    monkeypatch.setattr(cli, "_store", Store)
    out = CliRunner().invoke(cli.app, ["status"]).output
    assert out.index("Releases") < out.index("Rollouts")
    row = next(line for line in out.splitlines() if world.release.id in line)
    assert "v2" in row and "staging succeeded → production running" in row and "us-central1: progressing 5%" in row
    assert "europe-west1: pending 0%" in out and "asia-northeast1: pending 0%" in out
    assert "web-production-us-central1-v2" in out  # the rollout table is still there


def test_the_releases_table_marks_a_hotfix_and_what_it_waits_for() -> None:
    w = World()
    w.build("v3", branch="hotfix/login", digest="b")
    assert w.release.hotfix and w.release.stage.state == "awaiting_approval"
    out = text_of(render.releases_table([w.release]))
    assert "v3 hotfix" in out and "production awaiting_approval" in out and "approval to start" in out
    assert "us-central1: awaiting_approval" in out  # no region started yet: the stage's state stands for them
    assert release_row(w.release)["waiting_for"] == "approval to start"


def test_release_rows_for_the_api(world: World) -> None:
    row = release_row(world.release)
    assert row["route"] == [{"environment": "staging", "state": "succeeded"},
                            {"environment": "production", "state": "running"}]
    assert row["regions"]["us-central1"] == {"state": "progressing", "percent": 5, "position": 0,
                                             "rollout_id": "web-production-us-central1-v2"}
    detail = release_detail(world.release)
    staging, production = detail["stages"]
    assert staging["state"] == "succeeded" and staging["approve"] is False
    assert (production["wave"], production["step"], production["step_label"], production["approved_by"]) == (
        1, 0, "step 1 (5%)", "ana@example.com")
    assert production["waves"] == [["us-central1"], ["europe-west1", "asia-northeast1"]]
    assert production["strategy"] == "canary 5% → 25% → 100%"


def test_the_timeline_merges_the_release_and_its_regions_by_time(world: World) -> None:
    r = world.rollouts[("production", "us-central1")]
    t0 = world.audit[0].at

    def event(i: str, seconds: float, decision: str) -> AuditEvent:
        return AuditEvent(id=i, at=t0 + timedelta(seconds=seconds), input="tick", actor="scheduler",
                          decision=decision, reasons=[decision], state_after="progressing")

    rows = timeline([event("r1", 0, "started"), event("r2", 2, "wave_step")],
                    [(r, [event("x1", 1, "advanced"), event("x2", 2.5, "held")])])
    assert [(row["where"], row["decision"]) for row in rows] == [
        ("release", "started"), ("production/us-central1", "advanced"), ("release", "wave_step"),
        ("production/us-central1", "held")]
    assert rows[1]["rollout_id"] == r.id and rows[1]["region"] == "us-central1" and rows[0]["region"] is None
    out = text_of(render.timeline_table(rows))
    assert "production/us-central1" in out and "wave_step" in out
