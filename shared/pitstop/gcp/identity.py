"""Who sent it: verify Google-signed ID tokens, and mint pitstop's own.

Pub/Sub does not say who published a message, so every operator command and
every external health sample carries an ID token (a JWT) and the function
checks it here: signature against the issuer's certificates, audience,
expiry (with a little clock skew), issuer, and a verified `email` claim. The
actor of the audit is that email, never a field of the payload.

The same code runs on GCP and locally; only endpoints differ. On GCP the
certificates are Google's (`GOOGLE_CERTS`) and the issuers Google's; the local
stack runs its own issuer (local/issuer.py) and points the verifier at it:

    PITSTOP_AUDIENCE       audiences a token may carry, comma-separated; the first
                           is what pitstop's own tokens and the CLI ask for
                           (default `pitstop:{project}`)
    PITSTOP_TOKEN_ISSUERS  trusted `iss` values, comma-separated (default Google's)
    PITSTOP_TOKEN_CERTS    the issuer's x509 certificates, `{kid: PEM}` JSON
                           (default Google's)

google-auth is imported inside functions: this module is imported by every
Cloud Function at cold start, and most invocations never verify a token.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
GOOGLE_CERTS = "https://www.googleapis.com/oauth2/v1/certs"
MAX_TOKEN_BYTES = 8192  # Google's ID tokens are about 1 KiB; anything this big is not one
MAX_CLAIM_CHARS = 254  # longest email address; a forged claim is cut to this in the audit
_BEARER = re.compile(r"^bearer(\s+|$)", re.IGNORECASE)
NO_TOKEN = "no ID token: send one in the id_token attribute / X-Pitstop-Token header"


@dataclass(frozen=True)
class Identity:
    """A verified sender."""

    email: str  # lower-cased
    subject: str
    issuer: str
    audience: str
    expires_at: datetime
    hosted_domain: str | None = None  # `hd`: the Google Workspace domain that manages the account, if any


class Unverified(Exception):
    """The token proves nothing; `reason` says why, as a sentence for a person.

    `claimed` is the email the token claims, read WITHOUT verification, for the
    audit's "claimed identity, unverified" (None when the token cannot be decoded).
    """

    def __init__(self, reason: str, claimed: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.claimed = claimed


class CertsUnavailable(RuntimeError):
    """The issuer's certificates could not be fetched: nothing is known about the token yet.

    Not the sender's fault, so not `Unverified`: let the invocation fail and be retried.
    """


def _list(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def audiences_from_env(project: str) -> tuple[str, ...]:
    return _list(os.environ.get("PITSTOP_AUDIENCE")) or (f"pitstop:{project}",)


def audience_from_env(project: str) -> str:
    """The audience pitstop's own tokens and the CLI ask for: the first configured one."""
    return audiences_from_env(project)[0]


def _bare(token: str | None) -> str:
    """The token without a leading "Bearer " (as an Authorization header carries it)."""
    return _BEARER.sub("", (token or "").strip())


def _unverified_payload(token: str) -> Mapping[str, Any] | None:
    from google.auth import jwt

    try:
        return jwt.decode(token, verify=False)
    except Exception:  # anything at all: this is only a best-effort read of a claim
        return None


def claimed_email(token: str | None) -> str | None:
    """The `email` the token claims, decoded without verification; None if there is none. Never raises."""
    try:
        token = _bare(token)
        if not token or len(token) > MAX_TOKEN_BYTES:
            return None
        email = (_unverified_payload(token) or {}).get("email")
        return email[:MAX_CLAIM_CHARS] if isinstance(email, str) and email else None
    except Exception:
        return None


def _shown(value: Any, limit: int = 40) -> str:
    """An unverified header value, cut short: anyone can put anything there, and reasons reach the audit."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _when(seconds: float) -> str:
    return _utc(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_next_to(moment: float, now: float) -> str:
    """`now` as a time only when on the same day as `moment`, which the sentence already dates."""
    return _utc(now).strftime("%H:%M:%SZ") if _utc(now).date() == _utc(moment).date() else _when(now)


class Verifier:
    """Checks ID tokens against one issuer's certificates.

    Unlike `google.oauth2.id_token.verify_token`, which fetches the certificates
    on every call, it keeps them `cache_seconds` and refetches early only for a
    token signed with a key it does not know (the issuer rotated its keys), at
    most once per `refetch_cooldown` seconds so forged tokens cannot make it
    hammer the issuer. Thread-safe.
    """

    def __init__(
        self,
        audiences: Sequence[str],
        issuers: Sequence[str] = GOOGLE_ISSUERS,
        certs_url: str = GOOGLE_CERTS,
        clock_skew: int = 10,
        cache_seconds: int = 300,
        *,
        refetch_cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,  # for the certificate cache only
    ) -> None:
        if isinstance(audiences, str):
            audiences = [audiences]
        self.audiences = tuple(a for a in audiences if a)
        self.issuers = tuple(i for i in issuers if i)
        if not self.audiences:
            raise ValueError("Verifier needs at least one audience (PITSTOP_AUDIENCE)")
        if not self.issuers:
            raise ValueError("Verifier needs at least one trusted issuer (PITSTOP_TOKEN_ISSUERS)")
        self.certs_url = certs_url
        self.clock_skew = clock_skew
        self.cache_seconds = cache_seconds
        self.refetch_cooldown = refetch_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._certs: dict[str, str] = {}
        self._fetched_at: float | None = None
        self._request: Any = None

    @classmethod
    def from_env(cls, project: str) -> Verifier:
        return cls(
            audiences=audiences_from_env(project),
            issuers=_list(os.environ.get("PITSTOP_TOKEN_ISSUERS")) or GOOGLE_ISSUERS,
            certs_url=os.environ.get("PITSTOP_TOKEN_CERTS") or GOOGLE_CERTS,
        )

    # --- certificates -------------------------------------------------------

    def _fetch(self) -> None:
        import google.auth.transport.requests
        from google.auth import exceptions

        if self._request is None:
            self._request = google.auth.transport.requests.Request()
        try:
            response = self._request(self.certs_url, method="GET", timeout=10)
        except exceptions.TransportError as e:
            raise CertsUnavailable(f"could not fetch the token certificates from {self.certs_url}: {e}") from e
        try:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            certs = json.loads(response.data)
            if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
                raise ValueError("not a JSON object of key id -> PEM certificate")
        except ValueError as e:
            raise CertsUnavailable(f"the token certificates at {self.certs_url} are unusable ({e}); "
                                   "PITSTOP_TOKEN_CERTS must serve x509 certificates as {kid: PEM} JSON") from e
        self._certs = certs
        self._fetched_at = self._clock()

    def _certs_for(self, kid: Any) -> dict[str, str]:
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self.cache_seconds:
                self._fetch()
            elif kid and kid not in self._certs and now - self._fetched_at >= self.refetch_cooldown:
                self._fetch()  # the issuer may have rotated its keys
            return self._certs

    # --- verification -------------------------------------------------------

    def verify(self, token: str | None, bound: str | None = None) -> Identity:
        """The verified sender of `token` (with or without "Bearer "), or `Unverified` saying why not.

        With `bound` (a digest of the message), a token whose audience is `AUDIENCE#bound` is accepted too:
        it was minted for this message alone, so replaying it with another message proves nothing.
        Raises `CertsUnavailable` when the certificates cannot be fetched.
        """
        from google.auth import jwt

        token = _bare(token)
        if not token:
            raise Unverified(NO_TOKEN)
        if len(token) > MAX_TOKEN_BYTES:
            raise Unverified(f"the ID token is {len(token)} bytes, over the {MAX_TOKEN_BYTES}-byte limit: "
                             "it is not a Google ID token")
        claimed = claimed_email(token)
        try:
            header = jwt.decode_header(token)
        except Exception:
            raise Unverified("the ID token is not a JWT (three base64url parts, header.payload.signature): "
                             "send the token exactly as printed by `gcloud auth print-identity-token`", claimed)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unverified("the ID token's header is malformed (its kid is not a string)", claimed)
        certs = self._certs_for(kid)
        if kid and kid not in certs:
            raise Unverified(f"the token was signed with key '{_shown(kid)}', which {self.certs_url} does not list: "
                             "it was not issued by a trusted issuer", claimed)
        try:
            audiences = list(self.audiences) + ([f"{a}#{bound}" for a in self.audiences] if bound else [])
            payload = jwt.decode(token, certs=certs, audience=audiences, clock_skew_in_seconds=self.clock_skew)
        except (ValueError, TypeError, KeyError) as e:  # google-auth's own errors are ValueErrors; the
            # others come from claims of the wrong type, which only the key's holder could have signed
            raise Unverified(self._reason(e, header, _unverified_payload(token) or {}), claimed) from None
        return self._identity(payload, claimed)

    def _reason(self, error: Exception, header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
        """google-auth's error as a sentence; the details come from the (unverified) token."""
        message = str(error).lower()
        now = time.time()
        if "unsupported" in message:  # "Unsupported signature algorithm X"
            alg = header.get("alg")
            signed = f"is signed with algorithm '{_shown(alg)}'" if alg else "names no signature algorithm"
            return f"the token {signed}; Google ID tokens use RS256"
        if "signature" in message or "certificate" in message:
            return f"the token's signature does not verify against {self.certs_url}"
        if "expired" in message and isinstance(payload.get("exp"), (int, float)):
            exp = payload["exp"]
            return f"the ID token expired at {_when(exp)} (now {_now_next_to(exp, now)}); mint a new one"
        if "too early" in message and isinstance(payload.get("iat"), (int, float)):
            iat = payload["iat"]
            return (f"the ID token was issued in the future, at {_when(iat)} (now {_now_next_to(iat, now)}): "
                    "check the clock of the machine that minted it")
        if "audience" in message:
            expected = ", ".join(f"'{a}'" for a in self.audiences)
            return (f"the token's audience '{payload.get('aud')}' is not this pitstop deployment "
                    f"(expected {expected})")
        if "claim" in message:
            return f"the ID token lacks a required claim ({error}); mint it with gcloud or the metadata server"
        return f"the ID token is malformed ({error})"

    def _identity(self, payload: Mapping[str, Any], claimed: str | None) -> Identity:
        issuer = payload.get("iss")
        if issuer not in self.issuers:
            trusted = ", ".join(f"'{i}'" for i in self.issuers)
            raise Unverified(f"issuer '{issuer}' is not trusted (trusted: {trusted})", claimed)
        email = payload.get("email")
        if not isinstance(email, str) or not email:
            raise Unverified("the token has no email claim: mint it with --include-email / format=full", claimed)
        verified = payload.get("email_verified", True)
        if verified is False or (isinstance(verified, str) and verified.lower() == "false"):
            raise Unverified(f"email not verified: the issuer does not vouch for '{email}'", claimed)
        return Identity(
            email=email.lower(),
            subject=str(payload.get("sub", "")),
            issuer=issuer,
            audience=payload["aud"],
            expires_at=_utc(payload["exp"]),
            hosted_domain=payload["hd"].lower() if isinstance(payload.get("hd"), str) else None,
        )


class TokenUnavailable(RuntimeError):
    """pitstop could not get its own ID token."""


class TokenSource:
    """pitstop's own ID token for `audience` (the sampler signs the health samples it publishes).

    From Application Default Credentials: a service-account key in
    GOOGLE_APPLICATION_CREDENTIALS, or the metadata server (on GCP; locally the
    stack's issuer, through GCE_METADATA_HOST, which google-auth reads when it is
    first imported). Kept until `refresh_before` seconds before it expires. Thread-safe.
    """

    def __init__(self, audience: str, refresh_before: int = 300) -> None:
        self.audience = audience
        self.refresh_before = refresh_before
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self._request: Any = None

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.time() >= self._expires - self.refresh_before:
                self._token, self._expires = self._fetch()
            return self._token

    def _fetch(self) -> tuple[str, float]:
        import google.auth.transport.requests
        import google.oauth2.id_token
        from google.auth import exceptions

        if self._request is None:
            self._request = google.auth.transport.requests.Request()
        try:
            token = google.oauth2.id_token.fetch_id_token(self._request, self.audience)
        except exceptions.GoogleAuthError as e:
            raise TokenUnavailable(
                f"could not get pitstop's own ID token for audience '{self.audience}': {e}. On GCP, run the "
                "function as a service account; locally, point GCE_METADATA_HOST at the stack's issuer") from e
        exp = (_unverified_payload(token) or {}).get("exp")
        if not isinstance(exp, (int, float)):
            raise TokenUnavailable(f"the ID token minted for '{self.audience}' has no usable exp claim")
        return token, float(exp)
