"""The vulnerability gate's rules: threshold, allowlist and its expiry, unrated findings, attestation."""

from __future__ import annotations

from datetime import date

import pytest

from pitstop.core.scanpolicy import Allowance, Finding, Scan, parse_allowance, verdict

TODAY = date(2026, 11, 1)
CRIT = Finding("CVE-2024-1234", "CRITICAL", "openssl", fixed=True, cvss=9.8)
HIGH = Finding("CVE-2024-2222", "HIGH", "libc", cvss=7.5)
LOW = Finding("CVE-2024-3333", "LOW", "zlib", cvss=3.1)


def scanned(*findings: Finding, attested: bool | None = None) -> Scan:
    return Scan(finished=True, findings=list(findings), attested=attested, status="FINISHED_SUCCESS")


def test_a_clean_image_passes_and_says_so() -> None:
    ok, reason, blocking, allowed, expired = verdict(scanned(), today=TODAY)
    assert ok and (blocking, allowed, expired) == ([], [], [])
    assert reason == "no vulnerabilities at or above CRITICAL"


def test_findings_at_or_above_the_limit_block_and_are_named_with_their_severity() -> None:
    v = verdict(scanned(CRIT, HIGH, LOW), today=TODAY)
    assert not v.ok and v.blocking == [CRIT]
    assert v.reason == "1 vulnerability at or above CRITICAL: CVE-2024-1234 (CRITICAL, openssl)"

    v = verdict(scanned(CRIT, HIGH, LOW), today=TODAY, severity="high")
    assert not v.ok and v.blocking == [CRIT, HIGH]
    assert v.reason.startswith("2 vulnerabilities at or above HIGH: CVE-2024-1234 (CRITICAL, openssl), "
                               "CVE-2024-2222 (HIGH, libc)")

    v = verdict(scanned(HIGH, LOW), today=TODAY)
    assert v.ok and v.reason == "no vulnerabilities at or above CRITICAL (2 below)"


def test_an_allowlisted_cve_passes_until_its_date_inclusive() -> None:
    allow = [("cve-2024-1234", date(2026, 11, 1))]
    v = verdict(scanned(CRIT), today=TODAY, allow=allow)
    assert v.ok and v.allowed == [(CRIT, date(2026, 11, 1))] and v.blocking == []
    assert v.reason == "no vulnerabilities at or above CRITICAL; allowlisted: CVE-2024-1234 (until 2026-11-01)"

    v = verdict(scanned(CRIT), today=date(2026, 11, 2), allow=allow)
    assert not v.ok and v.blocking == [CRIT] and v.expired == [(CRIT, date(2026, 11, 1))] and v.allowed == []
    assert v.reason == ("1 vulnerability at or above CRITICAL: CVE-2024-1234 (CRITICAL, openssl); "
                        "expired allowlist entries: CVE-2024-1234 (expired 2026-11-01)")


def test_an_allowlist_lets_through_only_what_it_names() -> None:
    other = Finding("CVE-2025-0001", "CRITICAL", "curl")
    v = verdict(scanned(CRIT, other), today=TODAY, allow=[Allowance("CVE-2024-1234", date(2027, 1, 1))])
    assert not v.ok and v.blocking == [other]
    assert v.reason == ("1 vulnerability at or above CRITICAL: CVE-2025-0001 (CRITICAL, curl); "
                        "allowlisted: CVE-2024-1234 (until 2027-01-01)")


def test_of_two_entries_for_a_cve_the_later_one_counts() -> None:
    allow = [("CVE-2024-1234", date(2026, 1, 1)), ("CVE-2024-1234", date(2027, 1, 1))]
    assert verdict(scanned(CRIT), today=TODAY, allow=allow).ok


def test_an_unrated_finding_is_rated_by_its_cvss_score_or_else_blocks() -> None:
    by_score = Finding("CVE-2026-0001", "SEVERITY_UNSPECIFIED", "glibc", cvss=9.1)
    low_score = Finding("CVE-2026-0002", "SEVERITY_UNSPECIFIED", "glibc", cvss=5.0)
    unknown = Finding("CVE-2026-0003", "SEVERITY_UNSPECIFIED", "glibc")
    v = verdict(scanned(by_score, low_score, unknown), today=TODAY)
    assert v.blocking == [by_score, unknown]
    assert "CVE-2026-0001 (CVSS 9.1: CRITICAL, glibc)" in v.reason
    assert "CVE-2026-0003 (unrated, no CVSS score, glibc)" in v.reason
    # even at the lowest limit an unrated finding blocks, until allowlisted
    assert verdict(scanned(unknown), today=TODAY, allow=[("CVE-2026-0003", TODAY)]).ok


def test_an_unfinished_scan_never_passes_and_says_why() -> None:
    pending = Scan(finished=False, status="PENDING")
    assert pending.pending
    v = verdict(pending, today=TODAY)
    assert not v.ok and "has not finished (PENDING)" in v.reason
    none_yet = verdict(Scan(finished=False), today=TODAY)
    assert not none_yet.ok and "no discovery occurrence" in none_yet.reason
    failed = Scan(finished=False, status="FINISHED_FAILED", error="layer too large")
    assert not failed.pending
    assert verdict(failed, today=TODAY).reason == "the vulnerability scan of the image failed: layer too large"


def test_a_required_attestation_must_be_there() -> None:
    v = verdict(scanned(attested=False), today=TODAY, require_attestation=True)
    assert not v.ok and v.reason == ("no vulnerabilities at or above CRITICAL; no attestation for the image, "
                                     "and one is required")
    assert not verdict(scanned(), today=TODAY, require_attestation=True).ok  # not looked up: not there
    v = verdict(scanned(attested=True), today=TODAY, require_attestation=True)
    assert v.ok and v.reason.endswith("; attested")
    assert verdict(scanned(attested=False), today=TODAY).ok  # not required


def test_a_long_list_is_cut_in_the_reason_but_not_in_the_verdict() -> None:
    many = [Finding(f"CVE-2024-{i:04d}", "CRITICAL", "pkg") for i in range(25)]
    v = verdict(scanned(*many), today=TODAY)
    assert len(v.blocking) == 25 and v.reason.endswith("and 15 more") and len(v.reason) < 400


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="severity must be one of"):
        verdict(scanned(), today=TODAY, severity="SEVERE")
    assert parse_allowance("CVE-2024-1234:2027-01-01") == Allowance("CVE-2024-1234", date(2027, 1, 1))
    for text in ("CVE-2024-1234", "CVE-2024-1234:soon", ":2027-01-01"):
        with pytest.raises(ValueError, match="CVE-ID:YYYY-MM-DD"):
            parse_allowance(text)
