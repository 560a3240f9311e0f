"""Rollout specs: the YAML a team keeps next to its service, and which builds it claims."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import ValidationError

from pitstop.core.models import BuildFinished, RolloutSpec


class SpecError(ValueError):
    """A spec pitstop refuses, with each field and its problem."""


def load_spec(text: str, source: str = "spec") -> RolloutSpec:
    import yaml  # late: only the CLI reads YAML

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{source}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: expected a mapping with service, regions, match, strategy, health")
    try:
        return RolloutSpec.model_validate(doc, strict=False)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top)'}: {_message(e)}" for e in err.errors()]
        raise SpecError(f"{source}: invalid rollout spec\n" + "\n".join(lines)) from None


def load_spec_file(path: Path) -> RolloutSpec:
    return load_spec(path.read_text(), str(path))


def _message(error: dict) -> str:
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown field (value {error['input']!r}); check the spelling"
    if error["type"] == "missing":
        return "required field is missing"
    return msg


def matches(spec: RolloutSpec, build: BuildFinished) -> bool:
    """Does this build start a rollout of this spec? `_SERVICE`/`_ENVIRONMENT` substitutions narrow it."""
    subs = build.substitutions
    if subs.get("_SERVICE") and subs["_SERVICE"] != spec.service:
        return False
    if subs.get("_ENVIRONMENT") and subs["_ENVIRONMENT"] != spec.environment:
        return False
    match = spec.match
    if match.repo and match.repo != build.repo:
        return False
    if match.branch and not (build.branch and fnmatchcase(build.branch, match.branch)):
        return False
    if match.tag and not (build.tag and fnmatchcase(build.tag, match.tag)):
        return False
    if match.trigger and match.trigger not in (build.trigger, build.trigger_id):
        return False
    return True


def describe_source(build: BuildFinished) -> str:
    ref = f"tag {build.tag}" if build.tag else f"branch {build.branch}" if build.branch else "no branch or tag"
    return f"repo {build.repo or '(none)'}, {ref}, trigger {build.trigger or '(none)'}"
