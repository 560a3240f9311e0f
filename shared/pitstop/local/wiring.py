"""Topics and push subscriptions that connect the local functions to the Pub/Sub emulator.

On GCP, Terraform creates the topics and one push subscription per function
(terraform/pubsub.tf); locally, wire() does both with the real client against
the emulator.
"""

from __future__ import annotations

import os

from google.api_core.exceptions import AlreadyExists
from google.cloud import pubsub_v1

TOPICS: tuple[str, ...] = (
    "cloud-builds",
    "pitstop-health",
    "pitstop-ticks",
    "pitstop-alerts",
    "pitstop-commands",
    "pitstop-events",
    "pitstop-dead-letter",
    "pitstop-request-logs",  # Cloud Run request logs (the sink's topic), pulled by on_drain
)

# Pull subscriptions: topic -> subscription (the drain pulls it; pitstop/drain.py SUBSCRIPTION)
PULLS: dict[str, str] = {"pitstop-request-logs": "pitstop-request-logs-drain"}

# topic -> function target (functions/main.py) that consumes it
ROUTES: dict[str, str] = {
    "cloud-builds": "on_build",
    "pitstop-health": "on_health",
    "pitstop-ticks": "on_tick",
    "pitstop-alerts": "on_alert",
    "pitstop-commands": "on_command",
    "pitstop-events": "on_event",
}

# How long the emulator waits for a function before it redelivers. The
# Firestore emulator can be slow under load (seconds per write); a shorter
# deadline would run the same message twice at once.
PUSH_ACK_DEADLINE_S = 60


def _require_emulator() -> None:
    # Guard: this module creates and rewires subscriptions; it must never
    # reach a real project by accident.
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        raise RuntimeError(
            "PUBSUB_EMULATOR_HOST is not set, so the Pub/Sub client would talk to real GCP."
            " Start the local stack with `pitstop dev up` (or the tests' `emulators` fixture)"
            " and export the variable it prints."
        )


def create_topics(project: str, names: tuple[str, ...] | list[str] = TOPICS) -> None:
    """Create the topics; ones that already exist are left alone."""
    _require_emulator()
    publisher = pubsub_v1.PublisherClient()
    for name in names:
        try:
            publisher.create_topic(name=publisher.topic_path(project, name))
        except AlreadyExists:
            pass


def create_push_subscription(project: str, topic: str, push_endpoint: str,
                             name: str | None = None) -> str:
    """Push `topic` to `push_endpoint`; returns the subscription path.

    Idempotent: if the subscription exists, its endpoint is pointed at
    `push_endpoint` (functions get new ports each time the stack starts).
    """
    _require_emulator()
    with pubsub_v1.SubscriberClient() as subscriber:
        path = subscriber.subscription_path(project, name or f"{topic}-push")
        push_config = {"push_endpoint": push_endpoint}
        try:
            subscriber.create_subscription(request={
                "name": path,
                "topic": f"projects/{project}/topics/{topic}",
                "push_config": push_config,
                "ack_deadline_seconds": PUSH_ACK_DEADLINE_S,
            })
        except AlreadyExists:
            subscriber.modify_push_config(request={"subscription": path, "push_config": push_config})
    return path


def create_pull_subscription(project: str, topic: str, name: str) -> str:
    """A pull subscription (kept if it exists); returns its path."""
    _require_emulator()
    with pubsub_v1.SubscriberClient() as subscriber:
        path = subscriber.subscription_path(project, name)
        try:
            subscriber.create_subscription(request={"name": path, "topic": f"projects/{project}/topics/{topic}",
                                                    "ack_deadline_seconds": PUSH_ACK_DEADLINE_S})
        except AlreadyExists:
            pass
    return path


def wire(project: str, routes: dict[str, str]) -> dict[str, str]:
    """Create every pitstop topic, push each routed topic to its URL, and create the pull subscriptions.

    `routes` maps topic -> function URL. Returns topic -> push subscription path.
    """
    create_topics(project, TOPICS + tuple(t for t in routes if t not in TOPICS))
    for topic, name in PULLS.items():
        create_pull_subscription(project, topic, name)
    return {topic: create_push_subscription(project, topic, url) for topic, url in routes.items()}


def publish(project: str, topic: str, data: bytes, **attributes: str) -> str:
    """Publish one message and wait for its message id."""
    _require_emulator()
    publisher = pubsub_v1.PublisherClient()
    try:
        return publisher.publish(publisher.topic_path(project, topic), data, **attributes).result(timeout=60)
    finally:
        publisher.stop()
