"""A stand-in for a Cloud Build run: "build" a version of a local app and
publish the messages Cloud Build would publish to `cloud-builds`.

The "image" is a local manifest (see images.py) whose env sets the version's
behaviour; its digest goes into `results.images` exactly as Cloud Build reports
it, so pitstop deploys it by digest like any real build. What scanning the image
finds (`vulns`) and whether it is attested (`attest`) are recorded for the local
Artifact Analysis (analysis.py).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

from pitstop.local.analysis import vulnerability
from pitstop.local.cloudbuild import record_build
from pitstop.local.images import record_analysis, register_image
from pitstop.local.payloads import cloud_build
from pitstop.local.wiring import publish

EXAMPLE_APP = Path(__file__).resolve().parents[3] / "examples" / "web" / "app.py"


def image_name(project: str, repo: str, version: str) -> str:
    return f"us-central1-docker.pkg.dev/{project}/apps/{repo}:{version}"


def build_image(state_dir: Path, project: str, repo: str, version: str, env: dict[str, str] | None = None,
                app: Path = EXAMPLE_APP, *, vulns: Iterable[str] = (), attest: bool = False) -> tuple[str, str]:
    """Register the version's image; returns (image name, digest).

    `vulns`: what scanning it finds, each `SEVERITY[:CVE-ID[:PACKAGE]]` (ValueError otherwise); none scans
    clean. `attest`: it gets a Binary Authorization attestation.
    """
    findings = [vulnerability(spec, i) for i, spec in enumerate(vulns)]
    name = image_name(project, repo, version)
    # CMD-style, as a Dockerfile's `CMD ["python", "app.py"]`: a job's args (`python migrate.py`) replace it.
    digest = register_image(state_dir, name, command=[], args=[sys.executable, str(app)],
                            env={"APP_VERSION": version, **(env or {})})
    record_analysis(state_dir, digest, findings, attest)
    return name, digest


def ship(state_dir: Path, project: str, repo: str, version: str, env: dict[str, str] | None = None,
         branch: str | None = "main", app: Path = EXAMPLE_APP, fail: bool = False, trigger: str = "build-web",
         tag: str | None = None, vulns: Iterable[str] = (), attest: bool = False) -> str:
    """Build and publish QUEUED, WORKING, then SUCCESS (or FAILURE); returns the build id.

    A branch build (the default: `branch`, "main") carries BRANCH_NAME; a tag build (`tag` given) carries
    TAG_NAME and no BRANCH_NAME, as Cloud Build reports a tag trigger's build (`branch` is then ignored).
    REF_NAME is the branch or the tag either way; `version` is the image tag and `_VERSION`.
    `vulns` and `attest`: what the image's scan finds, and its attestation (see build_image).

    Each status is recorded for the local Cloud Build API (cloudbuild.record_build) before it is
    published, so a consumer that fetches the announced build finds it.
    """
    if tag is not None and not tag:
        raise ValueError("a tag build needs a tag name")
    if tag is None and not branch:
        raise ValueError("a build needs a branch or a tag")
    name, digest = build_image(state_dir, project, repo, version, env, app, vulns=vulns, attest=attest)
    build_id = str(uuid.uuid4())
    for status in ("QUEUED", "WORKING", "FAILURE" if fail else "SUCCESS"):
        body = cloud_build(status, build_id=build_id, project=project, repo=repo, branch=None if tag else branch,
                           tag=tag, image=name, digest=digest, trigger=trigger, substitutions={"_VERSION": version})
        record_build(state_dir, body)
        publish(project, "cloud-builds", json.dumps(body).encode(), buildId=build_id, status=status)
    return build_id
