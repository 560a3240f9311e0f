"""How the CLI gets a person's ID token, which every command it sends carries.

`id_token(audience)` tries, in order:

1. `PITSTOP_ID_TOKEN`: a token minted elsewhere (CI, another tool).
2. `PITSTOP_LOCAL_ISSUER`: the local stack's issuer (its URL), which mints a
   token for `PITSTOP_IDENTITY` (default: `git config user.email`, else
   `$USER@localhost`). Locally anyone may be anyone (see local/issuer.py).
3. Application Default Credentials through `google.oauth2.id_token.fetch_id_token`:
   a service-account key in `GOOGLE_APPLICATION_CREDENTIALS`, or the metadata
   server (on GCE, Cloud Run, Cloud Build, or a metadata host set with
   `GCE_METADATA_HOST`). Not probed on a laptop: the probe waits seconds for a
   server that is not there.
4. `gcloud auth print-identity-token --audiences=AUD`, which works for a
   service account, then plain `gcloud auth print-identity-token` for a user
   account. A user account cannot choose the audience: its token's `aud` is
   gcloud's own OAuth client id (32555940559.apps.googleusercontent.com), so a
   deployment that accepts people's gcloud tokens lists that id in
   PITSTOP_AUDIENCE next to its own audience.

When the first two are configured and fail, that is the answer (a local
stack that is down should not quietly fall through to a Google account).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

GCLOUD_CLIENT_ID = "32555940559.apps.googleusercontent.com"
GCLOUD_TIMEOUT_S = 30


class NoCredentials(Exception):
    """No ID token could be had; the message says what was tried and how to fix each."""


def id_token(audience: str) -> tuple[str, str]:
    """(token, where it came from) for `audience`, or `NoCredentials`."""
    given = os.environ.get("PITSTOP_ID_TOKEN", "").strip()
    if given:
        return given, "PITSTOP_ID_TOKEN"
    issuer = os.environ.get("PITSTOP_LOCAL_ISSUER", "").strip()
    if issuer:
        return _from_local_issuer(issuer.rstrip("/"), audience)
    tried: list[str] = [
        "PITSTOP_ID_TOKEN is not set (set it to a token you minted yourself)",
        "PITSTOP_LOCAL_ISSUER is not set (the local stack sets it: `pitstop dev` prints it)",
    ]
    for attempt in (_from_adc, _from_gcloud):
        found, note = attempt(audience)
        if found:
            return found, note
        tried.append(note)
    raise NoCredentials("no ID token for audience '" + audience + "'. Tried:\n- " + "\n- ".join(tried))


def local_identity() -> str:
    """Who the person at this laptop says they are, for the local issuer."""
    chosen = os.environ.get("PITSTOP_IDENTITY", "").strip()
    if chosen:
        return chosen
    try:
        email = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True,
                               timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        email = ""
    return email or f"{os.environ.get('USER') or 'someone'}@localhost"


def _from_local_issuer(url: str, audience: str) -> tuple[str, str]:
    import httpx

    email = local_identity()
    try:
        response = httpx.post(f"{url}/token", json={"email": email, "audience": audience}, timeout=10)
    except httpx.HTTPError as e:
        raise NoCredentials(f"the local issuer at {url} (PITSTOP_LOCAL_ISSUER) did not answer ({e}): "
                            "is the local stack running? Start it, or unset PITSTOP_LOCAL_ISSUER") from e
    try:
        return response.json()["id_token"], f"the local issuer at {url}, as {email}"
    except (ValueError, KeyError, TypeError):
        raise NoCredentials(f"the local issuer at {url} refused a token for {email}: HTTP "
                            f"{response.status_code} {response.text.strip()[:300]}") from None


def _metadata_reachable() -> bool:
    """Only where a metadata server can be: probing for one elsewhere costs seconds."""
    if os.environ.get("GCE_METADATA_HOST") or os.environ.get("K_SERVICE"):  # set by hand, or on Cloud Run
        return True
    try:
        return Path("/sys/class/dmi/id/product_name").read_text().startswith("Google")
    except OSError:
        return False


def _service_account_key() -> bool:
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        return False
    try:
        kind = json.loads(Path(path).read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        return True  # let google-auth say what is wrong with it
    return kind in ("service_account", "impersonated_service_account")


def _from_adc(audience: str) -> tuple[str | None, str]:
    if not (_service_account_key() or _metadata_reachable()):
        return None, ("no service-account key in GOOGLE_APPLICATION_CREDENTIALS and no metadata server here "
                      "(set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on Google Cloud)")
    import google.auth.transport.requests
    import google.oauth2.id_token
    from google.auth import exceptions

    try:
        token = google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
    except (exceptions.GoogleAuthError, ValueError, OSError) as e:
        return None, (f"Application Default Credentials gave no ID token ({e}); check "
                      "GOOGLE_APPLICATION_CREDENTIALS or the machine's service account")
    return token, "Application Default Credentials (service account)"


def _from_gcloud(audience: str) -> tuple[str | None, str]:
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return None, ("gcloud is not installed (install the Google Cloud CLI and run `gcloud auth login`: "
                      "https://cloud.google.com/sdk/docs/install)")
    errors = []
    for args, source in (
        ([f"--audiences={audience}"], f"gcloud auth print-identity-token --audiences={audience}"),
        ([], f"gcloud auth print-identity-token (a user account: its audience is gcloud's client id "
             f"{GCLOUD_CLIENT_ID}, which the deployment must list in PITSTOP_AUDIENCE)"),
    ):
        try:
            run = subprocess.run([gcloud, "auth", "print-identity-token", *args], capture_output=True,
                                 text=True, timeout=GCLOUD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(str(e))
            continue
        token = run.stdout.strip()
        if run.returncode == 0 and token.count(".") == 2:
            return token, source
        errors.append(_last_error_line(run.stderr) or f"exit status {run.returncode}")
    return None, (f"gcloud auth print-identity-token failed ({'; '.join(dict.fromkeys(errors))}): "
                  "sign in with `gcloud auth login`")


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or [""])[-1]
