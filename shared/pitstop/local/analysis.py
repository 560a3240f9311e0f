"""A local Artifact Analysis: the Grafeas v1 occurrences API subset pitstop calls, over REST.

Production code reaches it through the real client, only the endpoint differs:

    grafeas_v1.GrafeasClient(credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=local_analysis.url))

`GET /v1/projects/P/occurrences` with a filter naming one image digest's resource
URL, `https://HOST/P/REPO/IMAGE@sha256:…`, and optionally one kind:
`kind="VULNERABILITY" AND resourceUrl="…"` (or DISCOVERY, ATTESTATION). Other
filters are refused with INVALID_ARGUMENT rather than answered wrongly. Paging
follows pageSize and pageToken. Occurrences are shaped like Artifact Analysis's.

What an image "contains" is recorded when it is built (images.record_analysis:
`pitstop dev ship v4 --vuln CRITICAL --attest`); an image without a record
scans clean. Like Container Scanning, the scan is asynchronous: for
`scan_delay` seconds after the image was recorded its discovery occurrence
says PENDING and no vulnerability shows; then FINISHED_SUCCESS and the
findings. An attestation is made by the build itself, so it shows at once.
Occurrences live in the image's project (the registry's), as on GCP: asking
another project finds none.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import urllib.parse
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pitstop.core.scanpolicy import SEVERITIES
from pitstop.local.googleapi import GoogleApiHandler, LocalServer, invalid, not_found
from pitstop.local.images import ImageNotFound, read_analysis, resolve_image

log = logging.getLogger(__name__)

SCAN_DELAY_S = 1.0  # seconds from an image's build to its scan's results (GCP: a minute or a few)
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
VULNZ_NOTES = "projects/goog-vulnz/notes"  # where Artifact Analysis keeps a CVE's note
DISCOVERY_NOTE = "projects/goog-analysis/notes/PACKAGE_VULNERABILITY"
ATTESTOR_NOTE = "pitstop-attestor"  # the local attestor's note id, in the image's project
KINDS = frozenset({"VULNERABILITY", "BUILD", "IMAGE", "PACKAGE", "DEPLOYMENT", "DISCOVERY", "ATTESTATION",
                   "UPGRADE", "COMPLIANCE", "DSSE_ATTESTATION", "VULNERABILITY_ASSESSMENT", "SBOM_REFERENCE",
                   "SECRET"})  # grafeas NoteKind: any may be asked for; DISCOVERY, VULNERABILITY, ATTESTATION are here
_CVSS = {"CRITICAL": 9.8, "HIGH": 7.5, "MEDIUM": 5.3, "LOW": 3.3}  # typical base scores per severity
_RESOURCE = re.compile(r"^https://([^/@]+)/([^/@]+)/[^@]+@(sha256:[0-9a-f]{64})$")
_TERM = re.compile(r'^\s*(kind|resourceUrl)\s*=\s*"([^"]*)"\s*$')


def vulnerability(spec: str, index: int = 0) -> dict[str, Any]:
    """`SEVERITY[:CVE-ID[:PACKAGE]]` (a `--vuln` flag) as a recorded finding; the nth made-up CVE by default."""
    severity, _, rest = spec.strip().partition(":")
    cve, _, package = rest.partition(":")
    severity = severity.upper()
    if severity not in SEVERITIES:
        raise ValueError(f"a vulnerability is SEVERITY[:CVE-ID[:PACKAGE]] with a severity among "
                         f"{', '.join(SEVERITIES)}, got {spec!r}")
    return {"cve": cve.strip() or f"CVE-2099-{index + 1:04d}", "severity": severity,
            "package": package.strip() or "openssl", "cvss": _CVSS.get(severity)}


class LocalAnalysis(LocalServer):
    """The occurrences of the images in `state_dir`, as Artifact Analysis would list them."""

    def __init__(self, state_dir: Path | str, host: str = "127.0.0.1", port: int = 0,
                 scan_delay: float = SCAN_DELAY_S) -> None:
        super().__init__(_ApiHandler, host, port, "artifact analysis api")
        self.state_dir = Path(state_dir)
        self.scan_delay = scan_delay

    def start(self) -> LocalAnalysis:
        self._serve()
        log.info("local Artifact Analysis listening", extra={"url": self.url, "scan_delay": self.scan_delay})
        return self

    def list_occurrences(self, project: str, filter_: str, page_size: int, page_token: str,
                         now: float | None = None) -> dict[str, Any]:
        kind, resource_url = _parse_filter(filter_)
        found = [o for o in self.occurrences(resource_url, now) if kind in (None, o["kind"])]
        found = [o for o in found if o["name"].startswith(f"projects/{project}/")]
        if page_size < 0:
            raise invalid("page_size must not be negative.")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        start = _offset(page_token, filter_)
        answer: dict[str, Any] = {"occurrences": found[start:start + size]}
        if start + size < len(found):
            answer["nextPageToken"] = _token(start + size, filter_)
        return answer

    def occurrences(self, resource_url: str, now: float | None = None) -> list[dict[str, Any]]:
        """Every occurrence of the image at `resource_url` at time `now`: discovery, findings, attestation."""
        match = _RESOURCE.match(resource_url)
        if not match:
            return []  # not an image by digest: nothing was ever scanned under that URL
        _, project, digest = match.groups()
        try:
            manifest = resolve_image(self.state_dir, resource_url.removeprefix("https://"))
        except ImageNotFound:
            return []
        record = read_analysis(self.state_dir, digest) or {}
        scanned = float(record.get("scannedSince") or _mtime(self.state_dir, manifest.digest)) + self.scan_delay
        now = datetime.now(timezone.utc).timestamp() if now is None else now
        base = {"resourceUri": resource_url}

        def occurrence(kind: str, key: str, note: str, at: float, details: dict[str, Any]) -> dict[str, Any]:
            oid = uuid.uuid5(uuid.NAMESPACE_URL, f"{resource_url}#{kind}#{key}")
            return {"name": f"projects/{project}/occurrences/{oid}", **base, "noteName": note, "kind": kind,
                    "createTime": _time(at), "updateTime": _time(at), kind.lower(): details}

        done = now >= scanned
        found = [occurrence("DISCOVERY", "", DISCOVERY_NOTE, scanned - self.scan_delay, {
            "continuousAnalysis": "ACTIVE", "analysisStatus": "FINISHED_SUCCESS" if done else "PENDING",
            **({"lastScanTime": _time(scanned), "analysisCompleted": {"analysisType": ["OS"]}} if done else {})})]
        if done:
            findings = sorted(record.get("vulnerabilities") or [],
                              key=lambda v: (-SEVERITIES.index(v["severity"]), v["cve"]))
            found += [occurrence("VULNERABILITY", f"{v['cve']}#{v['package']}", f"{VULNZ_NOTES}/{v['cve']}",
                                 scanned, _vulnerability(v)) for v in findings]
        if record.get("attestedSince"):
            found.append(occurrence("ATTESTATION", "", f"projects/{project}/notes/{ATTESTOR_NOTE}",
                                    float(record["attestedSince"]),
                                    _attestation(resource_url.removeprefix("https://").split("@")[0], digest)))
        return found


def start_analysis(state_dir: Path | str, host: str = "127.0.0.1", port: int = 0,
                   scan_delay: float = SCAN_DELAY_S) -> LocalAnalysis:
    """Serve the local Artifact Analysis on host:port (0 = any free port); `.url`, `.stop()`."""
    return LocalAnalysis(state_dir, host, port, scan_delay).start()


# --- occurrences' details --------------------------------------------------------

def _vulnerability(v: dict[str, Any]) -> dict[str, Any]:
    version = {"name": "1.0.0", "revision": "1", "kind": "NORMAL", "fullName": "1.0.0-1"}
    fixed = {"name": "1.0.1", "revision": "1", "kind": "NORMAL", "fullName": "1.0.1-1"}
    details: dict[str, Any] = {
        "severity": v["severity"], "effectiveSeverity": v["severity"], "shortDescription": v["cve"],
        "fixAvailable": True, "cvssVersion": "CVSS_VERSION_3",
        "packageIssue": [{"affectedCpeUri": "cpe:/o:debian:debian_linux:12", "affectedPackage": v["package"],
                          "affectedVersion": version, "fixedCpeUri": "cpe:/o:debian:debian_linux:12",
                          "fixedPackage": v["package"], "fixedVersion": fixed, "fixAvailable": True,
                          "packageType": "OS", "effectiveSeverity": v["severity"]}],
        "relatedUrls": [{"url": f"https://security-tracker.debian.org/tracker/{v['cve']}", "label": "More Info"}]}
    if v.get("cvss"):
        details["cvssScore"] = v["cvss"]
        details["cvssv3"] = {"baseScore": v["cvss"]}
    return details


def _attestation(repository: str, digest: str) -> dict[str, Any]:
    """A Binary Authorization attestation: a simple-signing payload and a (made-up) signature."""
    payload = {"critical": {"identity": {"docker-reference": repository},
                            "image": {"docker-manifest-digest": digest},
                            "type": "Google cloud binauthz container signature"}}
    return {"serializedPayload": base64.b64encode(json.dumps(payload).encode()).decode(),
            "signatures": [{"signature": base64.b64encode(b"local").decode(),
                            "publicKeyId": f"local://{ATTESTOR_NOTE}"}]}


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _mtime(state_dir: Path, digest: str) -> float:
    """When an image with no recorded analysis was registered: its manifest's time."""
    algorithm, _, hex_part = digest.partition(":")
    return (state_dir / "images" / f"{algorithm}-{hex_part}.json").stat().st_mtime


# --- requests --------------------------------------------------------------------

def _parse_filter(text: str) -> tuple[str | None, str]:
    """(kind or None, resource URL) of `kind="K" AND resourceUrl="U"` (either order, kind optional)."""
    terms: dict[str, str] = {}
    for term in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        match = _TERM.match(term)
        if not match or match.group(1) in terms:
            raise invalid(f"Invalid filter {text!r}: the local Artifact Analysis supports "
                          '`resourceUrl="URL"`, optionally AND `kind="KIND"`, each once.')
        terms[match.group(1)] = match.group(2)
    if "resourceUrl" not in terms:
        raise invalid(f"Invalid filter {text!r}: the local Artifact Analysis lists one image's occurrences, "
                      'and needs resourceUrl="https://HOST/PROJECT/REPO/IMAGE@sha256:…".')
    kind = terms.get("kind")
    if kind is not None and kind not in KINDS:
        raise invalid(f"Invalid filter {text!r}: unknown kind {kind!r}.")
    return kind, terms["resourceUrl"]


def _token(offset: int, filter_: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset, "filter": filter_}).encode()).decode()


def _offset(token: str, filter_: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset, same = int(data["offset"]), data["filter"] == filter_
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise invalid("Invalid page_token.") from None
    if not same or offset < 0:
        raise invalid("The page_token does not belong to this filter.")
    return offset


class _ApiHandler(GoogleApiHandler):
    log = log
    api_name = "the local Artifact Analysis"

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parts.path)
        self._answer(path, lambda: self._route(path, urllib.parse.parse_qs(parts.query)))

    def _route(self, path: str, query: dict[str, list[str]]) -> dict[str, Any]:
        analysis: LocalAnalysis = self.server.owner  # type: ignore[attr-defined]
        match = re.match(r"^/v1/projects/([^/:]+)/occurrences$", path)
        if not match:
            raise not_found(f"No such method: GET {path}")
        first = {key: values[0] for key, values in query.items()}
        try:
            page_size = int(first.get("pageSize") or 0)
        except ValueError:
            raise invalid(f"Invalid pageSize {first['pageSize']!r}.") from None
        return analysis.list_occurrences(match.group(1), first.get("filter", ""), page_size,
                                         first.get("pageToken", ""))
