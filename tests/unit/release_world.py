"""A pure, synchronous world for the release machine: region rollouts decided by `machine.decide`, Cloud Run
applying every split at once, and each rollout reporting to its release as the engine does. No I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pitstop.core import machine
from pitstop.core.models import (
    Applied, ApplyTraffic, Artifact, Command, HealthSample, Match, Proceed, Rollout, RolloutSpec, Tick,
)
from pitstop.core.pipeline import load_pipeline
from test_pipeline import SEED
from pitstop.core.release import (
    CheckUpdate, ForwardCommand, ProceedWave, RegionReport, Release, RevertRegions, RunCheck, StartRegions, begin,
    decide_release, extend, progress_of, release_id,
)

# The seed's branch strategy (test_pipeline.SEED) with one-minute pauses: the world's ticks are 10 s.
PIPELINE = SEED.replace("pause: 2m", "pause: 60s").replace("pause: 5m", "pause: 60s")

MONDAY = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)


class World:
    def __init__(self, text: str = PIPELINE, now: datetime = MONDAY) -> None:
        self.pipeline = load_pipeline(text)
        self.now = now
        self.release: Release | None = None
        self.rollouts: dict[tuple[str, str], Rollout] = {}
        self.stable: dict[tuple[str, str], tuple[str, str]] = {}  # (env, region) -> (revision, version)
        self.traffic: dict[tuple[str, str], list] = {}  # what "Cloud Run" serves
        self.moves: list[tuple[datetime, str, str, int]] = []  # (when, env, region, new revision's percent)
        self.audit: list = []
        self.seq = 0
        self.lossy = False
        self.lose: set[str] = set()  # effect kinds lost (all of them while `lossy`)
        self.lost: list = []
        self.lost_resent = False  # a lost effect was sent again (it may land later than its decision)
        # What each check's run reports, in turn, whenever the shell carries it a step ("running" keeps it going).
        self.check_results: dict[str, list[str]] = {}
        self.check_calls: list[str] = []
        self.cancelled: list[str] = []  # checks whose execution was asked to stop
        for env, e in self.pipeline.environments.items():  # v1 already serves everywhere
            for region in e.regions:
                self.stable[(env, region)] = (f"web-v1-{env[:4]}", "v1")

    # ------------------------------------------------------------ inputs

    def build(self, version: str = "v2", branch: str | None = "main", tag: str | None = None,
              digest: str = "a", actor: str = "cloud-build") -> list:
        artifact = Artifact(image=f"us-docker.pkg.dev/acme/apps/web:{version}", digest="sha256:" + digest * 64,
                            build_id=f"build-{version}-{digest}", version=version, branch=branch, tag=tag,
                            created_at=self.now)
        places = self.pipeline.destinations(branch, tag)
        for environment, path in places:
            rid = release_id("web", artifact.digest)
            why = f"build {artifact.build_id} of {'tag ' + tag if tag else 'branch ' + str(branch)}"
            if self.release is None or self.release.id != rid:
                self._commit(begin(self.pipeline, rid, artifact, environment, path, actor, why, self.now,
                                   self._id("build"), started_by=actor if "@" in actor else None))
            else:
                self._commit(extend(self.pipeline, self.release, environment, path, actor, why, self.now,
                                    self._id("build")))
        return places

    def command(self, action: str, actor: str = "ops@example.com", **fields) -> None:
        self._commit(decide_release(self.release, Command(id=self._id("cmd"), action=action, actor=actor,
                                                          release_id=self.release.id, **fields), self.now))

    def health(self, env: str, region: str, errors: int = 0, requests: int = 100) -> None:
        r = self.rollouts[(env, region)]
        start = r.judged_until or r.step_started_at or self.now - timedelta(seconds=1)
        if start >= self.now:
            return
        sample = HealthSample(id=self._id("h"), service="web", region=region, revision=r.revision,
                              window_start=start, window_end=self.now, request_count=requests, error_count=errors,
                              latency_p99_ms=100.0, source="test")
        self._rollout((env, region), sample)

    def wait(self, seconds: float, healthy: bool = True, requests: int = 100) -> None:
        """Time passes in 10 s ticks; every live region reports healthy windows unless told otherwise."""
        end = self.now + timedelta(seconds=seconds)
        while self.now < end:
            self.now = min(end, self.now + timedelta(seconds=10))
            for key, r in list(self.rollouts.items()):
                if r.state in ("progressing", "verifying", "baking", "switching", "paused", "awaiting_approval"):
                    if healthy:
                        self.health(*key, requests=requests)
                    self._rollout(key, Tick(id=self._id("tick")))
            if self.release is not None:
                self._commit(decide_release(self.release, Tick(id=self._id("tick")), self.now))

    # ------------------------------------------------------------ the shell

    def _id(self, kind: str) -> str:
        self.seq += 1
        return f"{kind}-{self.seq}"

    def _commit(self, decision) -> None:
        if decision.audit is not None:
            self.audit.append(decision.audit)
        self.release = decision.release
        for effect in decision.effects:
            if self.lossy or effect.kind in self.lose:  # the function died after the release's write, before them
                self.lost.append(effect)
                continue
            self._effect(effect)

    def resend_owed(self) -> list:
        """What a tick does after a loss: resend what the release still owes its regions."""
        from pitstop.core.release import owed

        effects = owed(self.release)
        self.lost_resent = self.lost_resent or bool(effects)
        for effect in effects:
            self._effect(effect)
        return effects

    def _spec(self, env: str) -> RolloutSpec:
        stage = self.release.stages[env]
        return RolloutSpec(service="web", regions=[x for w in stage.waves for x in w], environment=env,
                           project=stage.project, match=Match(branch="*"), strategy=stage.strategy,
                           health=stage.health)

    def _effect(self, effect) -> None:
        env = getattr(effect, "environment", None)  # a Notify has none
        if isinstance(effect, StartRegions):
            artifact = Artifact(image=self.release.image.replace("@", ":x@").split("@")[0], digest=self.release.digest,
                                build_id=self.release.build_id, version=self.release.version)
            for region in effect.regions:
                stable = self.stable.get((env, region))
                d = machine.start(self._spec(env), region, self.release.stages[env].project or "p", artifact,
                                  f"web-{env}-{region}-{self.release.version}", stable and stable[0],
                                  stable and stable[1], self.now, self._id("start"), release_id=self.release.id)
                self._decided((env, region), d)
        elif isinstance(effect, ProceedWave):
            for region in effect.rollouts:
                self._rollout((env, region), Proceed(id=self._id("proceed"), step=effect.step,
                                                     forced_by=effect.forced_by))
        elif isinstance(effect, RevertRegions):
            for region in effect.rollouts:
                r = self.rollouts[(env, region)]
                if r.state == "succeeded":
                    self._revert((env, region), r)
                else:
                    self._rollout((env, region), Command(id=self._id("abort"), action="abort", actor="release",
                                                         rollout_id=r.id))
        elif isinstance(effect, RunCheck) and effect.cancel:
            self.cancelled.append(effect.key)
        elif isinstance(effect, RunCheck):
            name = effect.run.name
            self.check_calls.append(effect.key)
            plan = self.check_results.get(name) or ["passed"]
            state = plan.pop(0) if len(plan) > 1 else plan[0]
            update = CheckUpdate(id=self._id("check"), environment=env, key=effect.key, attempt=effect.run.attempt,
                                 state=state, execution=f"exec-{effect.key}-{effect.run.attempt}",
                                 reason=f"{name} {state} (test)", next_at=self.now + timedelta(seconds=10)
                                 if state == "running" else None)
            self._commit(decide_release(self.release, update, self.now))
        elif isinstance(effect, ForwardCommand):
            for region in effect.rollouts:
                self._rollout((env, region), Command(id=self._id("fwd"), action=effect.action, actor="ops",
                                                     rollout_id=self.rollouts[(env, region)].id))

    def _revert(self, key, r: Rollout) -> None:
        d = machine.start_direct(r.id + "-revert", "web", key[0], key[1], r.project, r.stable_version,
                                 r.stable_revision, "img", r.revision, r.version, self.now, self._id("revert"),
                                 "release", r, release_id=self.release.id)
        self._decided(key, d)

    def _rollout(self, key, inp) -> None:
        self._decided(key, machine.decide(self.rollouts[key], inp, self.now))

    def _decided(self, key, d) -> None:
        r = d.rollout
        self.rollouts[key] = r
        for effect in d.effects:
            if isinstance(effect, ApplyTraffic):
                self.traffic[key] = effect.split
                new = sum(t.percent for t in effect.split if t.revision == r.revision)
                self.moves.append((self.now, key[0], key[1], new))
                self._rollout(key, Applied(id=self._id("applied"), generation=effect.generation,
                                           observed=effect.split))
                r = self.rollouts[key]
        if r.state == "succeeded":
            self.stable[key] = (r.revision, r.version)
        if r.release_id and self.release is not None and d.audit is not None:
            self._commit(decide_release(self.release, RegionReport(
                id=self._id("report"), environment=key[0], region=key[1], progress=progress_of(r)), self.now))

    # ------------------------------------------------------------ reading

    def percent(self, env: str, region: str) -> int:
        r = self.rollouts.get((env, region))
        if r is None:
            return 0
        return sum(t.percent for t in self.traffic.get((env, region), []) if t.revision == r.revision)

    def serving(self, env: str, region: str) -> str | None:
        split = self.traffic.get((env, region), [])
        return max(split, key=lambda t: t.percent).revision if split else None
