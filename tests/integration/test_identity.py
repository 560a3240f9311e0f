"""Verified identities: the verifier against the local issuer, pitstop's own tokens, the CLI's.

The issuer is a real HTTP server and every token is really signed; only the
coexistence check with Firestore and Pub/Sub needs the emulators.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from pitstop.gcp.identity import (
    GOOGLE_CERTS,
    GOOGLE_ISSUERS,
    NO_TOKEN,
    CertsUnavailable,
    Identity,
    TokenSource,
    Unverified,
    Verifier,
    audience_from_env,
    claimed_email,
)
from pitstop.local.issuer import DEFAULT_IDENTITY, Issuer, IssuerServer, start_issuer
from pitstop.surfaces import credentials
from pitstop.surfaces.credentials import GCLOUD_CLIENT_ID, NoCredentials

AUD = "pitstop:test"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerServer]:
    with start_issuer(tmp_path_factory.mktemp("state")) as server:
        yield server


class FakeClock:
    """The verifier's certificate-cache clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier_for(server: IssuerServer, clock: FakeClock | None = None, **kwargs: object) -> Verifier:
    extra = {"clock": clock} if clock else {}
    return Verifier([AUD], issuers=[server.url], certs_url=server.certs_url,
                    **extra, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def verifier(issuer: IssuerServer) -> Verifier:
    return verifier_for(issuer)


def refused(verifier: Verifier, token: str | None) -> Unverified:
    with pytest.raises(Unverified) as caught:
        verifier.verify(token)
    return caught.value


def segments(token: str) -> list[str]:
    return token.split(".")


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unb64(segment: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


# ---------------------------------------------------------------- good tokens


def test_a_good_token_names_its_sender(issuer: IssuerServer, verifier: Verifier) -> None:
    token = issuer.mint("Ana.Lopez@Example.com", AUD)
    exp = unb64(segments(token)[1])["exp"]

    identity = verifier.verify(token)

    assert identity == Identity(
        email="ana.lopez@example.com",
        subject=unb64(segments(issuer.mint("ana.lopez@example.com", AUD))[1])["sub"],  # stable per email
        issuer=issuer.url,
        audience=AUD,
        expires_at=datetime.fromtimestamp(exp, timezone.utc),
        hosted_domain="example.com",  # a person's account, managed by its Workspace domain (`hd`)
    )
    assert identity.subject.isdigit() and len(identity.subject) == 21
    robot = verifier.verify(issuer.mint("probe@acme.iam.gserviceaccount.com", AUD))
    assert robot.hosted_domain is None, "a service account has no hosted domain"


def test_bearer_prefix_is_accepted(issuer: IssuerServer, verifier: Verifier) -> None:
    token = issuer.mint("ana@example.com", AUD)
    assert verifier.verify(f"Bearer {token}").email == "ana@example.com"
    assert verifier.verify(f"  bearer {token}\n").email == "ana@example.com"


def test_any_configured_audience_is_accepted(issuer: IssuerServer) -> None:
    verifier = Verifier([AUD, GCLOUD_CLIENT_ID], issuers=[issuer.url], certs_url=issuer.certs_url)
    assert verifier.verify(issuer.mint("ana@example.com", GCLOUD_CLIENT_ID)).audience == GCLOUD_CLIENT_ID


def test_clock_skew_is_tolerated_both_ways(issuer: IssuerServer, verifier: Verifier) -> None:
    now = time.time()
    expired_just_now = issuer.mint("ana@example.com", AUD, now=now - 3600 - 5)
    issued_just_ahead = issuer.mint("ana@example.com", AUD, now=now + 5)
    assert verifier.verify(expired_just_now).email == "ana@example.com"
    assert verifier.verify(issued_just_ahead).email == "ana@example.com"


# ---------------------------------------------------------------- refusals


def test_wrong_audience(issuer: IssuerServer, verifier: Verifier) -> None:
    error = refused(verifier, issuer.mint("ana@example.com", "pitstop:other"))
    assert error.reason == ("the token's audience 'pitstop:other' is not this pitstop deployment "
                            "(expected 'pitstop:test')")
    assert error.claimed == "ana@example.com"


def test_expired_beyond_skew(issuer: IssuerServer, verifier: Verifier) -> None:
    issued = time.time() - 3600 - 60
    error = refused(verifier, issuer.mint("ana@example.com", AUD, now=issued))
    expired = datetime.fromtimestamp(int(issued) + 3600, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert error.reason.startswith(f"the ID token expired at {expired} (now ")
    assert error.reason.endswith("; mint a new one")


def test_not_yet_valid(issuer: IssuerServer, verifier: Verifier) -> None:
    error = refused(verifier, issuer.mint("ana@example.com", AUD, now=time.time() + 120))
    assert "issued in the future" in error.reason and "clock" in error.reason


def test_untrusted_issuer(issuer: IssuerServer, verifier: Verifier) -> None:
    token = issuer.issuer.mint("ana@example.com", AUD, issuer="https://accounts.example.net")
    error = refused(verifier, token)
    assert error.reason == f"issuer 'https://accounts.example.net' is not trusted (trusted: '{issuer.url}')"


def test_google_issuers_do_not_trust_the_local_one(issuer: IssuerServer) -> None:
    verifier = Verifier([AUD], certs_url=issuer.certs_url)  # Google's issuers, local keys
    assert verifier.issuers == GOOGLE_ISSUERS
    assert "is not trusted" in refused(verifier, issuer.mint("ana@example.com", AUD)).reason


def test_tampered_payload(issuer: IssuerServer, verifier: Verifier) -> None:
    header, payload, signature = segments(issuer.mint("ana@example.com", AUD))
    forged = ".".join([header, b64({**unb64(payload), "email": "boss@example.com"}), signature])
    error = refused(verifier, forged)
    assert error.reason == f"the token's signature does not verify against {issuer.certs_url}"
    assert error.claimed == "boss@example.com"  # what it claimed, for the audit


def test_tampered_signature(issuer: IssuerServer, verifier: Verifier) -> None:
    header, payload, signature = segments(issuer.mint("ana@example.com", AUD))
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    assert "signature does not verify" in refused(verifier, ".".join([header, payload, flipped])).reason


def test_unsigned_token(issuer: IssuerServer, verifier: Verifier) -> None:
    _, payload, _ = segments(issuer.mint("ana@example.com", AUD))
    token = ".".join([b64({"alg": "none", "typ": "JWT"}), payload, ""])
    assert "algorithm 'none'" in refused(verifier, token).reason


def test_a_key_the_issuer_does_not_list_is_refused_after_one_refetch(issuer: IssuerServer,
                                                                    tmp_path: Path) -> None:
    clock = FakeClock()
    verifier = verifier_for(issuer, clock)
    stranger = Issuer(tmp_path)  # another key, same claims
    forged = stranger.mint("boss@example.com", AUD, issuer=issuer.url)
    assert stranger.kid != issuer.issuer.kid

    before = issuer.certs_requests
    verifier.verify(issuer.mint("ana@example.com", AUD))
    clock.now += 6  # past the refetch cooldown
    error = refused(verifier, forged)
    assert issuer.certs_requests - before == 2  # the first fetch, and one refetch for the unknown kid
    assert error.reason == (f"the token was signed with key '{stranger.kid}', which {issuer.certs_url} "
                            "does not list: it was not issued by a trusted issuer")
    assert error.claimed == "boss@example.com"

    for _ in range(5):  # a flood of them within the cooldown fetches nothing
        refused(verifier, forged)
    assert issuer.certs_requests - before == 2


def test_rotated_key_is_picked_up_by_a_refetch(tmp_path: Path) -> None:
    with start_issuer(tmp_path / "a") as server:
        clock = FakeClock()
        verifier = verifier_for(server, clock)
        verifier.verify(server.mint("ana@example.com", AUD))
        server.issuer = Issuer(tmp_path / "b")  # the issuer rotates to a new key
        clock.now += 6
        assert verifier.verify(server.mint("ana@example.com", AUD)).email == "ana@example.com"
        assert server.certs_requests == 2


@pytest.mark.parametrize("token", [None, "", "   ", "Bearer ", "Bearer"])
def test_no_token(verifier: Verifier, token: str | None) -> None:
    error = refused(verifier, token)
    assert error.reason == NO_TOKEN
    assert error.claimed is None


NOT_A_JWT = "the ID token is not a JWT"


@pytest.mark.parametrize("token, reason", [
    ("garbage", NOT_A_JWT), ("a.b.c", NOT_A_JWT), ("a.b", NOT_A_JWT), ("....", NOT_A_JWT),
    ("W10.W10.", NOT_A_JWT), ("\x00.\x01.\x02", NOT_A_JWT),  # [] is no header
    ("e30.e30.e30x", "the token names no signature algorithm"),  # {} is
    ("eyJhbGciOiJSUzI1NiIsImtpZCI6WzFdfQ.e30.e30", "the ID token's header is malformed"),  # kid: [1]
])
def test_garbage(verifier: Verifier, token: str, reason: str) -> None:
    error = refused(verifier, token)
    assert error.reason.startswith(reason)
    assert error.claimed is None


def test_no_email_claim(issuer: IssuerServer, verifier: Verifier) -> None:
    error = refused(verifier, issuer.mint("ana@example.com", AUD, extra={"email": None}))
    assert error.reason == "the token has no email claim: mint it with --include-email / format=full"


@pytest.mark.parametrize("flag", [False, "false"])
def test_email_not_verified(issuer: IssuerServer, verifier: Verifier, flag: object) -> None:
    error = refused(verifier, issuer.mint("ana@example.com", AUD, extra={"email_verified": flag}))
    assert error.reason.startswith("email not verified")
    assert error.claimed == "ana@example.com"


def test_email_verified_may_be_absent(issuer: IssuerServer, verifier: Verifier) -> None:
    token = issuer.mint("ana@example.com", AUD, extra={"email_verified": None})
    assert verifier.verify(token).email == "ana@example.com"


def test_oversize_token_is_refused_without_decoding(issuer: IssuerServer, verifier: Verifier) -> None:
    token = issuer.mint("ana@example.com", AUD, extra={"padding": "x" * 9000})  # validly signed, but huge
    before = issuer.certs_requests
    error = refused(verifier, token)
    assert "over the 8192-byte limit" in error.reason
    assert error.claimed is None  # not even decoded for the audit
    assert issuer.certs_requests == before


def test_certificates_are_cached(issuer: IssuerServer) -> None:
    clock = FakeClock()
    verifier = verifier_for(issuer, clock, cache_seconds=300)
    before = issuer.certs_requests
    for n in range(20):
        verifier.verify(issuer.mint(f"user{n}@example.com", AUD))
    assert issuer.certs_requests - before == 1
    clock.now += 301
    verifier.verify(issuer.mint("ana@example.com", AUD))
    assert issuer.certs_requests - before == 2


def test_concurrent_verifies_share_one_fetch(issuer: IssuerServer) -> None:
    verifier = verifier_for(issuer)
    token = issuer.mint("ana@example.com", AUD)
    before = issuer.certs_requests
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(verifier.verify(token).email)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["ana@example.com"] * 16
    assert issuer.certs_requests - before == 1


def test_unreachable_certificates_are_not_the_senders_fault(issuer: IssuerServer) -> None:
    token = issuer.mint("ana@example.com", AUD)
    nowhere = Verifier([AUD], issuers=[issuer.url], certs_url="http://127.0.0.1:9/oauth2/v1/certs")
    with pytest.raises(CertsUnavailable, match="could not fetch the token certificates from http://127.0.0.1:9"):
        nowhere.verify(token)
    wrong_path = Verifier([AUD], issuers=[issuer.url], certs_url=issuer.url + "/nope")
    with pytest.raises(CertsUnavailable, match="HTTP 404"):
        wrong_path.verify(token)


def test_claimed_email_reads_a_forged_token_and_never_raises(issuer: IssuerServer, tmp_path: Path) -> None:
    forged = Issuer(tmp_path).mint("Boss@Example.com", AUD, issuer="https://accounts.google.com")
    assert claimed_email(forged) == "Boss@Example.com"
    assert claimed_email("Bearer " + forged) == "Boss@Example.com"
    header, _, signature = segments(forged)
    assert claimed_email(".".join([header, b64({"email": {"not": "a string"}}), signature])) is None
    assert claimed_email(".".join([header, b64({"email": "x" * 1000}), signature])) == "x" * 254
    for junk in (None, "", "garbage", "a.b.c", "a" * 10000, "\udcff.\udcff.\udcff"):
        assert claimed_email(junk) is None


# ---------------------------------------------------------------- configuration


def test_verifier_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PITSTOP_AUDIENCE", "PITSTOP_TOKEN_ISSUERS", "PITSTOP_TOKEN_CERTS"):
        monkeypatch.delenv(name, raising=False)
    default = Verifier.from_env("acme")
    assert (default.audiences, default.issuers, default.certs_url) == (("pitstop:acme",), GOOGLE_ISSUERS, GOOGLE_CERTS)
    assert audience_from_env("acme") == "pitstop:acme"

    monkeypatch.setenv("PITSTOP_AUDIENCE", f" pitstop:acme-prod , {GCLOUD_CLIENT_ID},")
    monkeypatch.setenv("PITSTOP_TOKEN_ISSUERS", "http://127.0.0.1:1234")
    monkeypatch.setenv("PITSTOP_TOKEN_CERTS", "http://127.0.0.1:1234/oauth2/v1/certs")
    configured = Verifier.from_env("acme")
    assert configured.audiences == ("pitstop:acme-prod", GCLOUD_CLIENT_ID)
    assert configured.issuers == ("http://127.0.0.1:1234",)
    assert configured.certs_url == "http://127.0.0.1:1234/oauth2/v1/certs"
    assert audience_from_env("acme") == "pitstop:acme-prod"


def test_a_verifier_needs_an_audience() -> None:
    with pytest.raises(ValueError, match="at least one audience"):
        Verifier([])


# ---------------------------------------------------------------- the local issuer itself


def test_the_key_is_shared_through_the_state_dir(tmp_path: Path) -> None:
    kids: list[str] = []
    threads = [threading.Thread(target=lambda: kids.append(Issuer(tmp_path).kid)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kids) == 8 and len(set(kids)) == 1  # all racing creators ended up with one key
    assert [p.name for p in (tmp_path / "issuer").iterdir()] == ["key.pem"]  # no temporary files left
    assert Issuer(tmp_path).kid == kids[0]
    assert Issuer(tmp_path / "elsewhere").kid != kids[0]


def test_certs_endpoint(issuer: IssuerServer) -> None:
    response = httpx.get(issuer.certs_url)
    assert response.headers["cache-control"] == "public, max-age=300"
    certs = response.json()
    assert list(certs) == [issuer.issuer.kid]
    assert certs[issuer.issuer.kid].startswith("-----BEGIN CERTIFICATE-----")


def test_metadata_endpoints(issuer: IssuerServer, verifier: Verifier) -> None:
    google = {"Metadata-Flavor": "Google"}
    root = issuer.url + "/computeMetadata/v1/"
    accounts = root + "instance/service-accounts/default/"

    ping = httpx.get(issuer.url + "/", headers=google)
    assert ping.status_code == 200 and ping.headers["metadata-flavor"] == "Google"
    refused_without_header = httpx.get(accounts + "email")
    assert refused_without_header.status_code == 403 and "Metadata-Flavor" in refused_without_header.text

    assert httpx.get(accounts + "email", headers=google).text == DEFAULT_IDENTITY
    assert httpx.get(root + "project/project-id", headers=google).text == "pitstop-local"
    assert httpx.get(accounts + "token", headers=google).json() == {
        "access_token": "local", "expires_in": 3600, "token_type": "Bearer"}

    full = httpx.get(accounts + "identity", params={"audience": AUD, "format": "full"}, headers=google)
    assert verifier.verify(full.text).email == DEFAULT_IDENTITY
    standard = httpx.get(accounts + "identity", params={"audience": AUD}, headers=google)
    assert "no email claim" in refused(verifier, standard.text).reason  # as on GCE
    assert httpx.get(accounts + "identity", headers=google).status_code == 400


def test_token_endpoint(issuer: IssuerServer, verifier: Verifier) -> None:
    minted = httpx.post(issuer.url + "/token", json={"email": "ana@example.com", "audience": AUD, "lifetime": 60})
    identity = verifier.verify(minted.json()["id_token"])
    assert identity.email == "ana@example.com"
    assert 50 < (identity.expires_at - datetime.now(timezone.utc)).total_seconds() <= 61

    bad_json = httpx.post(issuer.url + "/token", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["error"]
    for body, complaint in (({"audience": AUD}, "'email'"), ({"email": "a@b.c"}, "'audience'"),
                            ({"email": "a@b.c", "audience": AUD, "lifetime": "1h"}, "'lifetime'")):
        response = httpx.post(issuer.url + "/token", json=body)
        assert response.status_code == 400 and complaint in response.json()["error"]


# ---------------------------------------------------------------- pitstop's own tokens (ADC)


def metadata_env(server: IssuerServer) -> dict[str, str]:
    """What a local function's environment holds: google-auth's metadata server is the issuer."""
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(GCE_METADATA_HOST=server.metadata_host, GCE_METADATA_IP=server.metadata_host)
    return env


def test_fetch_id_token_uses_the_stand_in_from_the_environment_alone(issuer: IssuerServer,
                                                                     verifier: Verifier) -> None:
    # A fresh process, as a local function is: google-auth reads GCE_METADATA_HOST when first imported.
    code = ("import google.auth.transport.requests as r, google.oauth2.id_token as t; "
            f"print(t.fetch_id_token(r.Request(), {AUD!r}))")
    seen = len(issuer.requests)
    run = subprocess.run([sys.executable, "-c", code], env=metadata_env(issuer), capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    asked = list(issuer.requests)[seen:]
    assert asked[0] == "GET /"  # google-auth's ping, to GCE_METADATA_IP
    assert identity_requests_in(asked) == 1 and "format=full" in asked[-1]  # then GCE_METADATA_HOST
    assert verifier.verify(run.stdout.strip()).email == DEFAULT_IDENTITY


@pytest.fixture
def metadata_here(issuer: IssuerServer, monkeypatch: pytest.MonkeyPatch) -> IssuerServer:
    """The stand-in as this process's metadata server."""
    from google.auth.compute_engine import _metadata

    for name, value in metadata_env(issuer).items():
        if name.startswith("GCE_METADATA"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    # google-auth read GCE_METADATA_HOST when it was imported, before this test.
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", issuer.metadata_host)
    return issuer


def identity_requests(server: IssuerServer) -> int:
    return sum("/default/identity?" in request for request in server.requests)


def test_token_source_mints_through_the_metadata_server_and_caches(metadata_here: IssuerServer,
                                                                   verifier: Verifier) -> None:
    source = TokenSource(AUD)
    before = identity_requests(metadata_here)
    first = source.token()
    assert verifier.verify(first).email == DEFAULT_IDENTITY
    assert all(source.token() == first for _ in range(5))
    assert identity_requests(metadata_here) - before == 1


def test_token_source_refreshes_before_expiry(metadata_here: IssuerServer) -> None:
    source = TokenSource(AUD, refresh_before=3600)  # the stand-in's tokens live 3600 s: always due
    before = identity_requests(metadata_here)
    source.token()
    source.token()
    assert identity_requests(metadata_here) - before == 2


# ---------------------------------------------------------------- the CLI's tokens


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment with none of the sources; returns an empty directory that is the whole PATH."""
    for name in ("PITSTOP_ID_TOKEN", "PITSTOP_LOCAL_ISSUER", "PITSTOP_IDENTITY", "GOOGLE_APPLICATION_CREDENTIALS",
                 "GCE_METADATA_HOST", "K_SERVICE"):
        monkeypatch.delenv(name, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(credentials, "_metadata_reachable", lambda: False)
    return bin_dir


def test_cli_token_from_the_environment(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITSTOP_ID_TOKEN", " a.b.c\n")
    assert credentials.id_token(AUD) == ("a.b.c", "PITSTOP_ID_TOKEN")


def test_cli_token_from_the_local_issuer(no_credentials: Path, monkeypatch: pytest.MonkeyPatch,
                                         issuer: IssuerServer, verifier: Verifier) -> None:
    monkeypatch.setenv("PITSTOP_LOCAL_ISSUER", issuer.url + "/")
    monkeypatch.setenv("PITSTOP_IDENTITY", "Ana@Example.com")
    token, source = credentials.id_token(AUD)
    assert verifier.verify(token).email == "ana@example.com"
    assert source == f"the local issuer at {issuer.url}, as Ana@Example.com"


def test_cli_local_identity_defaults_to_user_at_localhost(no_credentials: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "ana")  # PATH holds no git, so no git config either
    assert credentials.local_identity() == "ana@localhost"


def test_cli_local_issuer_down_is_an_answer(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITSTOP_LOCAL_ISSUER", "http://127.0.0.1:9")
    with pytest.raises(NoCredentials, match="the local issuer at http://127.0.0.1:9 .* is the local stack running"):
        credentials.id_token(AUD)


def test_cli_no_credentials_says_what_was_tried(no_credentials: Path) -> None:
    with pytest.raises(NoCredentials) as caught:
        credentials.id_token(AUD)
    message = str(caught.value)
    for hint in ("PITSTOP_ID_TOKEN", "PITSTOP_LOCAL_ISSUER", "GOOGLE_APPLICATION_CREDENTIALS",
                 "gcloud is not installed"):
        assert hint in message


def fake_gcloud(bin_dir: Path, script: str) -> None:
    gcloud = bin_dir / "gcloud"
    gcloud.write_text("#!/bin/sh\n" + script)
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)


def test_cli_user_account_falls_back_to_gclouds_audience(no_credentials: Path) -> None:
    fake_gcloud(no_credentials, """
case "$*" in
  *--audiences=*) echo "ERROR: (gcloud.auth.print-identity-token) Invalid account type" >&2; exit 1;;
  *) echo "user.token.signature";;
esac
""")
    token, source = credentials.id_token(AUD)
    assert token == "user.token.signature"
    assert GCLOUD_CLIENT_ID in source


def test_cli_gcloud_errors_are_reported(no_credentials: Path) -> None:
    fake_gcloud(no_credentials, 'echo "ERROR: (gcloud.auth.print-identity-token) No active account." >&2; exit 1\n')
    with pytest.raises(NoCredentials, match=r"No active account.*gcloud auth login"):
        credentials.id_token(AUD)


# ---------------------------------------------------------------- coexistence with the emulators


COEXIST = """
import json, os, uuid
import google.auth.transport.requests, google.oauth2.id_token
from google.cloud import firestore, pubsub_v1
project = os.environ["GOOGLE_CLOUD_PROJECT"]
doc = firestore.Client(project=project).collection("identity-coexist").document(uuid.uuid4().hex)
doc.set({"ok": True})
publisher = pubsub_v1.PublisherClient()
topic = publisher.topic_path(project, "identity-coexist-" + uuid.uuid4().hex[:8])
publisher.create_topic(name=topic)
print(json.dumps({
    "firestore": doc.get().to_dict(),
    "default_project": firestore.Client().project,
    "published": publisher.publish(topic, b"x").result(timeout=30),
    "id_token": google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), "pitstop:test"),
}))
"""


@pytest.mark.emulators
def test_emulator_clients_work_beside_the_metadata_stand_in(emulators, issuer: IssuerServer,
                                                            verifier: Verifier) -> None:
    env = {**metadata_env(issuer), **emulators.env}
    seen = len(issuer.requests)
    run = subprocess.run([sys.executable, "-c", COEXIST], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["firestore"] == {"ok": True}
    assert out["default_project"] == emulators.project
    assert out["published"]
    asked = list(issuer.requests)[seen:]
    assert verifier.verify(out["id_token"]).email == DEFAULT_IDENTITY
    # The emulator clients asked the metadata server nothing; only fetch_id_token did.
    assert all(r == "GET /" or "/default/" in r for r in asked), asked
    assert identity_requests_in(asked) == 1


def identity_requests_in(requests: list[str]) -> int:
    return sum("/default/identity?" in request for request in requests)
