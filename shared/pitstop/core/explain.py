"""Every sentence pitstop says about a decision, rendered from a reason code and its values.

The machine records *why* as `Reason(code, values)`: measured values, thresholds, times. This module
is the one place that turns them into words, for the Firestore audit text, the CLI and notifications
alike, so the three never disagree. Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pitstop.core.models import Reason

# code -> template; values are filled in with str.format. Times are datetimes, rendered HH:MM:SS UTC.
TEMPLATES: dict[str, str] = {
    # starting
    "first_version": "first version of {service} in {region}: no stable revision to compare with, deployed at 100 %",
    "build_matches": "build {build_id} of {repo} matches spec {spec}: {strategy} of {version} against stable {stable}",
    "rollback_to": "{actor} asked to roll back to version {version}; all traffic goes to {revision} at once",
    # traffic
    "split_applied": "Cloud Run now serves {split}",
    "revision_ready": "revision {revision} is ready at 0 % behind its tag",
    # a region's rollout in a release (its wave moves together)
    "wave_hold_ready": "waiting at 0 % for every region of its wave (release {release})",
    "wave_hold": "step done (judged healthy up to {until}); waiting for every region of its wave (release {release})",
    "wave_cleared": "release clears its wave for step {step} ({actor})",
    "wave_cleared_ahead": "release clears its wave for step {step}; this region moves on once it is there ({state})",
    "already_cleared": "its wave was already cleared for step {step}",
    "not_in_release": "this rollout is not part of a release",
    "resumed_by_wave": "resumed and moved on with its wave ({actor})",
    "promote_full_in_release": "this region moves with its wave: promote the release ({release}) instead",
    "step_due": "step deadline {deadline} passed without enough evidence here ({last}); the release judges the "
                "wave's traffic as a whole",
    "split_reapplied": "desired split generation {generation} ({split}) is not served yet; applying it again",
    "split_pending": "Cloud Run is still applying split generation {generation}; looking again later",
    "drift": "Cloud Run serves {observed}, not the decided {desired}; applying the decided split again",
    "stale_effect": "split generation {generation} is not the pending one (desired {desired}, observed {observed})",
    "late_effect": "rollout already {state}: this late Cloud Run result changes nothing",
    "apply_retry": "Cloud Run update failed ({error}); attempt {attempt}, next in {delay}s, giving up after "
                   "{budget}s of failures ({spent}s so far); traffic stays {split}. An API error never counts "
                   "as the new version failing",
    "apply_gave_up": "Cloud Run update {why}: {error}; traffic stays {split}",
    # health
    "wrong_service": "sample is for {service} in {region}, not {want_service} in {want_region}",
    "baseline": "baseline: stable {revision} served {requests} requests, p99 {p99} in {start}–{end}",
    "baseline_older": "an equal or newer sample of the stable revision is already held",
    "other_revision": "sample is for revision {revision}, neither the new {new} nor the stable {stable}",
    "verdict": "{rule}",
    "dry_run_failed": "{rule}: recorded, no action (dry_run)",
    "logs_fail_only": "a {outcome} verdict from the request logs: they report failures only (Monitoring's counts "
                      "pass a step)",
    "paused_by_metric": "paused at {percent} % because {rule}; it rolls back if not resumed by {until}",
    "covered": "healthy and contiguous: the new revision is judged healthy from its start up to {until}",
    "already_covered": "a healthy window ending {end}, already covered (judged healthy up to {until})",
    "coverage_gap": "healthy, but its window starts {start}, after {until}, the end of what is judged so far: "
                    "the gap stays unjudged and nothing advances on it",
    "not_serving": "the new revision does not serve yet while {state}; a healthy window proves nothing",
    "verdict_stands": "the verdict on the window ending {end} ({outcome}) stands",
    "health_failed": "health check failed: {rule}",
    # alerts
    "test_alert": "test notification from policy {policy}: no action taken",
    "alert_other_service": "incident concerns service {service}, not {want}",
    "alert_other_revision": "incident concerns revision {revision}, not the new revision {new}",
    "alert_before": "incident {incident} began {started}, before this rollout; it names no revision, so it cannot "
                    "be about this one",
    "alert_closed": "incident {incident} ({policy}) closed",
    "alert_open": "Cloud Monitoring incident {incident} opened: {policy} / {condition} observed {observed} against "
                  "threshold {threshold}",
    # steps and deadlines
    "step": "step {step} of {steps}: {weight} % to {revision}",
    "advance": "the step's deadline {deadline} passed and its traffic is judged healthy up to {until}",
    "hold_expired": "{what} since {since}, past the {max_hold}s hold limit",
    "no_coverage": "still not judged healthy up to the step's deadline {deadline} (judged up to {until}) "
                   "{timeout}s past it: {last}",
    "verify": "verifying {revision} at 0 % on its tagged URL for {seconds}s",
    "bake": "all traffic on {revision}; watching it for {seconds}s before calling it done",
    "switch_last_step": "last canary step passed; promoting to 100 %",
    "switch_verified": "verification passed on the tagged URL; switching all traffic at once",
    "superseded": "a newer build (version {version}) for the same service and environment supersedes this "
                  "rollout; rollout {by} takes over the traffic",
    "finished": "rollout already {state}",
    "not_accepted": "a {input} input does not apply while {state}",
    # commands
    "actor_says": "{actor}: {text}",
    "asked": "{actor} asked to {action}",
    "pause_refused": "only a verifying, progressing or baking rollout whose split is applied can be paused; "
                     "this one is {state}",
    "paused_by": "paused by {actor} at {percent} %; it rolls back if not resumed by {until}",
    "resume_refused": "cannot resume: rollout is {state}, not paused",
    "resumed": "resumed by {actor}; the step's deadline stays {deadline}",
    "approve_refused": "nothing to approve: rollout is {state}",
    "approved": "approved by {actor}",
    "promote_refused": "cannot promote while {state} and the current split is not applied yet",
    "promote_at_gate": "the rollout waits for approval: only `pitstop approve` (by a person allowed to approve) "
                       "passes the gate; promote does not",
    "promote_past_gate": "promote --full would skip the approval gate {gate}: an approver must pass it "
                         "(`pitstop approve`); a plain promote goes up to the gate",
    "promoted": "promoted by {actor} (last verdict: {verdict}; judged healthy up to {until})",
    "promoted_full": "{actor} promoted to 100 % at once, skipping the remaining steps and analysis",
    "promoted_full_bake": "{actor} promoted fully, skipping the rest of the bake",
    # rolling back
    "already_rolling_back": "already rolling back",
    "cause": "{cause}",
    "no_stable": "no stable revision to roll back to (first version of the service)",
}

# Releases (core/release.py): one artifact through environments and their regions.
TEMPLATES.update({
    "release_started": "release of {version} ({digest}){hotfix}: {why}; route {route}",
    "release_extended": "sent on to {environment} ({why}); route adds {route}",
    "release_already_routed": "{environment} is already on this release's route ({state})",
    "release_finished": "the release is {state}: it goes no further",
    "release_no_build_rule": "{why}",
    "stage_entered": "entering {environment}: regions {regions} in {waves} wave(s)",
    "wave_started": "{environment} wave {wave} of {waves} starts: {regions} deploy at 0 %",
    "wave_step": "{environment} wave {wave}: every region reached its step; all of {regions} move to {step} together",
    "wave_pooled": "{environment}: {regions} region(s) had too little traffic to judge alone; the wave's pooled "
                   "{requests} requests at error rate {rate} pass (rule: at least {min_requests} requests, at "
                   "most {max_rate} errors, no region failing)",
    "wave_spread": "{environment} wave {wave} {step}: {regions} regions changed traffic within {spread} ms "
                   "({first} first, {last} last)",
    "region_reports": "{region} is {state} at {percent} % ({step})",
    "region_reverted": "{region} is back on its earlier revision ({state})",
    "stage_succeeded": "{environment} succeeded in every region ({regions}); spread {spread}",
    "release_reopened": "{environment} opens again ({why})",
    "region_late_revert": "{region} reported after {environment} was rolled back: it goes back too",
    "release_superseded": "{environment} stops: {why}; regions still rolling out go back: {regions}",
    "release_frozen": "{environment} is inside a freeze window",
    "release_resync": "a tick resent what {environment} still owed: {what}",
    "check_started": "{environment}: {check} starts (deadline {deadline})",
    "check_execution": "{check}: job execution {execution} started",
    "check_progress": "{check}: {what}",
    "check_poll": "{environment}: {check} (attempt {attempt}) is carried a step further",
    "check_result": "{check} {state}: {why}",
    "check_retry": "{check} runs again (attempt {attempt}) at {at}",
    "check_stale": "an update of {check} attempt {attempt}, which is no longer running",
    "release_check_failed": "{environment} stops before any traffic: {why}",
    "release_revert": "{environment} rolls back every region ({regions}): {why}; waves not started: {skipped}",
    "frozen": "{environment}: {what} waits: freeze window {cron} ({tz}) from {start} until {end}",
    "release_waits": "{environment} waits: {what}",
    "release_soak": "{environment} follows {after} by itself after a soak, at {until}",
    "release_approved": "{actor} approved the start of {environment}",
    "release_step_approved": "{actor} approved {environment} past {step}",
    "release_cancelled": "{actor} cancelled {environment} before it started",
    "release_unfrozen": "{actor} lifted the freeze for {environment}: {text}",
    "release_forwarded": "{actor} asked to {action}: sent to {regions}",
    "wave_promoted": "{actor} promoted {environment}'s wave to {step} without waiting for the step's judgment",
    "release_unknown_region": "{region} is not a region of {environment} in this release",
    "release_no_environment": "{environment} is not on this release's route ({route})",
    "release_nothing_to_approve": "{environment} waits for no approval ({state})",
    "release_stage_finished": "{environment} is already {state}",
    "release_nothing_live": "{environment} has no region in progress ({state})",
    "release_nothing_to_promote": "{environment} has no step left to promote ({state})",
    "release_wave_not_there": "the wave of {environment} has not reached {step} in every region yet",
    "note_release_check_failed": "Release of {service} {version} stopped before {environment}: {why}. Traffic is "
                                 "untouched.",
    "note_check_failed": "Release of {service} {version} in {environment}: check {check} failed: {why}; "
                         "{consequence}.",
    "note_release_succeeded": "Release of {service} {version}{hotfix} succeeded: {route}.",
    "note_release_gate": "Release of {service} {version} waits for an approver to start {environment} "
                         "(`pitstop approve {id} --env {environment}`) until {until}.",
    "note_release_step_gate": "Release of {service} {version} is healthy in {environment} at {step} in every region "
                              "of the wave and waits for approval (`pitstop approve {id}`).",
    "note_release_expired": "Release of {service} {version} was not approved for {environment} within {max_hold}s; "
                            "nothing deployed there.",
    "note_release_rolled_back": "Release of {service} {version} rolled back in {environment} ({regions}): {why}.",
})

# Notifications: the sentence a person reads first. Same rendering, same values.
TEMPLATES.update({
    "note_deployed_first": "Version {version} deployed as the first revision of {service}.",
    "note_promoted": "Version {version} promoted to 100 % of {service}.",
    "note_promoted_by": "Version {version} promoted to 100 % of {service} by {actor}.",
    "note_succeeded": "Version {version} is live on 100 % of {service} and judged healthy through its final watch "
                      "(up to {until}).",
    "note_direct_done": "Rolled back {service} to version {version}: revision {revision} serves 100 %.",
    "note_deploy_failed": "Version {version} could not be deployed: {error}. All traffic goes to version {stable}. "
                          "The new version served no requests.",
    "note_failed": "Rollout of {service} version {version} FAILED and needs a person: Cloud Run update {why} "
                   "({error}). Wanted {desired}; traffic is as last observed: {observed}.",
    "note_rolled_back": "{cause}. {verb} {service} to version {stable}. {impact}",
    "note_superseded": "Version {version} superseded by {by_version} before it finished.",
    "note_paused_metric": "Rollout of {service} version {version} paused at {percent} %: {rule}. A person decides: "
                          "`pitstop resume {id}` or `pitstop abort {id}`.",
    "note_paused_no_data": "Rollout of {service} version {version} paused at {percent} %: its traffic is not judged "
                           "healthy up to the step's deadline (not enough health data). Run `pitstop promote {id}` "
                           "or `pitstop abort {id}`.",
    "note_gate": "Rollout of {service} version {version} is healthy at {percent} % and waits for approval: "
                 "`pitstop approve {id}`.",
    # surfaces/notifications.py: a sink that failed every attempt (recorded in the audit trail)
    "notification_failed": "the {event} notification to sink {sink} ({type}) failed {attempts} times and was given "
                           "up (last error: {error}); the other sinks were not held up",
})


def render(reason: Reason) -> str:
    template = TEMPLATES.get(reason.code)
    if template is None:  # an unknown code still says what it knows
        return f"{reason.code}: " + ", ".join(f"{k}={_show(v)}" for k, v in reason.values.items())
    try:
        return template.format_map({k: _show(v) for k, v in reason.values.items()})
    except (KeyError, IndexError, ValueError) as err:
        return f"{reason.code} ({err}): " + ", ".join(f"{k}={_show(v)}" for k, v in reason.values.items())


def render_all(reasons: list[Reason]) -> list[str]:
    return [render(r) for r in reasons]


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return f"{value:%H:%M:%S} UTC"
    return number(value)


def number(value: Any) -> str:
    """A value as people read it: `n/a` when unknown, floats to four significant digits."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------- a verdict's checks
# One line per check, the same in the CLI, the dashboard, notifications and the demo:
# `error rate 60.0 % > limit 5.0 % ✗`, `latency p99 412 ms ≤ limit 2000 ms ✓`, `requests 37 ≥ minimum 10 ✓`.

def check_label(name: str) -> str:
    """`error_rate` -> `error rate`, `latency_p99_ms` -> `latency p99` (the unit goes with the values)."""
    return name.removesuffix("_ms").replace("_", " ")


def check_value(name: str, value: float | None) -> str:
    """A measured value or threshold in the check's unit: rates in percent, `*_ms` in ms, requests counted."""
    if value is None:
        return "n/a"
    if name.endswith(("_rate", "_utilization")):
        percent = value * 100
        return f"{percent:.1f} %" if percent == 0 or abs(percent) >= 0.1 else f"{percent:.2g} %"
    if name.endswith("_ms"):
        return f"{number(float(value))} ms"
    if name == "requests":
        return f"{value:.0f}"
    return number(value)


def check_measure(name: str, measured: float | None, threshold: float | None, passed: bool | None) -> str:
    """`60.0 % > limit 5.0 %`: the measured value against its threshold (a minimum for requests)."""
    bound = "minimum" if name == "requests" else "limit"
    relation = {True: "≥", False: "<"} if bound == "minimum" else {True: "≤", False: ">"}
    return f"{check_value(name, measured)} {relation.get(passed, 'vs')} {bound} {check_value(name, threshold)}"


def check_mark(passed: bool | None) -> str:
    return {True: "✓", False: "✗"}.get(passed, "?")


def check_line(check: Any) -> str:
    """A verdict's check (a `Check` or its dict) in one line: `error rate 60.0 % > limit 5.0 % ✗`."""
    get = check.get if isinstance(check, dict) else lambda key: getattr(check, key, None)
    name, passed = str(get("name")), get("passed")
    dry = " (dry run)" if get("dry_run") else ""
    if get("condition"):  # a custom metric: its value, stable's, and the CEL condition that judged them
        stable = f" vs stable {check_value(name, get('stable'))}" if get("stable") is not None else ""
        return f"{check_label(name)} {check_value(name, get('measured'))}{stable}: {get('condition')} " \
               f"{check_mark(passed)}{dry}"
    return f"{check_label(name)} {check_measure(name, get('measured'), get('threshold'), passed)} " \
           f"{check_mark(passed)}{dry}"
