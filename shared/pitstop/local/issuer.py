"""A local Google ID-token issuer, and the metadata server's identity endpoints.

On GCP, Google signs ID tokens and publishes its certificates; functions get
their own tokens from the metadata server and people from `gcloud auth
print-identity-token`. Locally this server does all three with its own key,
and the functions' verifier (gcp/identity.py) is pointed at its certificates:
the same verification code runs in both worlds, only endpoints differ.

    server = start_issuer(state_dir)
    server.url            # http://127.0.0.1:PORT, also the `iss` of its tokens
    server.certs_url      # PITSTOP_TOKEN_CERTS for the verifier
    server.metadata_host  # GCE_METADATA_HOST and GCE_METADATA_IP for google-auth
    server.mint("ana@example.com", "pitstop:acme")
    server.stop()

Endpoints:
- `GET /oauth2/v1/certs`: `{kid: PEM x509 certificate}`, as Google's.
- A metadata-server subset, for `google.oauth2.id_token.fetch_id_token` and
  google-auth's Compute Engine credentials (requests must carry
  `Metadata-Flavor: Google`, answers carry it too; `GET /` answers the
  presence check): `instance/service-accounts/default/{identity,email,token}`,
  `instance/service-accounts/default/?recursive=true`, `project/project-id`.
  `identity` tokens are for `default_identity`; as on GCE, only
  `format=full` puts the email in them.
- `POST /token` with `{"email", "audience", "lifetime"}` answers
  `{"id_token": ...}`: the local `gcloud auth print-identity-token`. Locally
  anyone may be anyone, as `gcloud auth login` lets one sign in as any account
  one holds; what the local stack proves is that every input carries a token
  and that the verifier and the access rules act on it, not who typed it.

The key (RSA 2048) and its self-signed certificate live in
`state_dir/issuer/key.pem`, so every process sharing the state directory (the
stack, the CLI, tests) mints tokens the same verifier accepts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections import deque
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from pitstop.local.googleapi import LocalServer

log = logging.getLogger(__name__)

DEFAULT_IDENTITY = "pitstop-functions@pitstop-local.iam.gserviceaccount.com"
DEFAULT_PROJECT = "pitstop-local"
MAX_LIFETIME = 24 * 3600
CERTS_PATH = "/oauth2/v1/certs"
_SERVICE_ACCOUNT = "/computeMetadata/v1/instance/service-accounts/"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\n?", re.S)


def _subject(email: str) -> str:
    """A stable 21-digit `sub` for an email, shaped like Google's numeric ids."""
    digest = int(hashlib.sha256(email.lower().encode()).hexdigest(), 16)
    return str(10**20 + digest % 10**20)


class Issuer:
    """The local issuer's key: loads `state_dir/issuer/key.pem`, creating it on first use."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "issuer" / "key.pem"
        blocks = {m.group(1).decode(): m.group(0) for m in _PEM_BLOCK.finditer(self._load_or_create())}
        self._key_pem = blocks["PRIVATE KEY"]
        self.cert_pem = blocks["CERTIFICATE"].decode()
        der = x509.load_pem_x509_certificate(blocks["CERTIFICATE"]).public_bytes(serialization.Encoding.DER)
        self.kid = hashlib.sha256(der).hexdigest()[:16]
        self._signer = crypt.RSASigner.from_string(self._key_pem, key_id=self.kid)

    def _load_or_create(self) -> bytes:
        if self.path.exists():
            return self.path.read_bytes()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Several processes may start at once: each writes its own key to a temporary file and
        # links it into place, which fails if another got there first; then everyone reads the winner.
        tmp = self.path.with_name(f".key-{os.getpid()}-{secrets.token_hex(4)}.pem")
        tmp.write_bytes(_new_key_and_cert())
        tmp.chmod(0o600)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return self.path.read_bytes()

    @property
    def certs(self) -> dict[str, str]:
        """What the certificates endpoint serves: `{kid: PEM certificate}`."""
        return {self.kid: self.cert_pem}

    def mint(self, email: str, audience: str, *, issuer: str, lifetime: int = 3600,
             now: float | None = None, extra: dict[str, Any] | None = None) -> str:
        """A signed ID token; `extra` adds or overrides claims, and a None value removes one (for tests)."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": issuer, "aud": audience, "sub": _subject(email), "email": email,
            "email_verified": True, "iat": issued, "exp": issued + lifetime,
            # A person's account is managed by its Workspace domain (`hd`), as Google's are; a service account's is not.
            **({} if email.endswith(".gserviceaccount.com") else {"hd": email.rpartition("@")[2].lower()}),
        }
        for name, value in (extra or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return jwt.encode(self._signer, claims).decode()


def _new_key_and_cert() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pitstop local ID-token issuer")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


class IssuerServer(LocalServer):
    """The issuer over HTTP on host:port (0 = any free port), served from a daemon thread."""

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 default_identity: str = DEFAULT_IDENTITY, project: str = DEFAULT_PROJECT) -> None:
        self.issuer = Issuer(state_dir)
        self.default_identity = default_identity
        self.project = project
        self.certs_requests = 0  # how often the certificates were fetched (the verifier caches them)
        self.requests: deque[str] = deque(maxlen=1000)  # "METHOD path" of recent requests, oldest first
        self._lock = threading.Lock()
        super().__init__(_IssuerHandler, host, port, "id-token issuer")

    @property
    def certs_url(self) -> str:
        return self.url + CERTS_PATH

    @property
    def metadata_host(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> IssuerServer:
        self._serve()
        log.info("local ID-token issuer listening", extra={"url": self.url, "kid": self.issuer.kid})
        return self

    def mint(self, email: str, audience: str, *, lifetime: int = 3600, now: float | None = None,
             extra: dict[str, Any] | None = None) -> str:
        """A token from this issuer (its `iss` is this server's url)."""
        return self.issuer.mint(email, audience, issuer=self.url, lifetime=lifetime, now=now, extra=extra)

    def record(self, request: str, certs: bool = False) -> None:
        with self._lock:
            self.requests.append(request)
            self.certs_requests += certs


def start_issuer(state_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 default_identity: str = DEFAULT_IDENTITY, project: str = DEFAULT_PROJECT) -> IssuerServer:
    """Start serving; stop with `.stop()` (or use it as a context manager)."""
    return IssuerServer(state_dir, host, port, default_identity, project).start()


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _IssuerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    @property
    def _issuer(self) -> IssuerServer:
        return self.server.owner  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        server = self._issuer
        server.record(f"GET {self.path}", certs=url.path == CERTS_PATH)
        try:
            if url.path == CERTS_PATH:
                return self._send(200, json.dumps(server.issuer.certs), "application/json",
                                  {"Cache-Control": "public, max-age=300"})
            if url.path == "/":  # google-auth's "are we on GCE?" ping
                return self._send(200, "computeMetadata/\n", "application/text", metadata=True)
            if url.path.startswith("/computeMetadata/v1/"):
                return self._metadata(url.path, query)
            raise _Refused(404, f"no such endpoint: GET {url.path}")
        except _Refused as e:
            self._send(e.status, e.message + "\n", "text/plain; charset=utf-8",
                       metadata=url.path.startswith("/computeMetadata/"))

    def _metadata(self, path: str, query: dict[str, str]) -> None:
        server = self._issuer
        if self.headers.get("Metadata-Flavor") != "Google":
            raise _Refused(403, "Missing required header: Metadata-Flavor: Google")
        if path == "/computeMetadata/v1/project/project-id":
            return self._send(200, server.project, "application/text", metadata=True)
        if not path.startswith(_SERVICE_ACCOUNT):
            raise _Refused(404, f"the local metadata server does not serve {path}")
        account, _, item = path[len(_SERVICE_ACCOUNT):].partition("/")
        if account not in ("default", server.default_identity):
            raise _Refused(404, f"no service account '{account}' on this instance (only {server.default_identity})")
        if item == "email":
            return self._send(200, server.default_identity, "application/text", metadata=True)
        if item == "" and query.get("recursive") == "true":
            info = {"aliases": ["default"], "email": server.default_identity,
                    "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
            return self._send(200, json.dumps(info), "application/json", metadata=True)
        if item == "token":
            token = {"access_token": "local", "expires_in": 3600, "token_type": "Bearer"}
            return self._send(200, json.dumps(token), "application/json", metadata=True)
        if item == "identity":
            audience = query.get("audience", "")
            if not audience:
                raise _Refused(400, "non-empty audience parameter required")
            # As on GCE: the default format=standard leaves the email out.
            extra = {} if query.get("format") == "full" else {"email": None, "email_verified": None}
            return self._send(200, server.mint(server.default_identity, audience, extra=extra),
                              "application/text", metadata=True)
        raise _Refused(404, f"the local metadata server does not serve {path}")

    def do_POST(self) -> None:
        server = self._issuer
        server.record(f"POST {self.path}")
        try:
            if urllib.parse.urlsplit(self.path).path != "/token":
                raise _Refused(404, f"no such endpoint: POST {self.path}")
            email, audience, lifetime = self._token_request()
            token = server.mint(email, audience, lifetime=lifetime)
            log.info("minted a local ID token", extra={"email": email, "audience": audience})
            self._send(200, json.dumps({"id_token": token}), "application/json")
        except _Refused as e:
            self._send(e.status, json.dumps({"error": e.message}), "application/json")

    def _token_request(self) -> tuple[str, str, int]:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"null")
        except ValueError as e:
            raise _Refused(400, f"the request body is not JSON ({e}); send "
                                '{"email": "you@example.com", "audience": "pitstop:PROJECT", "lifetime": 3600}')
        if not isinstance(body, dict):
            raise _Refused(400, 'send a JSON object: {"email": ..., "audience": ..., "lifetime": 3600}')
        email, audience, lifetime = body.get("email"), body.get("audience"), body.get("lifetime", 3600)
        if not isinstance(email, str) or "@" not in email:
            raise _Refused(400, f"'email' must be an email address, got {email!r}")
        if not isinstance(audience, str) or not audience:
            raise _Refused(400, f"'audience' must be a non-empty string, got {audience!r}")
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or not 0 < lifetime <= MAX_LIFETIME:
            raise _Refused(400, f"'lifetime' must be whole seconds from 1 to {MAX_LIFETIME}, got {lifetime!r}")
        return email, audience, lifetime

    def _send(self, status: int, body: str, content_type: str, headers: dict[str, str] | None = None,
              metadata: bool = False) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if metadata:
            self.send_header("Metadata-Flavor", "Google")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("issuer request", extra={"request": format % args})
