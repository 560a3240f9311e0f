"""The vulnerability gate's policy: may an image with these scan findings be deployed?

Pure: the scan comes in as data (gcp/scan.py reads it from Artifact Analysis) and
the date as an argument, so the same findings always get the same verdict.

Rules, in order:
- A scan that has not finished never passes: the findings of an unfinished (or
  failed) analysis are not the image's findings. The caller waits for it, or refuses.
- A finding at or above `severity` blocks, unless an allowlist entry names its
  CVE and has not expired (an entry is valid through its `until` date, inclusive).
  An expired entry allows nothing, and the reason says it expired.
- Severity order: MINIMAL < LOW < MEDIUM < HIGH < CRITICAL. A finding the scanner
  left unrated (SEVERITY_UNSPECIFIED: the distro and the CVE's note give none,
  as happens to CVEs published days ago) is rated from its CVSS score with
  CVSS v3's bands (9.0 CRITICAL, 7.0 HIGH, 4.0 MEDIUM, 0.1 LOW); without a score it
  blocks at any threshold (fail closed: nothing says it is below the limit), and can be
  allowlisted like any other.
- `require_attestation`: without an attestation for the digest the image is
  refused, whatever its findings (presence only: Binary Authorization checks signatures).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

SEVERITIES = ("MINIMAL", "LOW", "MEDIUM", "HIGH", "CRITICAL")  # ascending, as Artifact Analysis's Severity
UNRATED = "SEVERITY_UNSPECIFIED"
_CVSS_BANDS = ((9.0, "CRITICAL"), (7.0, "HIGH"), (4.0, "MEDIUM"), (0.1, "LOW"))
FINAL = frozenset({"FINISHED_SUCCESS", "FINISHED_FAILED", "FINISHED_UNSUPPORTED"})  # analysis statuses
MAX_LISTED = 10  # findings named in a reason; the rest are counted (reasons end up in audit documents)


@dataclass(frozen=True)
class Finding:
    """One vulnerability occurrence: its CVE (or other advisory id) in `package`."""

    cve: str
    severity: str  # one of SEVERITIES, or UNRATED
    package: str = ""
    fixed: bool = False  # a fixed version is available
    cvss: float | None = None

    @property
    def rating(self) -> str | None:
        """The severity the gate uses: the scanner's, else the CVSS band's; None when there is neither."""
        if self.severity in SEVERITIES:
            return self.severity
        if self.cvss:
            return next(name for floor, name in (*_CVSS_BANDS, (0.0, "MINIMAL")) if self.cvss >= floor)
        return None


@dataclass(frozen=True)
class Scan:
    """What Artifact Analysis says about one image digest."""

    finished: bool  # the analysis finished successfully: `findings` are the image's
    findings: list[Finding] = field(default_factory=list)
    attested: bool | None = None  # None: not looked up
    status: str = ""  # the discovery's analysisStatus (PENDING, SCANNING, FINISHED_…); "" none yet
    error: str = ""  # why the analysis failed, when it says

    @property
    def pending(self) -> bool:
        """Still worth waiting for: no analysis yet, or one under way (not a failed or unsupported one)."""
        return not self.finished and self.status not in FINAL


@dataclass(frozen=True)
class Allowance:
    """An allowlist entry: `cve` may be deployed through `until` (inclusive)."""

    cve: str
    until: date

    def __post_init__(self) -> None:
        if not self.cve.strip():
            raise ValueError("an allowlist entry needs a CVE id")
        object.__setattr__(self, "cve", self.cve.strip().upper())


class Verdict(NamedTuple):
    ok: bool
    reason: str
    blocking: list[Finding]  # at or above the limit and not allowed (expired entries' findings too)
    allowed: list[tuple[Finding, date]]  # at or above the limit, allowlisted until the date
    expired: list[tuple[Finding, date]]  # at or above the limit, allowlisted until a date now past


def parse_allowance(text: str) -> Allowance:
    """`CVE-2024-1234:2027-01-01` (as a spec or a flag would say it) as an Allowance; ValueError if not."""
    cve, _, until = text.strip().rpartition(":")
    try:
        return Allowance(cve, date.fromisoformat(until))  # no ':' leaves `until` the whole text: refused
    except ValueError:
        raise ValueError(f"an allowlist entry is CVE-ID:YYYY-MM-DD, got {text!r}") from None


def severity_limit(severity: str) -> str:
    """`severity` as a threshold name (any case); ValueError names the valid ones."""
    name = severity.strip().upper()
    if name not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    return name


def verdict(scan: Scan, *, today: date, severity: str = "CRITICAL",
            allow: Iterable[Allowance | tuple[str, date]] = (), require_attestation: bool = False) -> Verdict:
    """May the scanned image be deployed? `allow`: Allowance or (cve, until) entries."""
    limit = severity_limit(severity)
    if not scan.finished:
        return Verdict(False, _unfinished(scan), [], [], [])
    entries: dict[str, date] = {}
    for entry in allow:
        a = entry if isinstance(entry, Allowance) else Allowance(*entry)
        entries[a.cve] = max(a.until, entries.get(a.cve, a.until))  # the longest-lived entry for a CVE wins
    blocking, allowed, expired = [], [], []
    below = 0
    for finding in scan.findings:
        rating = finding.rating
        if rating is not None and SEVERITIES.index(rating) < SEVERITIES.index(limit):
            below += 1
            continue
        until = entries.get(finding.cve.upper())
        if until is not None and today <= until:
            allowed.append((finding, until))
            continue
        if until is not None:
            expired.append((finding, until))
        blocking.append(finding)
    missing_attestation = require_attestation and scan.attested is not True

    parts = [_blocking(blocking, limit) if blocking else _clean(limit, below)]
    if allowed:
        parts.append("allowlisted: " + _listed([f"{f.cve} (until {d.isoformat()})" for f, d in allowed]))
    if expired:
        parts.append("expired allowlist entries: "
                     + _listed([f"{f.cve} (expired {d.isoformat()})" for f, d in expired]))
    if missing_attestation:
        parts.append("no attestation for the image, and one is required")
    elif require_attestation:
        parts.append("attested")
    return Verdict(not blocking and not missing_attestation, "; ".join(parts), blocking, allowed, expired)


def _unfinished(scan: Scan) -> str:
    if not scan.status:
        return ("no vulnerability scan of the image yet (no discovery occurrence: scanning may not have started, "
                "or the Container Scanning API is not enabled)")
    if scan.status == "FINISHED_FAILED":
        return f"the vulnerability scan of the image failed{': ' + scan.error if scan.error else ''}"
    if scan.status == "FINISHED_UNSUPPORTED":
        return "the image cannot be scanned for vulnerabilities (FINISHED_UNSUPPORTED: an unsupported OS or format)"
    return f"the vulnerability scan of the image has not finished ({scan.status})"


def _blocking(blocking: list[Finding], limit: str) -> str:
    count = f"{len(blocking)} vulnerabilit{'y' if len(blocking) == 1 else 'ies'}"
    named = [f"{f.cve} ({_rated(f)}{', ' + f.package if f.package else ''})" for f in blocking]
    return f"{count} at or above {limit}: {_listed(named)}"


def _rated(finding: Finding) -> str:
    rating = finding.rating
    if rating is None:
        return "unrated, no CVSS score"
    return rating if rating == finding.severity else f"CVSS {finding.cvss:g}: {rating}"


def _clean(limit: str, below: int) -> str:
    return f"no vulnerabilities at or above {limit}" + (f" ({below} below)" if below else "")


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
