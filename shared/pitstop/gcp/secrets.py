"""Secret Manager: the credentials of notification sinks (webhook URLs, SMTP passwords, bot tokens).

On GCP a secret is read with `access_secret_version` (a short name means a secret in pitstop's own project,
version `latest`). Locally, with no Google account, the same names are looked up first in the environment
(`PITSTOP_SECRET_SLACK_HOOK` for `slack-hook`) and then in a YAML file of name -> value
(`PITSTOP_SECRETS_FILE`, which the local stack writes). Values are cached per instance for a short time, so
a rotated secret is picked up within a minute.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Callable

CACHE_SECONDS = 60.0


class SecretMissing(LookupError):
    """A secret that does not exist or cannot be read; says which and where it was looked for."""


def env_name(name: str) -> str:
    """`slack-hook` -> `PITSTOP_SECRET_SLACK_HOOK` (a full resource name: its secret id)."""
    short = name.split("/secrets/")[-1].split("/")[0]
    return "PITSTOP_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", short).upper()


class Secrets:
    def __init__(self, project: str, read: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.project = project
        self._read = read or self._secret_manager
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._client: Any = None

    @classmethod
    def from_env(cls, project: str) -> Secrets:
        """Secret Manager, unless the environment points at local secrets (PITSTOP_SECRETS_FILE)."""
        path = os.environ.get("PITSTOP_SECRETS_FILE")
        return cls(project, read=_local_reader(path) if path else None)

    def get(self, name: str) -> str:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(name)
            if hit and now - hit[0] < CACHE_SECONDS:
                return hit[1]
        value = os.environ.get(env_name(name))
        if value is None:
            value = self._read(name)
        with self._lock:
            self._cache[name] = (now, value)
        return value

    def resource(self, name: str) -> str:
        if name.startswith("projects/"):
            return name if "/versions/" in name else f"{name}/versions/latest"
        return f"projects/{self.project}/secrets/{name}/versions/latest"

    def _secret_manager(self, name: str) -> str:
        from google.api_core import exceptions

        if self._client is None:
            from google.cloud import secretmanager  # late: only the notifier reads secrets

            self._client = secretmanager.SecretManagerServiceClient()
        resource = self.resource(name)
        try:
            reply = self._client.access_secret_version(request={"name": resource}, timeout=10)
        except (exceptions.NotFound, exceptions.PermissionDenied) as err:
            raise SecretMissing(f"secret {resource} cannot be read ({type(err).__name__}): create it, or grant the "
                                f"functions' service account roles/secretmanager.secretAccessor on it") from None
        return reply.payload.data.decode()


def _local_reader(path: str) -> Callable[[str], str]:
    def read(name: str) -> str:
        import yaml

        try:
            with open(path) as f:
                values = yaml.safe_load(f) or {}
        except OSError as err:
            raise SecretMissing(f"secret {name}: the local secrets file {path} cannot be read ({err})") from None
        short = name.split("/secrets/")[-1].split("/")[0]
        for key in (name, short):
            if key in values:
                value = values[key]
                return value if isinstance(value, str) else _dump(value)
        raise SecretMissing(f"secret {name} is not in the local secrets file {path} nor in ${env_name(name)}")
    return read


def _dump(value: Any) -> str:
    import json

    return json.dumps(value)
