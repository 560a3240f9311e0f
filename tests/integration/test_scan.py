"""The scan adapter against the local Artifact Analysis, through the real grafeas REST client.

Images are "built" as `pitstop dev ship` builds them (build.build_image with
`vulns` and `attest`); their findings show only once the stand-in's scan delay
has passed, as Container Scanning's do.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from google.api_core import exceptions

from pitstop.core.scanpolicy import Finding, verdict
from pitstop.gcp import scan as scan_module
from pitstop.gcp.scan import Scanner, ScanError, image_project, resource_url
from pitstop.local.analysis import ATTESTOR_NOTE, LocalAnalysis, start_analysis
from pitstop.local.build import build_image
from pitstop.local.cloudbuild import start_cloudbuild
from pitstop.local.images import read_analysis

PROJECT = "scan-test"
DELAY = 0.3
TODAY = date(2026, 11, 1)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("analysis")


@pytest.fixture(scope="module")
def analysis(state: Path) -> Iterator[LocalAnalysis]:
    with start_analysis(state, scan_delay=DELAY) as server:
        yield server


@pytest.fixture(scope="module")
def scanner(analysis: LocalAnalysis) -> Scanner:
    return Scanner.from_endpoint(analysis.url)


@pytest.fixture(scope="module")
def slow(state: Path) -> Iterator[Scanner]:
    """The same images seen by an Artifact Analysis whose scans take a minute: pending, whatever the load."""
    with start_analysis(state, scan_delay=60) as server:
        yield Scanner.from_endpoint(server.url)


def by_digest(name: str, digest: str) -> str:
    return f"{name}@{digest}"  # `repo:tag@sha256:…`, as a build reports it; the adapter drops the tag


def built(state: Path, version: str, **kwargs: object) -> str:
    name, digest = build_image(state, PROJECT, "web", version, **kwargs)
    return by_digest(name, digest)


def test_a_clean_image_is_pending_then_finished_with_nothing_found(state: Path, scanner: Scanner,
                                                                  slow: Scanner) -> None:
    image = built(state, "v1")
    first = slow.scan(None, image)
    assert (first.finished, first.status, first.findings, first.pending) == (False, "PENDING", [], True)
    assert not verdict(first, today=TODAY).ok

    done = scanner.wait(None, image, timeout_s=10, poll_s=0.1)
    assert (done.finished, done.status, done.findings, done.attested) == (True, "FINISHED_SUCCESS", [], None)
    assert verdict(done, today=TODAY) == (True, "no vulnerabilities at or above CRITICAL", [], [], [])


def test_a_vulnerable_image_is_refused_naming_its_cves(state: Path, scanner: Scanner) -> None:
    image = built(state, "v4", vulns=["CRITICAL", "HIGH:CVE-2024-1111:libc", "low:CVE-2024-2222"])
    found = scanner.wait(PROJECT, image, timeout_s=10, poll_s=0.1)
    assert found.finished
    assert found.findings == [Finding("CVE-2099-0001", "CRITICAL", "openssl", fixed=True, cvss=9.8),
                              Finding("CVE-2024-1111", "HIGH", "libc", fixed=True, cvss=7.5),
                              Finding("CVE-2024-2222", "LOW", "openssl", fixed=True, cvss=3.3)]
    v = verdict(found, today=TODAY)
    assert not v.ok and v.reason == "1 vulnerability at or above CRITICAL: CVE-2099-0001 (CRITICAL, openssl)"
    assert verdict(found, today=TODAY, allow=[("CVE-2099-0001", date(2027, 1, 1))]).ok
    assert [f.cve for f in verdict(found, today=TODAY, severity="HIGH").blocking] == ["CVE-2099-0001",
                                                                                       "CVE-2024-1111"]


def test_wait_gives_up_in_time(state: Path, slow: Scanner) -> None:
    image = built(state, "v5", vulns=["CRITICAL"])
    started = time.monotonic()
    pending = slow.wait(None, image, timeout_s=0.5, poll_s=0.1)
    assert 0.4 < time.monotonic() - started < 5
    assert (pending.finished, pending.status, pending.findings) == (False, "PENDING", [])
    assert "has not finished (PENDING)" in verdict(pending, today=TODAY).reason


def test_shipping_the_same_image_again_does_not_rescan_it(state: Path, scanner: Scanner, slow: Scanner) -> None:
    image = built(state, "v6", vulns=["HIGH"])
    assert scanner.wait(None, image, timeout_s=10, poll_s=0.1).finished
    digest = image.split("@")[1]
    since = read_analysis(state, digest)["scannedSince"]
    assert built(state, "v6", vulns=["HIGH"]) == image
    assert read_analysis(state, digest)["scannedSince"] == since and scanner.scan(None, image).finished
    built(state, "v6", vulns=["CRITICAL"])  # other findings: a new scan, pending again
    assert read_analysis(state, digest)["scannedSince"] > since and slow.scan(None, image).status == "PENDING"


def test_attestations(state: Path, scanner: Scanner) -> None:
    attested = built(state, "v7", attest=True)
    plain = built(state, "v8")
    assert scanner.scan(None, attested, attestation=True).attested is True  # at once: the build made it
    assert scanner.scan(None, plain, attestation=True).attested is False
    assert scanner.scan(None, attested).attested is None  # not asked
    note = f"projects/{PROJECT}/notes/{ATTESTOR_NOTE}"
    assert scanner.scan(None, attested, attestation=True, attestor=note).attested is True
    other = f"projects/{PROJECT}/notes/someone-else"
    assert scanner.scan(None, attested, attestation=True, attestor=other).attested is False
    done = scanner.wait(None, plain, timeout_s=10, poll_s=0.1, attestation=True)
    v = verdict(done, today=TODAY, require_attestation=True)
    assert not v.ok and v.reason.endswith("no attestation for the image, and one is required")


def test_occurrences_live_in_the_images_project(state: Path, scanner: Scanner) -> None:
    image = built(state, "v9", vulns=["CRITICAL"])
    assert image_project(image) == PROJECT
    assert resource_url(image) == (f"https://us-central1-docker.pkg.dev/{PROJECT}/apps/web@"
                                   f"{image.split('@')[1]}")
    elsewhere = scanner.scan("another-project", image)
    assert (elsewhere.finished, elsewhere.status) == (False, "")  # no discovery there: never scanned
    assert "no discovery occurrence" in verdict(elsewhere, today=TODAY).reason
    unknown = re.sub(r"@sha256:\w+", "@sha256:" + "0" * 64, image)
    assert scanner.scan(None, unknown).status == ""


def test_the_adapter_reads_every_page(state: Path, scanner: Scanner, monkeypatch: pytest.MonkeyPatch) -> None:
    image = built(state, "v10", vulns=["CRITICAL", "HIGH", "MEDIUM"])
    scanner.wait(None, image, timeout_s=10, poll_s=0.1)
    monkeypatch.setattr(scan_module, "PAGE_SIZE", 1)
    assert [f.severity for f in scanner.scan(None, image).findings] == ["CRITICAL", "HIGH", "MEDIUM"]
    monkeypatch.setattr(scan_module, "MAX_PAGES", 2)
    with pytest.raises(ScanError, match="more than 2 occurrences") as err:
        scanner.scan(None, image)
    assert err.value.permanent


def test_the_stand_in_refuses_filters_it_cannot_answer(state: Path, analysis: LocalAnalysis,
                                                      scanner: Scanner) -> None:
    image = built(state, "v11")
    url = resource_url(image)
    for bad in ('severity="CRITICAL"', 'kind="VULNERABILITY"', f'kind="NOPE" AND resourceUrl="{url}"',
                f'kind="VULNERABILITY" OR resourceUrl="{url}"', ""):
        with pytest.raises(exceptions.BadRequest, match="Invalid filter"):  # REST: 400 INVALID_ARGUMENT
            list(scanner.client.list_occurrences(parent=f"projects/{PROJECT}", filter=bad))
    kinds = [o.kind.name for o in scanner.client.list_occurrences(parent=f"projects/{PROJECT}",
                                                                    filter=f'resourceUrl="{url}"')]
    assert kinds == ["DISCOVERY"]


def test_errors_say_whether_retrying_can_help(state: Path) -> None:
    with pytest.raises(ScanError, match="not an image by digest") as err:
        Scanner.from_endpoint("http://127.0.0.1:1").scan(None, "us-central1-docker.pkg.dev/p/apps/web:v1")
    assert err.value.permanent
    image = built(state, "v12")
    with start_cloudbuild(state, PROJECT) as cloud_build:  # answers NOT_FOUND: no such method there
        with pytest.raises(ScanError, match="NOT_FOUND") as err:
            Scanner.from_endpoint(cloud_build.url).scan(None, image)
        assert err.value.permanent
    closed = start_analysis(state)
    closed.stop()
    with pytest.raises(ScanError, match="ConnectionError") as err:
        Scanner.from_endpoint(closed.url).scan(None, image)
    assert not err.value.permanent


def test_bad_vulnerabilities_are_refused_at_build_time(state: Path) -> None:
    with pytest.raises(ValueError, match="SEVERITY"):
        build_image(state, PROJECT, "web", "v13", vulns=["SEVERE"])


@pytest.mark.emulators
def test_dev_ship_records_what_the_scan_finds(emulators, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from pitstop.local.cloudbuild import read_build
    from pitstop.local.wiring import create_topics
    from pitstop.surfaces.cli import _config, app

    create_topics(emulators.project, ["cloud-builds"])
    env = {**emulators.env, "GOOGLE_CLOUD_PROJECT": emulators.project, "PITSTOP_LOCAL_STATE": str(tmp_path),
           "PITSTOP_USE_GCP": "1"}  # not a dev stack's .pitstop/dev.env that may exist here

    def dev_ship(*args: str):  # type: ignore[no-untyped-def]
        _config.cache_clear()
        return CliRunner().invoke(app, ["dev", "ship", *args], env=env)

    result = dev_ship("v4", "--vuln", "CRITICAL", "--vuln", "HIGH:CVE-2024-1234", "--attest")
    assert result.exit_code == 0, result.output
    assert "its scan finds: CVE-2099-0001 (CRITICAL, openssl), CVE-2024-1234 (HIGH, openssl); attested" \
        in result.output
    build = read_build(tmp_path, re.search(r"build ([0-9a-f-]{36})", result.output).group(1))
    image = build["results"]["images"][0]
    with start_analysis(tmp_path, scan_delay=0) as server:
        found = Scanner.from_endpoint(server.url).scan(None, f"{image['name']}@{image['digest']}", attestation=True)
    assert [(f.cve, f.severity) for f in found.findings] == [("CVE-2099-0001", "CRITICAL"),
                                                             ("CVE-2024-1234", "HIGH")]
    assert found.attested is True

    refused = dev_ship("v5", "--vuln", "SEVERE")
    assert refused.exit_code == 1 and "--vuln" in refused.output
