"""Deliver each event on `pitstop-events` to the sinks configured for it (the `on_event` function).

For one event: find the sinks (the spec of its service and environment, which a pipeline fills with its own
and its environment's, plus the project-wide `settings/notifications`), keep those that want it (type,
minimum severity), and deliver to all of them at once, each with retries and exponential backoff, so a
slow or broken sink never holds up another.

Once per event and sink, however often Pub/Sub delivers the event: a sink's delivery is claimed by creating
`deliveries/{hash(event_id)}-{sink}`. The claim is a lease: a delivery whose function died is taken over
when its lease ran out (the event is redelivered until then), a delivered or failed one is never sent again.
Every write after the claim renews the lease and holds only while this instance still owns the delivery
(nobody wrote the document since its own last write); an instance whose delivery was taken over stops and
leaves it to the new owner. When the lease left is too short for one more attempt (its waits overran), the
delivery is recorded failed rather than retried outside its lease.
A sink that fails every attempt is recorded (the delivery document, an ERROR log line, and an entry in the
audit trail of the rollout or release), and the event is acknowledged: retrying forever helps nobody.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from pitstop.core import notify
from pitstop.core.messages import BadMessage
from pitstop.core.sinks import ProjectNotify, Sink, event_type
from pitstop.log import log

ATTEMPTS = 4  # per sink and event; waits between them: 1, 2, 4 s (times PITSTOP_NOTIFY_BACKOFF)
TIMEOUT = 10.0  # seconds for one HTTP request or SMTP conversation
LEASE = timedelta(seconds=120)  # renewed after each attempt; much longer than one attempt and its wait
ATTEMPT = timedelta(seconds=30)  # the most one attempt should take: a request (TIMEOUT) or an SMTP conversation
SINKS_CACHE_SECONDS = 30.0
REQUIRED = ("event_id", "kind", "severity", "message")


class BadEvent(BadMessage):
    """An event that can never be delivered (not an object, a required field missing): logged, acknowledged."""


class Busy(RuntimeError):
    """Another instance holds the delivery's lease: raised so Pub/Sub redelivers the event later."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def delivery_id(event_id: str, sink: str) -> str:
    return f"{hashlib.sha256(event_id.encode()).hexdigest()[:32]}-{sink}"


class Notifier:
    def __init__(self, db: Any, secrets: Any, store: Any = None, bus: Any = None, dashboard: str | None = None,
                 backoff: float = 1.0, clock: Callable[[], datetime] = utcnow,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.db, self.secrets, self.store, self.bus = db, secrets, store, bus
        self.dashboard, self.backoff, self.clock, self.sleep = dashboard, backoff, clock, sleep
        self._cache: dict[tuple, tuple[float, list[Sink]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Notifier:
        from pitstop.config import Config
        from pitstop.gcp.bus import Bus
        from pitstop.gcp.secrets import Secrets
        from pitstop.gcp.store import Store

        config = Config.from_env()
        store = Store.from_env(config.project)
        return cls(store.db, Secrets.from_env(config.project), store, Bus(config.project),
                   dashboard=os.environ.get("PITSTOP_DASHBOARD_URL") or None,
                   backoff=float(os.environ.get("PITSTOP_NOTIFY_BACKOFF", "1")))

    # ------------------------------------------------------------ one event

    def on_event(self, event: Any) -> dict[str, str]:
        """Deliver `event` to every sink that wants it; returns sink -> delivered | failed | duplicate."""
        if not isinstance(event, dict):
            raise BadEvent(f"event is {type(event).__name__}, not a JSON object; nothing delivered")
        missing = [k for k in REQUIRED if not isinstance(event.get(k), str) or not event.get(k)]
        if missing:
            raise BadEvent(f"event {str(event.get('event_id', '?'))[:200]} lacks {', '.join(missing)}; "
                           f"nothing delivered")
        sinks = [s for s in self.sinks_for(event) if s.wants(event)]
        if not sinks:
            return {}
        with ThreadPoolExecutor(len(sinks)) as pool:
            futures = {s.name: pool.submit(self._deliver, s, event) for s in sinks}
        results, busy = {}, []
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Busy as err:
                busy.append(str(err))
        if busy:  # the others are done; this one comes back when its holder's lease has run out
            raise Busy("; ".join(busy))
        return results

    def sinks_for(self, event: dict[str, Any]) -> list[Sink]:
        """The project's sinks, then the service's in this environment (for a build: in every environment)."""
        key = (event.get("kind"), event.get("service"), event.get("environment"))
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and now - hit[0] < SINKS_CACHE_SECONDS:
                return hit[1]
        sinks = list(self._project_sinks())
        service, environment = event.get("service"), event.get("environment")
        if self.store is not None and service:
            if environment:
                spec = self.store.spec(service, environment)
                sinks += spec.notify if spec else []
            else:
                sinks += [s for spec in self.store.specs() if spec.service == service for s in spec.notify]
        unique = list({s.name: s for s in sinks}.values())  # one per name: the nearest (listed last) wins
        with self._lock:
            self._cache[key] = (now, unique)
        return unique

    def _project_sinks(self) -> list[Sink]:
        snap = self.db.collection("settings").document("notifications").get()
        if not snap.exists:
            return []
        try:
            return ProjectNotify.model_validate({"notify": snap.to_dict().get("notify", [])}).notify
        except ValueError as err:
            log("ERROR", f"settings/notifications is invalid and is skipped: {err}. Apply it again.")
            return []

    # ------------------------------------------------------------ one sink

    def _deliver(self, sink: Sink, event: dict[str, Any]) -> str:
        ref = self.db.collection("deliveries").document(delivery_id(event["event_id"], sink.name))
        owned = self._claim(ref, sink, event)  # the time of this instance's last write to the delivery
        if owned is None:
            return "duplicate"
        error, attempt = "", 0
        while attempt < ATTEMPTS:
            attempt += 1
            try:
                self.send(sink, event)
            except Exception as err:  # any failure of a sink is retried, then reported; never raised
                error = f"{type(err).__name__}: {err}"[:500]
                owned, lease_until = self._record(ref, owned, sink, event, {
                    "attempts": attempt, "last_error": error, "last_attempt_at": self.clock()})
                log("WARNING", f"notification {event['event_id']} to sink {sink.name} ({sink.type}) failed, "
                               f"attempt {attempt} of {ATTEMPTS}: {error}", sink=sink.name, event_id=event["event_id"])
                if attempt < ATTEMPTS:
                    self.sleep(self.backoff * 2 ** (attempt - 1))
                    if self.clock() + ATTEMPT > lease_until:  # another try could outlive the lease: stop here
                        error += f"; not retried: the lease ends at {lease_until:%H:%M:%S} UTC"
                        break
                continue
            self._record(ref, owned, sink, event, {"state": "delivered", "attempts": attempt,
                                                   "delivered_at": self.clock()})
            return "delivered"
        self._record(ref, owned, sink, event, {"state": "failed", "failed_at": self.clock(), "last_error": error})
        log("ERROR", f"notification {event['event_id']} to sink {sink.name} ({sink.type}) failed {attempt} times "
                     f"and is given up; last error: {error}. The other sinks were not held up; the event is "
                     f"acknowledged and recorded in the audit trail.", sink=sink.name, event_id=event["event_id"],
            service=event.get("service"), rollout_id=event.get("rollout_id"))
        self._audit_failure(sink, event, error, attempt)
        return "failed"

    def _claim(self, ref: Any, sink: Sink, event: dict[str, Any]) -> Any:
        """The claim's update time: this instance delivers. None: delivered or given up before. Busy: another
        instance holds the lease, or took the delivery over a moment ago."""
        from google.api_core import exceptions

        now = self.clock()
        claim = {"state": "sending", "event_id": event["event_id"], "sink": sink.name, "type": sink.type,
                 "event_type": event_type(event), "service": event.get("service"),
                 "release_id": event.get("release_id"), "rollout_id": event.get("rollout_id"),
                 "attempts": 0, "claimed_at": now, "lease_until": now + LEASE}
        try:
            return ref.create(claim).update_time
        except exceptions.AlreadyExists:
            pass
        snap = ref.get()
        doc = snap.to_dict() or {}
        if doc.get("state") in ("delivered", "failed"):
            log("INFO", f"notification {event['event_id']} to sink {sink.name} was already {doc['state']}; "
                        f"not sent again", sink=sink.name, event_id=event["event_id"])
            return None
        if doc.get("lease_until") and doc["lease_until"] > now:
            raise Busy(f"sink {sink.name}: another delivery of {event['event_id']} is under way until "
                       f"{doc['lease_until']}")
        try:  # the holder died: take its lease over, unless someone else just did
            return ref.update({**claim, "taken_over_at": now},
                              option=self.db.write_option(last_update_time=snap.update_time)).update_time
        except exceptions.FailedPrecondition:
            raise Busy(f"sink {sink.name}: another instance took over {event['event_id']}") from None

    def _record(self, ref: Any, owned: Any, sink: Sink, event: dict[str, Any],
                fields: dict[str, Any]) -> tuple[Any, datetime]:
        """Write `fields` and renew the lease, only if nobody wrote the delivery since this instance's last
        write (`owned`). Returns the new write time and lease end. Busy: another instance took the delivery
        over (this one's lease ran out); it is its now, and this instance writes and sends nothing more."""
        from google.api_core import exceptions

        lease_until = self.clock() + LEASE
        try:
            result = ref.update({**fields, "lease_until": lease_until},
                                option=self.db.write_option(last_update_time=owned))
        except exceptions.FailedPrecondition:
            log("WARNING", f"notification {event['event_id']} to sink {sink.name}: another instance took the "
                           f"delivery over after this one's lease ran out; it finishes it",
                sink=sink.name, event_id=event["event_id"])
            raise Busy(f"sink {sink.name}: {event['event_id']} was taken over by another instance") from None
        return result.update_time, lease_until

    def _audit_failure(self, sink: Sink, event: dict[str, Any], error: str, attempts: int) -> None:
        """A line in the audit trail of the rollout or release the event was about (a build has none)."""
        from pitstop.core.explain import render
        from pitstop.core.models import AuditEvent, Reason

        if self.store is None:
            return
        reason = Reason(code="notification_failed", values={
            "event": event_type(event), "sink": sink.name, "type": sink.type, "attempts": attempts, "error": error})
        input_id = f"notify-{delivery_id(event['event_id'], sink.name)}"[:500]

        def audit(state: str) -> AuditEvent:
            return AuditEvent(id=input_id, at=self.clock(), input="notification", actor="pitstop-notifier",
                              decision="notification_failed", reasons=[render(reason)], why=[reason],
                              state_before=state, state_after=state, detail={"event_id": event["event_id"]})
        try:
            if event.get("kind") == "rollout" and event.get("rollout_id"):
                from pitstop.core.machine import Decision

                self.store.apply(event["rollout_id"], input_id,
                                 lambda r: Decision(rollout=r, audit=audit(r.state)))
            elif event.get("kind") == "release" and event.get("release_id"):
                from pitstop.core.release import ReleaseDecision

                self.store.apply_release(event["release_id"], input_id, lambda rel: None if rel is None else
                                         ReleaseDecision(release=rel, audit=audit(rel.state)))
        except Exception as err:  # the delivery document and the log line still say it
            log("ERROR", f"could not record the failed notification {event['event_id']} in the audit trail: {err!r}",
                event_id=event["event_id"])

    # ------------------------------------------------------------ the senders

    def send(self, sink: Sink, event: dict[str, Any]) -> None:
        """One attempt; raises on any failure."""
        sink, credential = self._resolve(sink)
        getattr(self, f"_send_{sink.type}")(sink, credential, event)

    def _resolve(self, sink: Sink) -> tuple[Sink, str | None]:
        """The sink with what its secret holds: a credential, or (a JSON or YAML mapping) fields and a credential."""
        import yaml

        if not sink.secret:
            return sink, None
        raw = self.secrets.get(sink.secret)
        try:
            fields = yaml.safe_load(raw)
        except yaml.YAMLError:  # not YAML at all: then it is the credential itself
            fields = None
        if isinstance(fields, dict):
            credential = next((str(fields[k]) for k in ("key", "password", "token") if fields.get(k)), None)
            return sink.with_fields({str(k): v for k, v in fields.items()}), credential
        return sink, raw.strip()

    def _send_slack(self, sink: Sink, credential: str | None, event: dict[str, Any]) -> None:
        message = notify.slack_message(event, self.dashboard)
        if credential and credential.startswith("xox"):  # a bot token: chat.postMessage, threaded per release
            self._post_slack_bot(sink, credential, event, message)
            return
        from slack_sdk.webhook import WebhookClient

        url = credential if credential and credential.startswith("http") else sink.url
        if not url:
            raise ValueError(f"sink {sink.name}: its secret holds neither a webhook URL nor a bot token")
        reply = WebhookClient(url, timeout=int(TIMEOUT)).send_dict(message)
        if reply.status_code != 200:
            raise RuntimeError(f"Slack answered {reply.status_code}: {reply.body[:200]}")

    def _post_slack_bot(self, sink: Sink, token: str, event: dict[str, Any], message: dict[str, Any]) -> None:
        from slack_sdk import WebClient

        if not sink.channel:
            raise ValueError(f"sink {sink.name}: a bot token needs `channel`")
        client = WebClient(token=token, timeout=int(TIMEOUT),
                           base_url=os.environ.get("PITSTOP_SLACK_API", "https://slack.com/api/"))
        thread = self.db.collection("notify_threads").document(delivery_id(_thread_root(event), sink.name))
        ts, root = self._thread(thread)
        try:
            reply = client.chat_postMessage(channel=sink.channel, thread_ts=ts, **message)
        except Exception:
            if root:  # let the next attempt (or the next event) start the thread
                thread.delete()
            raise
        if root:
            thread.update({"ts": reply.get("ts"), "channel": reply.get("channel", sink.channel)})

    def _thread(self, ref: Any) -> tuple[str | None, bool]:
        """(ts to reply under, whether this message starts the thread). The first event of a release claims
        the thread document before it posts, so two events at once do not start two threads."""
        from google.api_core import exceptions

        try:
            ref.create({"ts": None, "at": self.clock()})
            return None, True
        except exceptions.AlreadyExists:
            pass
        for _ in range(50):  # the first message is being posted: wait for its ts (a few seconds at most)
            ts = (ref.get().to_dict() or {}).get("ts")
            if ts:
                return ts, False
            self.sleep(0.1)
        return None, False  # still no thread: better a message of its own than none

    def _send_chat(self, sink: Sink, credential: str | None, event: dict[str, Any]) -> None:
        import httpx

        url = credential if credential and credential.startswith("http") else sink.url
        if not url:
            raise ValueError(f"sink {sink.name}: its secret holds no Chat webhook URL")
        # One thread per release: the key goes in the message (the `threadKey` parameter is deprecated).
        message = {**notify.chat_message(event, self.dashboard), "thread": {"threadKey": _thread_root(event)}}
        reply = httpx.post(url, json=message, timeout=TIMEOUT,
                           params={"messageReplyOption": "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"})
        reply.raise_for_status()

    def _send_webhook(self, sink: Sink, credential: str | None, event: dict[str, Any]) -> None:
        import httpx

        if not sink.url:
            raise ValueError(f"sink {sink.name}: no `url` (in the spec or in its secret)")
        if not credential:
            raise ValueError(f"sink {sink.name}: its secret holds no signing key")
        body = json.dumps(notify.webhook_body(event, self.dashboard), default=str).encode()
        timestamp = str(int(time.time()))
        reply = httpx.post(sink.url, content=body, timeout=TIMEOUT, headers={
            "Content-Type": "application/json", "User-Agent": "pitstop-notifier",
            "X-Pitstop-Event-Id": event["event_id"], "X-Pitstop-Timestamp": timestamp,
            "X-Pitstop-Signature": notify.signature(credential, timestamp, body)})
        reply.raise_for_status()

    def _send_email(self, sink: Sink, credential: str | None, event: dict[str, Any]) -> None:
        import smtplib
        import ssl

        if not sink.smtp_host:
            raise ValueError(f"sink {sink.name}: no `smtp_host` (in the spec or in its secret)")
        message = notify.email_message(event, sink.from_ or "", sink.to, self.dashboard)
        port = sink.smtp_port or (465 if sink.ssl else 587 if sink.starttls else 25)
        tls = ssl.create_default_context()  # verifies the server's certificate and host name
        if sink.ssl:
            smtp = smtplib.SMTP_SSL(sink.smtp_host, port, timeout=TIMEOUT, context=tls)
        else:
            smtp = smtplib.SMTP(sink.smtp_host, port, timeout=TIMEOUT)
        with smtp as conn:
            if sink.starttls and not sink.ssl:
                conn.starttls(context=tls)
            if credential:
                conn.login(sink.username or sink.from_ or "", credential)
            conn.send_message(message)

    def _send_pubsub(self, sink: Sink, credential: str | None, event: dict[str, Any]) -> None:
        from pitstop.gcp.bus import Bus

        topic = str(sink.topic)
        bus = self.bus
        if topic.startswith("projects/"):  # another project's topic
            _, project, _, topic = topic.split("/", 3)
            bus = Bus(project, self.bus.publisher if self.bus else None)
        bus.publish(topic, notify.webhook_body(event, self.dashboard), event_id=event["event_id"])


def _thread_root(event: dict[str, Any]) -> str:
    """What a conversation is about: the release, else the rollout, else the build."""
    return str(event.get("release_id") or event.get("rollout_id") or f"build-{event.get('build_id')}")


def apply_project_sinks(db: Any, doc: Any, actor: str, now: datetime) -> ProjectNotify:
    """Validate and store the project-wide sinks (`settings/notifications`): a file whose only top-level key
    is `notify:`. Raises SpecError naming each bad field; nothing is stored then."""
    from pydantic import ValidationError

    from pitstop.core.spec import SpecError, validation_lines

    if not isinstance(doc, dict) or set(doc) != {"notify"}:
        raise SpecError("project notifications: expected a mapping with only `notify:` (a list of sinks)")
    try:
        sinks = ProjectNotify.model_validate(doc)
    except ValidationError as err:
        raise SpecError("project notifications: invalid\n" + "\n".join(validation_lines(err))) from None
    db.collection("settings").document("notifications").set(
        {**sinks.model_dump(mode="json", exclude_none=True), "applied_by": actor, "applied_at": now})
    return sinks
