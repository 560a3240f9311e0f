"""A service's release pipeline in one file (issue #9, first part): environments, the branch rules that
choose where a build goes, waves of regions, hotfix paths and freeze windows. Pure.

    service: web
    image: us-docker.pkg.dev/acme/apps/web
    environments:
      staging:    {project: acme-staging, regions: [us-central1], on: {branch: main}}
      production: {project: acme-prod, regions: [us-central1, europe-west1, asia-northeast1],
                   waves: [[us-central1], [europe-west1, asia-northeast1]], on: {tag: "v*"},
                   promote_from: staging, approve: true}
    paths:
      hotfix: {on: {branch: "hotfix/*"}, to: production, approve: true}
    freeze: [{cron: "0 16 * * FRI", duration: 64h, tz: Europe/Berlin, except: [hotfix]}]

This module only reads the file and answers questions about it: which environment (and path) a build
goes to, and whether a moment lies inside a freeze window. The release machine that moves a build
through the environments is the next part of the issue.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, field_validator, model_validator

from pitstop.core.checks import Checks
from pitstop.core.models import Access, Duration, Health, Match, Model, RolloutSpec, SERVICE_NAME, Strategy
from pitstop.core.sinks import Sink, unique_names

ENVIRONMENT_NAME = r"^[a-z0-9][-a-z0-9]*$"


def _unwrap(value: Any) -> Any:
    """Waves as written ([[a], [b, c]]) or as stored ([{regions: [a]}, ...])."""
    if isinstance(value, list):
        return [w["regions"] if isinstance(w, dict) and set(w) == {"regions"} else w for w in value]
    return value


# Firestore holds no array directly inside an array: each wave is stored as a map {regions: [...]}.
Waves = Annotated[list[list[str]], BeforeValidator(_unwrap),
                  PlainSerializer(lambda waves: [{"regions": list(w)} for w in waves])]


class On(Model):
    """Which builds a rule takes: a branch glob or a tag glob."""

    branch: str | None = None
    tag: str | None = None

    @model_validator(mode="after")
    def _one(self) -> On:
        if (self.branch is None) == (self.tag is None):
            raise ValueError("give exactly one of branch or tag")
        return self

    def takes(self, branch: str | None, tag: str | None) -> bool:
        if self.tag is not None:
            return tag is not None and fnmatchcase(tag, self.tag)
        return tag is None and branch is not None and fnmatchcase(branch, self.branch)

    def __str__(self) -> str:
        return f"tag {self.tag}" if self.tag is not None else f"branch {self.branch}"


class Environment(Model):
    project: str | None = None
    regions: list[str] = Field(min_length=1)
    waves: Waves | None = None  # default: one wave of every region
    on: On | None = None  # no rule: reached only by promotion (promote_from) or a path
    promote_from: str | None = None  # the same digest must have succeeded there first
    approve: bool = False  # a person with the approver role starts it
    # Follow promote_from by itself, this long after a release succeeded there (no `pitstop promote-release`).
    soak: Duration | None = None
    strategy: Strategy = Field(default_factory=lambda: Strategy.model_validate({"canary": {}}))
    health: Health = Field(default_factory=Health)
    access: Access = Field(default_factory=Access)
    checks: Checks = Field(default_factory=Checks)  # scan, migrate, smoke, verify, e2e (core/checks.py)
    notify: list[Sink] = Field(default_factory=list, max_length=50)  # this environment's own sinks

    @model_validator(mode="after")
    def _waves_cover_regions(self) -> Environment:
        if self.waves is None:
            return self
        listed = [region for wave in self.waves for region in wave]
        if any(not wave for wave in self.waves):
            raise ValueError("a wave needs at least one region")
        if sorted(listed) != sorted(set(listed)) or set(listed) != set(self.regions):
            raise ValueError(f"waves must list each region exactly once: regions {self.regions}, waves {self.waves}")
        return self

    @property
    def wave_list(self) -> list[list[str]]:
        return self.waves or [list(self.regions)]


class PathRule(Model):
    """An expedited way into one environment (a hotfix): its own rule, strategy and approval."""

    on: On
    to: str
    strategy: Strategy | None = None  # default: the environment's
    approve: bool | None = None  # default: the environment's


class Freeze(Model):
    """No release starts or advances from each cron match for `duration`, in time zone `tz`."""

    model_config = Model.model_config | {"populate_by_name": True}

    cron: str
    duration: Duration = Field(ge=60)
    tz: str = "UTC"
    except_: list[str] = Field(default_factory=list, alias="except")  # paths that may go ahead

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday)")
        return value

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value

    def window_at(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The window `now` lies in, if any: (start, end), in the freeze's time zone."""
        from zoneinfo import ZoneInfo

        from croniter import croniter

        local = now.astimezone(ZoneInfo(self.tz))
        start = croniter(self.cron, local + timedelta(microseconds=1)).get_prev(datetime)
        end = start + timedelta(seconds=self.duration)
        return (start, end) if start <= local < end else None


class Pipeline(Model):
    service: str = Field(pattern=SERVICE_NAME)
    # The image repositories it may run (globs; default `*-docker.pkg.dev/PROJECT/*/SERVICE`): a build that
    # produced none of them is not this service's.
    image: list[str] | None = None
    repo: str | None = None  # builds of this repository only
    triggers: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=list, max_length=20)
    environments: dict[str, Environment] = Field(min_length=1)
    paths: dict[str, PathRule] = Field(default_factory=dict)
    freeze: list[Freeze] = Field(default_factory=list)
    max_hold: Duration = 86400  # an approval (or a paused region) waits at most this long
    apply_budget: Duration = 600
    notify: list[Sink] = Field(default_factory=list, max_length=50)  # every environment's (narrowed by `environments`)

    @field_validator("image", mode="before")
    @classmethod
    def _images(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("environments", "paths")
    @classmethod
    def _names(cls, named: dict[str, Any]) -> dict[str, Any]:
        import re

        bad = [n for n in named if not re.match(ENVIRONMENT_NAME, n)]
        if bad:
            raise ValueError(f"names must be lowercase letters, digits and dashes: {', '.join(bad)}")
        return named

    @model_validator(mode="after")
    def _references(self) -> Pipeline:
        for name, env in self.environments.items():
            if env.soak is not None and env.promote_from is None:
                raise ValueError(f"environments.{name}.soak needs promote_from: it is how long a release soaks there")
            if env.promote_from is not None and env.promote_from not in self.environments:
                raise ValueError(f"environments.{name}.promote_from names {env.promote_from!r}, which is not an "
                                 f"environment ({', '.join(self.environments)})")
        for name, path in self.paths.items():
            if path.to not in self.environments:
                raise ValueError(f"paths.{name}.to names {path.to!r}, which is not an environment")
        for sink in self.notify:
            unknown = [e for e in sink.environments or [] if e not in self.environments]
            if unknown:
                raise ValueError(f"notify sink {sink.name!r} names {', '.join(unknown)}, which are not environments")
        for name in self.environments:
            unique_names(self.sinks_of(name))
        for freeze in self.freeze:
            unknown = [p for p in freeze.except_ if p not in self.paths]
            if unknown:
                raise ValueError(f"freeze except names {', '.join(unknown)}, which are not paths")
        for name in self.environments:  # promote_from must not loop
            seen, current = {name}, self.environments[name].promote_from
            while current is not None:
                if current in seen:
                    raise ValueError(f"promote_from loops through {name!r}: an environment cannot follow itself")
                seen.add(current)
                current = self.environments[current].promote_from
        return self

    @property
    def key(self) -> str:
        return f"{self.service} (pipeline)"

    # ------------------------------------------------------------ questions

    def sinks_of(self, environment: str) -> list[Sink]:
        """The sinks an environment's events go to: the pipeline's (for every environment, or those it names) and
        the environment's own."""
        shared = [s for s in self.notify if s.environments is None or environment in s.environments]
        return shared + list(self.environments[environment].notify)

    def specs(self) -> list[RolloutSpec]:
        """One spec per environment (stored as specs/{service}--{environment}): what grants, `pitstop deploy` and
        the region rollouts read. Releases start their rollouts; no build matches them directly."""
        out = []
        for name, env in self.environments.items():
            match = Match(repo=self.repo, branch=env.on.branch, tag=env.on.tag) if env.on else None
            out.append(RolloutSpec(service=self.service, regions=env.regions, environment=name, project=env.project,
                                   match=match, pipeline=True, strategy=env.strategy, health=env.health,
                                   max_hold=self.max_hold, apply_budget=self.apply_budget, image=self.image,
                                   triggers=self.triggers, access=env.access, notify=self.sinks_of(name)))
        return out

    def takes(self, build: Any, default_project: str) -> bool:
        """Is this build one of this service's? Its repo and trigger (when the pipeline names them), its
        `_SERVICE` substitution (when given), and an image it produced under the pipeline's image globs."""
        from pitstop.core.access import image_refusal

        if self.repo and build.repo != self.repo:
            return False
        if self.triggers and not {build.trigger, build.trigger_id} & set(self.triggers):
            return False
        if build.substitutions.get("_SERVICE") not in (None, "", self.service):
            return False
        images = [name for name, _ in build.images] or ([build.artifact.image] if build.artifact else [])
        return any(image_refusal(self, default_project, image) is None for image in images)

    def match_keys(self) -> list[str]:
        """Index keys under which a build finds this pipeline (as `routing.match_keys` for a spec)."""
        if self.repo:
            return [f"repo:{self.repo}"]
        return [f"trigger:{t}" for t in self.triggers][:10] or ["any"]

    def destinations(self, branch: str | None, tag: str | None) -> list[tuple[str, str | None]]:
        """Where a build of this branch or tag goes: (environment, path or None), environments in file order.
        A path's rule wins over the environment's own for the same environment (a hotfix takes its path)."""
        by_path = {p.to: (p.to, name) for name, p in self.paths.items() if p.on.takes(branch, tag)}
        by_rule = {n: (n, None) for n, env in self.environments.items() if env.on and env.on.takes(branch, tag)}
        return [by_path.get(n) or by_rule[n] for n in self.environments if n in by_path or n in by_rule]

    def why_nothing(self, branch: str | None, tag: str | None) -> str:
        """The sentence the audit records for a build no rule names (a feature branch)."""
        built = f"tag {tag}" if tag else f"branch {branch}" if branch else "a build with no branch or tag"
        rules = [f"{n}: {env.on}" for n, env in self.environments.items() if env.on] + \
                [f"path {n} → {p.to}: {p.on}" for n, p in self.paths.items()]
        return f"{built} of {self.service} matches no rule ({'; '.join(rules) or 'none'}): built, nothing deployed"

    def frozen(self, now: datetime, path: str | None = None) -> tuple[Freeze, datetime, datetime] | None:
        """The freeze window `now` lies in for a release on `path` (None: the environment's own rule)."""
        for freeze in self.freeze:
            if path is not None and path in freeze.except_:
                continue
            window = freeze.window_at(now)
            if window is not None:
                return freeze, *window
        return None


def load_pipeline(text: str, source: str = "pipeline") -> Pipeline:
    """A pipeline from its YAML (read as specs are: no aliases, bounded nesting, YAML 1.2 booleans)."""
    from pitstop.core.spec import load_yaml

    return parse_pipeline(load_yaml(text, source), source)


def parse_pipeline(doc: Any, source: str = "pipeline") -> Pipeline:
    """A pipeline from its document already parsed (by load_yaml, or a JSON body), refused with a SpecError
    naming each invalid field, custom metrics' conditions included (core/spec.py `health_lines`)."""
    from pydantic import ValidationError

    from pitstop.core.spec import SpecError, health_lines, validation_lines

    if not isinstance(doc, dict):
        raise SpecError(f"{source}: expected a mapping with service and environments")
    try:
        pipeline = Pipeline.model_validate(doc, strict=False)
    except ValidationError as err:
        raise SpecError(f"{source}: invalid pipeline\n" + "\n".join(validation_lines(err))) from None
    problems = [line for name, env in pipeline.environments.items()
                for line in health_lines(env.health, f"environments.{name}.health")]
    if problems:
        raise SpecError(f"{source}: invalid pipeline\n" + "\n".join(problems))
    return pipeline

