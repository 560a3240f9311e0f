"""Local "container images": named manifests that say which command to run.

There is no Docker here, so an image is a small JSON manifest kept in the state
directory: the entrypoint (`command`), its default `args` and `env`. Its digest
is a well-formed `sha256:<64 hex>` computed from that content, so the same
content always gets the same digest, as a registry would. A manifest resolves by
`repo[:tag]` (no tag means `latest`) and by `repo@sha256:...`.

What a scanner would find in an image is recorded next to its manifest
(`record_analysis`), for the local Artifact Analysis (analysis.py) to report.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path


class ImageNotFound(LookupError):
    """No manifest answers this image reference."""

    def __init__(self, image_ref: str) -> None:
        super().__init__(f"Image '{image_ref}' not found.")
        self.image_ref = image_ref


@dataclass(frozen=True)
class ImageManifest:
    digest: str
    command: list[str]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    repos: list[str] = field(default_factory=list)  # repositories holding this digest


def register_image(
    state_dir: Path | str,
    name: str,
    command: list[str],
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Store a manifest under `name` (`repo[:tag]`) and return its digest."""
    args, env = list(args or []), dict(env or {})
    repo, tag = _split_name(name)
    content = json.dumps({"command": command, "args": args, "env": env}, sort_keys=True)
    digest = "sha256:" + hashlib.sha256(content.encode()).hexdigest()
    images = _images_dir(state_dir)
    existing = _read_manifest(images, digest)
    repos = sorted(set(existing.repos if existing else []) | {repo})
    manifest = ImageManifest(digest=digest, command=list(command), args=args, env=env, repos=repos)
    _write_atomically(images / _digest_file(digest), json.dumps(manifest.__dict__))
    _write_atomically(images / "tags" / urllib.parse.quote(f"{repo}:{tag}", safe=""), digest)
    return digest


def resolve_image(state_dir: Path | str, image_ref: str) -> ImageManifest:
    """The manifest `image_ref` names; raises ImageNotFound."""
    images = _images_dir(state_dir)
    if "@" in image_ref:
        repo_and_tag, digest = image_ref.split("@", 1)
        repo, _ = _split_name(repo_and_tag)  # `repo:tag@digest` is pinned by the digest
        manifest = _read_manifest(images, digest)
        if manifest is None or repo not in manifest.repos:
            raise ImageNotFound(image_ref)
        return manifest
    repo, tag = _split_name(image_ref)
    tag_file = images / "tags" / urllib.parse.quote(f"{repo}:{tag}", safe="")
    try:
        digest = tag_file.read_text().strip()
    except FileNotFoundError:
        raise ImageNotFound(image_ref) from None
    manifest = _read_manifest(images, digest)
    if manifest is None:
        raise ImageNotFound(image_ref)
    return manifest


def record_analysis(state_dir: Path | str, digest: str, vulnerabilities: list[dict], attested: bool = False,
                    now: float | None = None) -> None:
    """Record what scanning `digest` finds (`vulnerabilities`, as analysis.vulnerability makes them) and
    whether it is attested, each since `now` (epoch seconds). Recording the same findings again keeps
    their time, as a registry does not rescan a digest it has; an attestation keeps its first time."""
    now = time.time() if now is None else now
    previous = read_analysis(state_dir, digest) or {}
    same = previous.get("vulnerabilities") == vulnerabilities
    record = {"scannedSince": previous["scannedSince"] if same else now, "vulnerabilities": vulnerabilities,
              "attestedSince": (previous.get("attestedSince") or now) if attested else None}
    _write_atomically(_images_dir(state_dir) / _analysis_file(digest), json.dumps(record))


def read_analysis(state_dir: Path | str, digest: str) -> dict | None:
    """The recorded analysis of `digest` ({scannedSince, vulnerabilities, attestedSince}), or None."""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return None
    try:
        return json.loads((_images_dir(state_dir) / _analysis_file(digest)).read_text())
    except FileNotFoundError:
        return None


def _analysis_file(digest: str) -> str:
    return _digest_file(digest).removesuffix(".json") + ".analysis.json"


def _split_name(name: str) -> tuple[str, str]:
    """`host:port/path/repo:tag` -> (`host:port/path/repo`, `tag`); a colon before the last `/` is a port."""
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"


def _images_dir(state_dir: Path | str) -> Path:
    path = Path(state_dir) / "images"
    (path / "tags").mkdir(parents=True, exist_ok=True)
    return path


def _digest_file(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}-{hex_part}.json"


def _read_manifest(images: Path, digest: str) -> ImageManifest | None:
    if not digest.startswith("sha256:") or len(digest) != 71:
        return None
    try:
        return ImageManifest(**json.loads((images / _digest_file(digest)).read_text()))
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    # Another process (the demo's "build") may register while the cloud reads.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
