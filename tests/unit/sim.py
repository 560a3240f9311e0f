"""A tiny driver for `decide` in unit tests: a clock, a rollout, a perfect or failing Cloud Run."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pitstop.core import machine
from pitstop.core.messages import parse_build
from pitstop.local.payloads import cloud_build
from pitstop.core.models import (
    Applied, ApplyFailed, ApplyTraffic, AuditEvent, Command, HealthSample, Notify, Rollout, RolloutSpec, Tick,
)
from pitstop.core.spec import load_spec
from pitstop.local.timing import DEFAULT_SPEC

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)

# The default canary, as the GCP timing model runs it, with its health thresholds spelled out.
SPEC_YAML = DEFAULT_SPEC + "health: {min_requests: 50, max_error_rate: 0.05, max_p99_ms: 1000, " \
                           "max_latency_increase: 0.20}\n"


def spec(text: str = SPEC_YAML) -> RolloutSpec:
    return load_spec(text)


class Sim:
    def __init__(self, spec: RolloutSpec, stable: str | None = "web-v1-aaaa", version: str = "v2",
                 auto_apply: bool = True) -> None:
        self.now = T0
        self.auto_apply = auto_apply
        self.audit: list[AuditEvent] = []
        self.notes: list[str] = []
        self.pending: list[ApplyTraffic] = []
        self.n = 0
        self.history: list[tuple[str, Rollout]] = []  # (state before, rollout after) per decision
        build = parse_build(cloud_build("SUCCESS", build_id="b2" + "0" * 30, substitutions={"_VERSION": version}, now=T0), {})
        d = machine.start(spec, "us-central1", "p", build.artifact, "web-r1", stable, "v1" if stable else None,
                          self.now, build.id)
        self.rollout: Rollout = d.rollout
        self._take(d)

    def _take(self, d: machine.Decision) -> machine.Decision:
        if hasattr(self, "rollout"):
            self.history.append((self.rollout.state, d.rollout))
        self.rollout = d.rollout
        if d.audit:
            self.audit.append(d.audit)
        for e in d.effects:
            if isinstance(e, Notify):
                self.notes.append(e.message)
            elif isinstance(e, ApplyTraffic):
                self.pending.append(e)
        if self.auto_apply:
            self.apply_pending()
        return d

    def apply_pending(self) -> None:
        while self.pending:
            e = self.pending.pop(0)
            self.send(Applied(id=f"applied-g{e.generation}", generation=e.generation, observed=e.split))

    def fail_pending(self, error: str = "503 Service Unavailable", permanent: bool = False) -> None:
        e = self.pending.pop(0)
        self.send(ApplyFailed(id=f"fail-{self.next_id()}", generation=e.generation, error=error, permanent=permanent))

    def next_id(self) -> str:
        self.n += 1
        return str(self.n)

    def send(self, inp) -> machine.Decision:
        self.last_input = inp
        return self._take(machine.decide(self.rollout, inp, self.now))

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def tick(self) -> machine.Decision:
        return self.send(Tick(id=f"tick-{self.next_id()}"))

    def sample(self, requests: int = 200, errors: int = 0, p99: float | None = 120, revision: str | None = None,
               start: datetime | None = None, end: datetime | None = None) -> machine.Decision:
        r = self.rollout
        # As the sampler does: from the end of what is judged so far up to now.
        start = start or r.judged_until or r.step_started_at or self.now - timedelta(seconds=60)
        end = end or self.now
        return self.send(HealthSample(
            id=f"h-{self.next_id()}", service=r.service, region=r.region, revision=revision or r.revision,
            window_start=start, window_end=end, request_count=requests, error_count=errors,
            latency_p99_ms=p99, source="test"))

    def sample_with(self, requests: int = 200, errors: int = 0, p99: float | None = 120, source: str = "test",
                    **fields) -> machine.Decision:
        """A sample from the end of what is judged up to now, with any other field (utilizations, buckets...)."""
        r = self.rollout
        start = r.judged_until or r.step_started_at or self.now - timedelta(seconds=60)
        return self.send(HealthSample(
            id=f"h-{self.next_id()}", service=r.service, region=r.region, revision=r.revision, window_start=start,
            window_end=self.now, request_count=requests, error_count=errors, latency_p99_ms=p99, source=source,
            **fields))

    def command(self, action: str, **kw) -> machine.Decision:
        return self.send(Command(id=f"c-{self.next_id()}", action=action, rollout_id=self.rollout.id,
                                 actor="alice", **kw))

    @property
    def split(self) -> dict[str, int]:
        return {t.revision: t.percent for t in self.rollout.desired}
