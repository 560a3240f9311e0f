"""Routing policy: which rollout an input concerns, and which builds may start one. Pure.

The engine reads the few documents an input can concern (the services records of one
service, or of one service and region) and asks this module what to do with them:

- a command names one rollout, or a service narrowed by environment and region until only
  one live rollout is left; several candidates is a refusal that lists them;
- a build older than what a service already runs (its stable artifact, or the rollout in
  progress) never starts a rollout: Pub/Sub does not keep order and builds finish out of order;
- two environments must never resolve to the same Cloud Run service (project, region, name).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pitstop.core.models import Artifact, Command, Rollout, RolloutSpec


@dataclass(frozen=True)
class Refusal:
    """Why nothing was routed, in a sentence a person can act on."""

    reason: str
    candidates: tuple[str, ...] = ()


# ---------------------------------------------------------------- commands

def command_targets(command: Command, records: list[dict[str, Any]]) -> list[str] | Refusal:
    """The rollout a command by service name concerns, among the service's records."""
    named = f"{command.service}" + "".join(f" {k}={v}" for k, v in
                                          (("environment", command.environment), ("region", command.region)) if v)
    live = [r for r in records if r.get("service") == command.service and r.get("active_rollout")
            and command.environment in (None, r.get("environment")) and command.region in (None, r.get("region"))]
    if not live:
        return Refusal(f"{named} has no rollout in progress; nothing changed")
    if len(live) > 1:
        found = tuple(sorted(f"{r['active_rollout']} ({r.get('environment')}, {r.get('region')})" for r in live))
        return Refusal(f"{named} names {len(live)} rollouts in progress; name one with --environment and --region, "
                       f"or by rollout id; nothing changed", found)
    return [live[0]["active_rollout"]]


# ---------------------------------------------------------------- health samples and alerts

def health_targets(revision: str, project: str | None, rollouts: list[Rollout]) -> list[str]:
    """Live rollouts a sample or incident of `revision` concerns (environments in other projects share names)."""
    mine = [r for r in rollouts if revision in (r.revision, r.stable_revision) and project in (None, r.project)]
    return [r.id for r in mine]


# ---------------------------------------------------------------- builds

def older_build(artifact: Artifact, record: dict[str, Any] | None, active: Rollout | None) -> str | None:
    """Why this build must not start a rollout because newer code already runs or rolls out; None if it may."""
    mine = artifact.created_at
    if mine is None:
        return None
    stable_at: datetime | None = (record or {}).get("stable_created_at")
    if stable_at is not None and stable_at > mine:
        return (f"build {artifact.build_id} of version {artifact.version} (created {mine:%Y-%m-%d %H:%M:%S} UTC) is "
                f"older than the stable version {(record or {}).get('stable_version')} (built "
                f"{stable_at:%Y-%m-%d %H:%M:%S} UTC); an older build never replaces newer code. Nothing deployed")
    theirs = active.artifact.created_at if active and active.artifact else None
    if theirs is not None and theirs > mine:
        return (f"build {artifact.build_id} of version {artifact.version} (created {mine:%Y-%m-%d %H:%M:%S} UTC) is "
                f"older than the rollout in progress {active.id} of version {active.version}; nothing deployed")
    return None


def spec_collisions(spec: RolloutSpec, others: list[RolloutSpec], default_project: str) -> list[str]:
    """Other specs whose environments resolve to a Cloud Run service this spec also names."""
    mine = {(spec.project or default_project, region, spec.service) for region in spec.regions}
    clashes = []
    for other in others:
        if other.key == spec.key:
            continue
        theirs = {(other.project or default_project, region, other.service) for region in other.regions}
        for project, region, service in sorted(mine & theirs):
            clashes.append(f"spec {other.key} ({other.environment}) already rolls out {service} in {project}/{region}")
    return clashes


def match_keys(spec: RolloutSpec) -> list[str]:
    """Index keys under which a build can find this spec (`builds_keys` of a build must share one)."""
    m = spec.match
    if m is None or spec.pipeline:
        return ["pipeline"]  # no build key finds it: its pipeline does (`pipeline_keys`)
    if m.repo:
        return [f"repo:{m.repo}"]
    if m.trigger:
        return [f"trigger:{m.trigger}"]
    return ["any"]  # branch or tag only: every build must look at it


def build_keys(repo: str | None, trigger: str | None, trigger_id: str | None) -> list[str]:
    keys = ["any"]
    keys += [f"repo:{repo}"] if repo else []
    keys += [f"trigger:{t}" for t in (trigger, trigger_id) if t]
    return keys


# ---------------------------------------------------------------- deploys

def ref_source(ref: str, spec: RolloutSpec) -> dict[str, str]:
    """What `pitstop deploy --ref REF` asks the build trigger for: a commit (7-40 hex digits), a tag
    (`tags/X`, `refs/tags/X`, or a name the spec's `match.tag` glob matches), else a branch."""
    import re
    from fnmatch import fnmatchcase

    for prefix, kind in (("refs/tags/", "tag"), ("tags/", "tag"), ("refs/heads/", "branch"), ("heads/", "branch")):
        if ref.startswith(prefix):
            return {kind: ref[len(prefix):]}
    if re.fullmatch(r"[0-9a-f]{7,40}", ref):
        return {"commit": ref}
    if spec.match and spec.match.tag and fnmatchcase(ref, spec.match.tag):
        return {"tag": ref}
    return {"branch": ref}


def ref_refusal(source: dict[str, str], spec: RolloutSpec) -> str | None:
    """Why building this ref could not roll out under the spec's `match` (it would build, then start nothing)."""
    from fnmatch import fnmatchcase

    match = spec.match
    if match is None:
        return None
    if match.branch and not (source.get("branch") and fnmatchcase(source["branch"], match.branch)):
        return f"{spec.key} rolls out builds of branch {match.branch}, and {_described(source)} is not one"
    if match.tag and not (source.get("tag") and fnmatchcase(source["tag"], match.tag)):
        return f"{spec.key} rolls out builds of tags {match.tag}, and {_described(source)} is not one"
    return None


def _described(source: dict[str, str]) -> str:
    kind, value = next(iter(source.items()))
    return f"{kind} {value}"
