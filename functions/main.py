"""Cloud Functions entry points: each parses its message and hands it to the engine.

A message that can never be processed is logged with its reason and
acknowledged (the function returns normally), so Pub/Sub does not redeliver it
forever; the rollout it named is unchanged. Infrastructure errors raise, and
Pub/Sub redelivers: every input is idempotent.
"""

from __future__ import annotations

from typing import Callable

import functions_framework
from cloudevents.http.event import CloudEvent

from pitstop.core import limits, messages
from pitstop.log import log

_engine = None
_notifier = None


def engine():
    """Built on first use and kept for the instance's life (clients are reused)."""
    global _engine
    if _engine is None:
        from pitstop.app import build_engine

        _engine = build_engine()
    return _engine


# Besides BadMessage, what data raises that redelivery cannot fix: a value that slipped past the parsers
# and fails where Python handles it (a date out of range, text that is not UTF-8, nesting that exhausts
# recursion). Everything else (google.api_core errors, the store's Contention, transport failures,
# Firestore's ValueError after its transaction retries) raises, and Pub/Sub redelivers.
_NEVER_PROCESSABLE = (OverflowError, RecursionError, UnicodeError)


def _guarded(kind: str, event: CloudEvent, handle: Callable[[], None]) -> None:
    try:
        handle()
    except messages.BadMessage as err:
        log("ERROR", f"rejected {kind} message {event['id']}: {err}. Acknowledged; nothing changed.",
            event_id=event["id"], source=event["source"])
    except _NEVER_PROCESSABLE as err:
        problem = limits.truncate(f"{type(err).__name__}: {err}", 300)
        log("ERROR", f"{kind} message {event['id']} cannot be processed ({problem}): a value pitstop does not "
                     f"bound yet, please report it. Acknowledged; the input may be partly applied.",
            event_id=event["id"], source=event["source"])


@functions_framework.cloud_event
def on_build(event: CloudEvent) -> None:
    def handle() -> None:
        payload, attributes, _ = messages.envelope(event.data)
        engine().on_build(messages.parse_build(payload, attributes))
    _guarded("Cloud Build", event, handle)


@functions_framework.cloud_event
def on_health(event: CloudEvent) -> None:
    def handle() -> None:
        payload, attributes, _ = messages.envelope(event.data)
        token = messages.sender_token(payload, attributes)
        engine().on_health(messages.parse_health(payload), token, messages.payload_digest(payload))
    _guarded("health sample", event, handle)


@functions_framework.cloud_event
def on_alert(event: CloudEvent) -> None:
    def handle() -> None:
        payload, _, _ = messages.envelope(event.data)
        engine().on_alert(messages.parse_alert(payload))
    _guarded("Cloud Monitoring incident", event, handle)


@functions_framework.cloud_event
def on_command(event: CloudEvent) -> None:
    def handle() -> None:
        payload, attributes, message_id = messages.envelope(event.data)
        token = messages.sender_token(payload, attributes)
        engine().on_command(messages.parse_command(payload, message_id), token)
    _guarded("operator command", event, handle)


@functions_framework.http
def api(request):
    """The HTTP API (IAM-protected; every request also carries the caller's ID token)."""
    from pitstop.surfaces.api import respond

    return respond(request, engine)


@functions_framework.cloud_event
def on_tick(event: CloudEvent) -> None:
    def handle() -> None:
        engine().on_tick(messages.parse_tick(messages.message_id(event.data)))
    _guarded("tick", event, handle)


_drain = None


@functions_framework.http
def on_drain(request):
    """Pull the request logs waiting, judge the watched rollouts, publish failures (pitstop/drain.py). Called
    every 5 s by Cloud Tasks while a rollout is watched (the tick arms it); the counts stay in this instance."""
    global _drain
    if _drain is None:
        from pitstop.drain import SUBSCRIPTION, Drain, fraction_from_env
        from pitstop.gcp.subscription import Subscription

        _drain = Drain(engine(), Subscription(engine().config.project, SUBSCRIPTION), fraction_from_env())
    return _drain.run()


@functions_framework.cloud_event
def on_event(event: CloudEvent) -> None:
    """Deliver a pitstop event to the notification sinks configured for it (surfaces/notifications.py)."""
    def handle() -> None:
        global _notifier
        payload, _, _ = messages.envelope(event.data)
        if _notifier is None:
            from pitstop.surfaces.notifications import Notifier

            _notifier = Notifier.from_env()
        _notifier.on_event(payload)
    _guarded("pitstop event", event, handle)
