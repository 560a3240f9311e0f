"""The whole of pitstop on one machine, same code paths as on GCP (DESIGN §6).

Firestore and Pub/Sub emulators, the functions under functions-framework fed
by push subscriptions, the local Cloud Run with its router, the local Cloud
Monitoring, and a ticker standing in for Cloud Scheduler. Only endpoints
differ from production; `env` is what a shell must export to reach them.

Time is scaled, not made kinder: a tick every `tick_interval` seconds stands
for Cloud Scheduler's minute, and the local Monitoring hides what was served
less than `health_lag` seconds ago (GCP: up to 180 s), with the functions'
sampler allowing for the same lag (PITSTOP_HEALTH_LAG). The defaults, 1 s and
3 s, keep GCP's ratio of three ticks of lag.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

from pitstop.local.analysis import start_analysis
from pitstop.local.cloudbuild import register_trigger, start_cloudbuild
from pitstop.local.emulators import Emulators, check_prerequisites, start_emulators
from pitstop.local.functions import FunctionProcess, start_functions
from pitstop.local.issuer import start_issuer
from pitstop.local.logexport import LogExport
from pitstop.surfaces.credentials import local_identity
from pitstop.surfaces.proxy import start_proxy
from pitstop.local.requestlog import RequestLog
from pitstop.local.sinks import start_sinks
from pitstop.local.smtp import start_smtp
from pitstop.local.wiring import ROUTES, publish, wire

T = TypeVar("T")
FUNCTIONS_SOURCE = Path(__file__).resolve().parents[3] / "functions" / "main.py"
REGION = "us-central1"
DEFAULT_HEALTH_LAG = 3.0  # GCP's 180 s scaled like the ticks (1 s for 60 s)


@dataclass
class Stack:
    state_dir: Path
    project: str = "pitstop-local"
    tick_interval: float = 1.0  # seconds between ticks; Cloud Scheduler's is 60
    health_lag: float = DEFAULT_HEALTH_LAG  # Monitoring's ingestion lag, seconds; GCP's is up to 180
    # The request-log drain's cadence (Cloud Tasks every 5 s on GCP) and the sink's sample(insertId, F).
    drain_interval: float = 0.5
    log_fraction: float = 0.1
    log_export: Any = None  # the local sink: router -> pitstop-request-logs (local/logexport.py)
    emulators: Emulators | None = None
    functions: dict[str, FunctionProcess] = field(default_factory=dict)
    request_log: RequestLog = field(default_factory=RequestLog)
    cloud_run: Any = None
    monitoring: Any = None
    issuer: Any = None  # Google's ID-token issuer and the metadata server's identity endpoint
    cloud_build: Any = None
    analysis: Any = None  # Artifact Analysis (Grafeas occurrences of the images `dev ship` built)
    sinks: Any = None  # Slack, Chat and webhook receivers (local/sinks.py): every POST they got
    smtp: Any = None  # an SMTP relay (local/smtp.py): every email it got
    dashboard: Any = None  # the dashboard proxy (surfaces/proxy.py) for the person at this laptop
    dashboard_url: str = ""  # …/dashboard: where to open it, and what notifications link to
    scan_delay: float = 1.0  # seconds before a new image's scan has finished (GCP: a minute or two)
    # Who the person at this laptop is (PITSTOP_IDENTITY, else `git config user.email`): the project admin.
    identity: str = ""
    _exit: ExitStack = field(default_factory=ExitStack)
    _stop_ticks: threading.Event = field(default_factory=threading.Event)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Stack:
        from pitstop.local.cloudrun import LocalCloudRun
        from pitstop.local.monitoring import start_monitoring_server

        check_prerequisites()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.emulators is None:  # tests may lend theirs
                self.emulators = self._exit.enter_context(start_emulators(self.project))
            self.project = self.emulators.project
            # This process's own clients (publisher, CLI) must reach the emulators too.
            os.environ.update(self.emulators.env)
            self.cloud_run = LocalCloudRun(self.state_dir, request_log=self.request_log)
            self.cloud_run.start()
            self._exit.callback(self.cloud_run.stop)
            self.monitoring = start_monitoring_server(self.request_log, "127.0.0.1", 0, lag=self.health_lag)
            self._exit.callback(self.monitoring.stop, 0)
            self.issuer = start_issuer(self.state_dir, default_identity=self.sampler_identity, project=self.project)
            self._exit.callback(self.issuer.stop)
            self.cloud_build = start_cloudbuild(self.state_dir, self.project)
            self._exit.callback(self.cloud_build.stop)
            register_trigger(self.state_dir, "build-web", "web")
            self.analysis = start_analysis(self.state_dir, scan_delay=self.scan_delay)
            self._exit.callback(self.analysis.stop)
            self.sinks = start_sinks(self.state_dir)
            self._exit.callback(self.sinks.stop)
            self.smtp = start_smtp(self.state_dir)
            self._exit.callback(self.smtp.stop)
            self._write_secrets()
            self.identity = self.identity or local_identity()
            # The dashboard, as the person at this laptop sees it through `pitstop dashboard`'s proxy; its URL is
            # known before the functions start, so their notifications link to it. It forwards once the api runs.
            self.dashboard, url = start_proxy("http://127.0.0.1:1", headers=lambda: {"X-Pitstop-Token": self.token()})
            self._exit.callback(self.dashboard.shutdown)
            self.dashboard_url = url.rstrip("/")
            self.functions = start_functions(list(ROUTES.values()) + ["api", "on_drain"], FUNCTIONS_SOURCE,
                                             self.function_env, log_dir=self.state_dir / "logs")
            self._exit.callback(_stop_together, list(self.functions.values()))
            self.dashboard.RequestHandlerClass.api = self.api_url
            wire(self.project, {topic: self.functions[target].url for topic, target in ROUTES.items()})
            self.log_export = LogExport(self.project, self.log_fraction)
            self._exit.callback(self.log_export.stop)
            self.cloud_run.router.log_export = self.log_export
            if self.tick_interval > 0:
                ticker = threading.Thread(target=self._tick_forever, name="ticker", daemon=True)
                ticker.start()
                self._exit.callback(self._stop_ticks.set)
            if self.drain_interval > 0:
                threading.Thread(target=self._drain_forever, name="drain", daemon=True).start()
                self._exit.callback(self._stop_ticks.set)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop_ticks.set()
        self._exit.close()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ endpoints

    @property
    def run_endpoint(self) -> str:
        return self.cloud_run.url

    @property
    def monitoring_endpoint(self) -> str:
        return f"127.0.0.1:{self.monitoring.bound_port}"

    @property
    def sampler_identity(self) -> str:
        """The functions' own service account (what the metadata stand-in mints tokens for)."""
        return f"pitstop-functions@{self.project}.iam.gserviceaccount.com"

    @property
    def api_url(self) -> str:
        return self.functions["api"].url.rstrip("/")

    @property
    def env(self) -> dict[str, str]:
        """What a shell (or the CLI) exports to talk to this stack."""
        env = {**self.emulators.env, "PITSTOP_RUN_ENDPOINT": self.run_endpoint,
               "PITSTOP_MONITORING_ENDPOINT": self.monitoring_endpoint, "PITSTOP_BUILD_ENDPOINT": self.cloud_build.url,
               "PITSTOP_ANALYSIS_ENDPOINT": self.analysis.url,
               "PITSTOP_AUDIENCE": f"pitstop:{self.project}", "PITSTOP_LOCAL_ISSUER": self.issuer.url}
        if "api" in self.functions:
            env["PITSTOP_API"] = self.api_url
        return env

    @property
    def function_env(self) -> dict[str, str]:
        """The functions trust the local issuer exactly as on GCP they trust Google: same code, other endpoints.
        google-auth's metadata server (GCE_METADATA_HOST) is the issuer's stand-in, so `fetch_id_token` mints
        the functions' own tokens as on Cloud Functions."""
        return {**{k: v for k, v in self.env.items() if k not in ("PITSTOP_API", "PITSTOP_LOCAL_ISSUER")},
                "PITSTOP_HEALTH_LAG": str(float(self.health_lag)), "PITSTOP_LOG_FRACTION": str(self.log_fraction),
                "PITSTOP_TOKEN_CERTS": self.issuer.certs_url, "PITSTOP_TOKEN_ISSUERS": self.issuer.url,
                "GCE_METADATA_HOST": self.issuer.metadata_host, "GCE_METADATA_IP": self.issuer.metadata_host,
                "PITSTOP_SAMPLER_IDENTITY": self.sampler_identity, "PITSTOP_ADMINS": f"user:{self.identity}",
                "PITSTOP_SECRETS_FILE": str(self.secrets_file), "PITSTOP_DASHBOARD_URL": self.dashboard_url,
                "PITSTOP_SLACK_API": f"{self.sinks.url}/slack-api/",
                "PITSTOP_NOTIFY_BACKOFF": os.environ.get("PITSTOP_NOTIFY_BACKOFF", "0.05")}

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.yaml"

    def _write_secrets(self) -> None:
        """Secret Manager's stand-in: the demo pipeline's sinks (examples/web/pipeline.yaml) point here."""
        import yaml

        url = self.sinks.url
        secrets = {
            "demo-slack-hook": f"{url}/slack/demo",
            "demo-chat-hook": f"{url}/chat/demo?key=local&token=local",
            "demo-webhook": {"url": f"{url}/webhook/demo", "key": "local-signing-key"},
            "demo-smtp": {"smtp_host": self.smtp.host, "smtp_port": self.smtp.port, "starttls": False},
        }
        self.secrets_file.write_text("# written by the local stack: secret name -> value (gcp/secrets.py)\n"
                                     + yaml.safe_dump(secrets, sort_keys=False))

    def token(self, email: str | None = None, **kwargs: Any) -> str:
        """An ID token of `email` (default: the person at this laptop) for this deployment."""
        return self.issuer.mint(email or self.identity, f"pitstop:{self.project}", **kwargs)

    def command(self, payload: dict[str, Any], email: str | None = None) -> str:
        """Publish an operator command signed by `email` (default: the person at this laptop)."""
        return self.publish("pitstop-commands", payload, id_token=self.token(email))

    def publish(self, topic: str, payload: dict[str, Any] | bytes, **attributes: str) -> str:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return publish(self.project, topic, data, **attributes)

    # ------------------------------------------------------------ Cloud Scheduler stand-in

    def _tick_forever(self) -> None:
        while not self._stop_ticks.wait(self.tick_interval):
            try:
                self.publish("pitstop-ticks", {"at": datetime.now(timezone.utc).isoformat()})
            except Exception:  # the emulator is going away at shutdown; the next tick retries
                time.sleep(self.tick_interval)


    # ------------------------------------------------------------ Cloud Tasks stand-in (the drain chain)

    def _drain_forever(self) -> None:
        """Call on_drain every `drain_interval`, as the tick-armed Cloud Tasks chain does every 5 s on GCP (here
        always: an idle drain pulls nothing and reads nothing)."""
        import httpx

        url = self.functions["on_drain"].url
        with httpx.Client(timeout=30) as client:
            while not self._stop_ticks.wait(self.drain_interval):
                try:
                    client.post(url, json={})
                except httpx.HTTPError:  # the function is going away at shutdown; the next call retries
                    pass


def _stop_together(processes: list[FunctionProcess]) -> None:
    """Stop the functions at once: each takes about half a second to end its process tree."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(len(processes), 1)) as pool:
        list(pool.map(lambda process: process.stop(), processes))


def wait_for(what: str, predicate: Callable[[], T], timeout: float = 60, every: float = 0.2) -> T:
    """Poll until `predicate` returns something truthy; say what never happened otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
