"""How the CLI reaches pitstop as a verified person: the HTTP API when PITSTOP_API names it, otherwise
signed commands on `pitstop-commands`. Either way the request carries the person's Google-signed ID
token (surfaces/credentials.py finds one) and the function takes the actor from it, never from us.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

PUBSUB_ATTRIBUTE_LIMIT = 1024  # bytes per attribute value; a longer token travels in the payload


class ApiError(RuntimeError):
    """The API refused or failed: its stable code and its sentence."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Caller:
    """The audience pitstop expects (`PITSTOP_AUDIENCE`, default `pitstop:PROJECT`) and the API's URL, if any."""

    audience: str
    api: str | None = None

    @classmethod
    def from_env(cls, project: str) -> Caller:
        audiences = [a.strip() for a in os.environ.get("PITSTOP_AUDIENCE", "").split(",") if a.strip()]
        return cls(audiences[0] if audiences else f"pitstop:{project}", os.environ.get("PITSTOP_API") or None)

    def token(self, audience: str | None = None) -> str:
        from pitstop.surfaces.credentials import id_token

        return id_token(audience or self.audience)[0]

    # ------------------------------------------------------------ HTTP API

    def call(self, method: str, path: str, body: Any = None, content: str | None = None,
             content_type: str | None = None) -> Any:
        import httpx

        headers = self.headers()
        if content_type:
            headers["Content-Type"] = content_type
        url = self.api.rstrip("/") + path
        try:
            response = httpx.request(method, url, json=body, content=content, headers=headers, timeout=60)
        except httpx.HTTPError as err:
            raise ApiError("unreachable", f"could not reach the pitstop API at {url}: {err}", 0) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            error = (data or {}).get("error") or {}
            raise ApiError(error.get("code", "http_error"),
                           error.get("message") or f"HTTP {response.status_code}: {response.text[:300]}",
                           response.status_code)
        return data

    def headers(self) -> dict[str, str]:
        """The person's tokens as every request to the API carries them (the CLI's, `pitstop dashboard`'s)."""
        token = self.token()
        # Cloud Run's IAM check reads Authorization (audience: the API's URL) and strips the token's signature
        # before the function sees it, so pitstop's own check reads X-Pitstop-Token (audience: pitstop).
        return {"X-Pitstop-Token": token, "Authorization": f"Bearer {self._iam_token(token)}"}

    def _iam_token(self, token: str) -> str:
        """For Cloud Run's IAM check: a token for the API's URL (the local stack has no such check)."""
        try:
            return self.token(self.api.rstrip("/"))
        except Exception:
            return token  # a user account's gcloud token serves both (its audience is gcloud's own)

    # ------------------------------------------------------------ Pub/Sub

    def publish(self, project: str, payload: dict[str, Any]) -> str:
        from pitstop.gcp.bus import Bus

        token = self.token()
        if len(token.encode()) <= PUBSUB_ATTRIBUTE_LIMIT:
            return Bus(project).publish("pitstop-commands", payload, id_token=token)
        return Bus(project).publish("pitstop-commands", {**payload, "id_token": token})
