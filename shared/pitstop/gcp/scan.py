"""Artifact Analysis: what scanning an image digest found, and whether it is attested.

Reads grafeas occurrences of one image by digest (its resource URL is `https://` +
`HOST/PROJECT/REPO/IMAGE@sha256:…`), in the project holding them: the
registry's, which `scan` reads from the image when not told.

- DISCOVERY says whether the analysis finished. Scanning is asynchronous: an image
  pushed a minute ago may have no discovery occurrence yet, or a PENDING one, and
  its vulnerabilities are not known until FINISHED_SUCCESS. `scan` looks once
  (and lists vulnerabilities only once the analysis finished); `wait` looks again
  until it finished, failed, or the time given ran out.
- VULNERABILITY: one occurrence per CVE found, as a `Finding`.
- ATTESTATION (when asked): a Binary Authorization attestation of the digest, by
  the attestor whose note is given (or by any). Its presence only: verifying
  signatures is Binary Authorization's job at deploy time.

What may be deployed is decided by pitstop.core.scanpolicy.verdict, not here.

Errors become `ScanError`, `permanent` when retrying cannot help (permission
denied, API disabled, a malformed image reference). Each call is one request
bounded by RPC_TIMEOUT, never retried behind the caller's back (except in `wait`,
within its time).

The same code talks to GCP (gRPC, as `ContainerAnalysisClient().get_grafeas_client()`
builds it) and to the local stand-in pitstop.local.analysis (REST, anonymous, at
`PITSTOP_ANALYSIS_ENDPOINT`); only the endpoint differs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pitstop.core.scanpolicy import FINAL, SEVERITIES, UNRATED, Finding, Scan
from pitstop.gcp.cloudrun import PERMANENT, _status, _transport_errors

if TYPE_CHECKING:
    from grafeas.grafeas_v1 import GrafeasClient

ENDPOINT_ENV = "PITSTOP_ANALYSIS_ENDPOINT"
RPC_TIMEOUT = 10.0  # seconds for one request
PAGE_SIZE, MAX_PAGES = 500, 10  # more than 5,000 occurrences for one digest is refused, not half-read
POLL_S = 5.0  # seconds between looks in `wait`
FINISHED_SUCCESS = 3  # grafeas DiscoveryOccurrence.AnalysisStatus
_EPOCH = datetime.fromtimestamp(0, timezone.utc)
_IMAGE = re.compile(r"^(?:https://)?(?P<repo>[^/@\s]+/[^@\s]+?)(?::[\w][\w.-]{0,127})?"
                    r"@(?P<digest>sha256:[0-9a-f]{64})$")


class ScanError(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def resource_url(image: str) -> str:
    """`https://HOST/PATH@sha256:…` for an image by digest (a tag before the digest is dropped, as the
    registry's resource URLs have none); ScanError (permanent) for an image not by digest."""
    match = _IMAGE.match(image.strip())
    if not match:
        raise ScanError(f"{image!r} is not an image by digest (HOST/PROJECT/REPO/IMAGE@sha256:<64 hex>): "
                        "only a digest names what was scanned", permanent=True)
    return f"https://{match['repo']}@{match['digest']}"


def image_project(image: str) -> str:
    """The project holding `image`: Artifact Registry's `LOCATION-docker.pkg.dev/PROJECT/…` or
    Container Registry's `[REGION.]gcr.io/PROJECT/…`; ScanError (permanent) for another registry."""
    host, _, path = resource_url(image).removeprefix("https://").partition("/")
    if host.endswith("-docker.pkg.dev") or host == "gcr.io" or host.endswith(".gcr.io"):
        return path.split("/", 1)[0]
    raise ScanError(f"cannot tell the project of {image!r} from its registry {host}: name the project "
                    "that holds its occurrences", permanent=True)


class Scanner:
    def __init__(self, client: GrafeasClient) -> None:
        self.client = client

    @classmethod
    def from_endpoint(cls, endpoint: str | None) -> Scanner:
        """GCP's containeranalysis.googleapis.com with default credentials (gRPC); or the local
        stand-in at `endpoint` (REST, anonymous: GrafeasClient takes no client_options, so its
        transport is built here)."""
        if not endpoint:
            from google.cloud.devtools.containeranalysis_v1 import ContainerAnalysisClient  # late: slow import

            return cls(ContainerAnalysisClient().get_grafeas_client())
        from google.auth.credentials import AnonymousCredentials
        from grafeas.grafeas_v1 import GrafeasClient
        from grafeas.grafeas_v1.services.grafeas.transports import GrafeasRestTransport

        return cls(GrafeasClient(transport=GrafeasRestTransport(host=endpoint, credentials=AnonymousCredentials())))

    def scan(self, project: str | None, image: str, *, attestation: bool = False,
             attestor: str | None = None) -> Scan:
        """What Artifact Analysis says now about `image` (by digest), from `project`'s occurrences
        (None: the image's project). `attestation`: also look for an attestation, in `attestor`'s
        project when its note (`projects/P/notes/N`) is given, else in `project` (then by any attestor)."""
        url = resource_url(image)
        project = project or image_project(image)
        discoveries = self._list(project, "DISCOVERY", url)
        # Container Scanning's own discovery, if there are others; the latest if it was redone.
        ours = [d for d in discoveries if d.note_name.endswith("/PACKAGE_VULNERABILITY")] or discoveries
        latest = max(ours, key=lambda d: d.update_time or d.create_time or _EPOCH, default=None)
        status = latest.discovery.analysis_status.name if latest else ""
        error = latest.discovery.analysis_status_error.message if latest else ""
        finished = latest is not None and latest.discovery.analysis_status == FINISHED_SUCCESS
        findings = [_finding(o) for o in self._list(project, "VULNERABILITY", url)] if finished else []
        attested = None
        if attestation:
            where = attestor.split("/")[1] if attestor and attestor.startswith("projects/") else project
            attested = any(attestor in (None, o.note_name) for o in self._list(where, "ATTESTATION", url))
        return Scan(finished=finished, findings=findings, attested=attested, status=status, error=error)

    def wait(self, project: str | None, image: str, timeout_s: float, *, poll_s: float = POLL_S,
             attestation: bool = False, attestor: str | None = None,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Scan:
        """`scan` until its analysis finished or failed, for at most `timeout_s`: the last Scan (pending
        if time ran out). A transient error is retried within the time; the last one raises after it."""
        deadline = clock() + timeout_s
        while True:
            try:
                found = self.scan(project, image, attestation=attestation, attestor=attestor)
                if found.finished or found.status in FINAL:
                    return found
            except ScanError as err:
                if err.permanent or clock() + poll_s > deadline:
                    raise
            else:
                if clock() + poll_s > deadline:
                    return found
            sleep(poll_s)

    def _list(self, project: str, kind: str, url: str) -> list[Any]:
        """Every occurrence of `kind` for the resource, at most MAX_PAGES pages."""
        from google.api_core import exceptions

        request = {"parent": f"projects/{project}", "filter": f'kind="{kind}" AND resourceUrl="{url}"',
                   "page_size": PAGE_SIZE}
        doing = f"listing the {kind} occurrences of {url} in project {project}"
        found: list[Any] = []
        try:
            pager = self.client.list_occurrences(request=request, timeout=RPC_TIMEOUT, retry=None)
            for number, page in enumerate(pager.pages, 1):
                found.extend(page.occurrences)
                if number == MAX_PAGES and page.next_page_token:
                    raise ScanError(f"{doing}: more than {MAX_PAGES * PAGE_SIZE} occurrences; refusing to judge "
                                    "from a part of them", permanent=True)
        except exceptions.GoogleAPICallError as err:
            status = _status(err)
            raise ScanError(f"{doing} failed ({status}): {err.message}", permanent=status in PERMANENT) from err
        except (exceptions.RetryError, *_transport_errors()) as err:
            raise ScanError(f"{doing} failed ({type(err).__name__}: {err})") from err
        return found


def _finding(occurrence: Any) -> Finding:
    """A VULNERABILITY occurrence as a Finding: its CVE, severity (the effective one: the distro's when it
    rates it, else the CVE's), packages, whether a fix exists, and CVSS score."""
    v = occurrence.vulnerability
    severity = next((s.name for s in (v.effective_severity, v.severity) if s.name in SEVERITIES), UNRATED)
    cve = v.short_description or occurrence.note_name.rsplit("/", 1)[-1]
    packages = sorted({issue.affected_package for issue in v.package_issue if issue.affected_package})
    fixed = v.fix_available or any(issue.fix_available for issue in v.package_issue)
    score = v.cvss_score or v.cvssv3.base_score  # float32 on the wire: 9.8 comes back 9.800000190734863
    return Finding(cve=cve, severity=severity, package=", ".join(packages), fixed=fixed,
                   cvss=round(score, 1) if score else None)

