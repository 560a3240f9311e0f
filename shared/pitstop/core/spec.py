"""Rollout specs: the YAML a team keeps next to its service, and which builds it claims."""

from __future__ import annotations

import functools
import re

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pitstop.core import limits
from pitstop.core.models import BuildFinished, Health, RolloutSpec

MAX_ERRORS = 20  # problems listed in a SpecError; a list of 100,000 wrong items is still one sentence per field


class SpecError(ValueError):
    """A spec pitstop refuses, with each field and its problem."""


def load_yaml(text: str, source: str = "spec") -> Any:
    """The one YAML document in `text` (a spec, the access document), refused with a SpecError when it is not
    valid YAML, uses aliases, or nests deeper than limits.MAX_DEPTH. The API reads request bodies with it.

    Aliases are refused outright rather than allowed up to a count of nodes: a few hundred bytes of them
    (`b: [*a, *a, ...]` nine deep) stand for megabytes, which every validation and error message that walks
    the value pays for again. A spec or access document is a short file a person writes, so writing the
    values out costs nothing, and the refusal says exactly what to change; counting nodes would instead accept
    a document that then breaks a bound in a less obvious place. Nesting is bounded for the same reason:
    PyYAML is quadratic in flow nesting (400 KB of `[` took 10 minutes in pure Python) and its C loader
    recurses until it crashes the process. Both are checked on the parser's events, before anything is built,
    and the check stops at the first offending event, so a hostile document costs next to nothing."""
    import yaml  # late: the cloud-event functions never read YAML

    loader = _loader()
    try:
        depth = 0
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent):
                raise SpecError(f"{source}: uses a YAML alias (*{limits.truncate(str(event.anchor), 40)}); "
                                f"aliases are not accepted, write the values out")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > limits.MAX_DEPTH:
                    raise SpecError(f"{source}: nests deeper than {limits.MAX_DEPTH} levels; a spec needs about 5")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as err:
        raise SpecError(f"{source}: not valid YAML: {limits.truncate(str(err), 500)}") from None
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader, C or Python
    except yaml.YAMLError as err:  # e.g. more than one document, an unhashable key
        raise SpecError(f"{source}: not valid YAML: {limits.truncate(str(err), 500)}") from None
    except (ValueError, OverflowError) as err:  # a timestamp such as 2024-13-45 fails in datetime, not in YAML
        raise SpecError(f"{source}: not valid YAML: {limits.truncate(f'{type(err).__name__}: {err}', 200)}") from None


@functools.cache
def _loader() -> type:
    """PyYAML's safe loader (C if built), with YAML 1.2's booleans: only true and false. YAML 1.1 also reads
    on/off/yes/no as booleans, which would turn a pipeline's `on: {branch: main}` into the key True."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc, valid-type]
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
                                      for first, resolvers in base.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Loader


def validation_lines(err: ValidationError) -> list[str]:
    """Each invalid field and its problem, bounded (at most MAX_ERRORS, each value shown by limits.preview)."""
    errors = err.errors()
    lines = [f"  {limits.truncate('.'.join(str(p) for p in e['loc']) or '(top)', 120)}: "
             f"{limits.truncate(_message(e), 300)}" for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS} more")
    return lines


def load_spec(text: str, source: str = "spec") -> RolloutSpec:
    """A spec from its YAML text (see load_yaml for what is refused before validation)."""
    return parse_spec(load_yaml(text, source), source)


def parse_spec(doc: dict[str, Any], source: str = "spec") -> RolloutSpec:
    """A spec from its document already parsed (by load_yaml, or a JSON body), validated as load_spec does.

    Anything but a mapping is refused with a SpecError, like every invalid field (at most MAX_ERRORS of them,
    each value shown by limits.preview: an error message stays a few KB whatever the document holds)."""
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: expected a mapping with service, regions, match, strategy, health")
    try:
        spec = RolloutSpec.model_validate(doc, strict=False)
    except ValidationError as err:
        raise SpecError(f"{source}: invalid rollout spec\n" + "\n".join(validation_lines(err))) from None
    except RecursionError:  # a JSON body nested deep enough for pydantic to give up
        raise SpecError(f"{source}: nests too deeply to be a rollout spec") from None
    problems = health_lines(spec.health, "health")
    if problems:
        raise SpecError(f"{source}: invalid rollout spec\n" + "\n".join(problems))
    return spec


def health_lines(health: Health, at: str) -> list[str]:
    """The custom metrics' problems (core/cel.py `health_problems`) as validation_lines shows fields, under `at`.
    Checked when a spec or pipeline is applied, not in the model: reading a stored rollout never loads CEL."""
    if not health.metrics and not health.thresholds:
        return []
    from pitstop.core import cel  # late: only specs with custom metrics pay for cel-python

    problems = cel.health_problems(health)
    lines = [f"  {at}.{path}: {limits.truncate(problem, 600)}" for path, problem in problems[:MAX_ERRORS]]
    if len(problems) > MAX_ERRORS:
        lines.append(f"  ... and {len(problems) - MAX_ERRORS} more")
    return lines


def load_spec_file(path: Path) -> RolloutSpec:
    return load_spec(path.read_text(), str(path))


def _message(error: dict) -> str:
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown field (value {limits.preview(error['input'], 80)}); check the spelling"
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
    if match is None or spec.pipeline:  # a pipeline's environment: releases start its rollouts
        return False
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
