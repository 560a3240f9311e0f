"""A local Cloud Build: the API subset pitstop calls, over REST.

Production code reaches it through the real client, only the endpoint differs:

    cloudbuild_v1.CloudBuildClient(credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=local_cloud_build.url))

Builds: get (global `projects/P/builds/ID` and regional
`projects/P/locations/L/builds/ID`); triggers: run (both forms); long-running
operations: get. Answers are the JSON Cloud Build publishes on `cloud-builds`;
errors are Google's JSON error body.

Builds live as files, `state_dir/cloudbuild/builds/{id}.json`, so every process
of the local stack sees the same ones: `record_build` is how the stand-in's
"builds" (`pitstop dev ship`, build.ship) and this server's trigger runs make a
build known to the API. A build of another project is NOT_FOUND, as on GCP. A
build that names its location (`name`: projects/P/locations/L/builds/ID, as the
ones this server starts do) is found only under that location (`global`
through the global path), as on GCP; one recorded without a `name` is found
through either path.

Triggers live in `state_dir/cloudbuild/triggers.json` (`register_trigger`) and
belong to the server's project. Running one "builds" the example app for the
trigger's repo (build.build_image), answers the queued build at once in the
operation's metadata, then moves it to WORKING and SUCCESS, each recorded and
published to `cloud-builds` like Cloud Build does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from pitstop.local.googleapi import GoogleApiHandler, LocalServer, invalid, not_found
from pitstop.local.payloads import cloud_build
from pitstop.local.wiring import publish

log = logging.getLogger(__name__)

TOPIC = "cloud-builds"
STEP_S = 0.2  # seconds a triggered build spends QUEUED, then WORKING
METADATA_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata"
BUILD_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.Build"
DONE = frozenset({"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"})
UNKNOWN = 2  # google.rpc.Code, for a failed build's operation

_BUILD_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")


# --- state shared through files ------------------------------------------------

def _dir(state_dir: Path | str) -> Path:
    return Path(state_dir) / "cloudbuild"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_build(state_dir: Path | str, build: dict[str, Any]) -> None:
    """Make `build` (the Build JSON, as published on `cloud-builds`) what the API answers for its id."""
    build_id = build.get("id")
    if not isinstance(build_id, str) or not _BUILD_ID.match(build_id):
        raise ValueError(f"a build needs an id of letters, digits and '-', got {build_id!r}")
    _write_atomically(_dir(state_dir) / "builds" / f"{build_id}.json", json.dumps(build))


def read_build(state_dir: Path | str, build_id: str) -> dict[str, Any] | None:
    """The recorded build, or None."""
    if not _BUILD_ID.match(build_id):
        return None
    try:
        return json.loads((_dir(state_dir) / "builds" / f"{build_id}.json").read_text())
    except FileNotFoundError:
        return None


def register_trigger(state_dir: Path | str, name: str, repo: str, *, trigger_id: str | None = None) -> dict[str, str]:
    """Create (or replace, by name) the trigger `name` building `repo`; returns {id, name, repo}.

    The id defaults to the uuid5 of the name, the buildTriggerId payloads.cloud_build gives its builds.
    """
    if not name or "/" in name or ":" in name:
        raise ValueError(f"a trigger name must be non-empty, without '/' or ':', got {name!r}")
    trigger = {"id": trigger_id or str(uuid.uuid5(uuid.NAMESPACE_URL, name)), "name": name, "repo": repo}
    triggers = [t for t in _triggers(state_dir) if t["name"] != name and t["id"] != trigger["id"]]
    _write_atomically(_dir(state_dir) / "triggers.json", json.dumps([*triggers, trigger], indent=1))
    return trigger


def find_trigger(state_dir: Path | str, name_or_id: str) -> dict[str, str] | None:
    return next((t for t in _triggers(state_dir) if name_or_id in (t["id"], t["name"])), None)


def _triggers(state_dir: Path | str) -> list[dict[str, str]]:
    try:
        return json.loads((_dir(state_dir) / "triggers.json").read_text())
    except FileNotFoundError:
        return []


def image_tag(ref: str) -> str:
    """`ref` made a valid image tag: [A-Za-z0-9_.-], not starting with '.' or '-', at most 128 characters."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", ref).lstrip(".-")[:128]
    return safe or "latest"


# --- the API ---------------------------------------------------------------------

class LocalCloudBuild(LocalServer):
    """The API server for `project`'s builds and triggers, and the builds it runs, in this process."""

    def __init__(self, state_dir: Path | str, project: str, host: str = "127.0.0.1", port: int = 0,
                 step_s: float = STEP_S) -> None:
        super().__init__(_ApiHandler, host, port, "cloud build api")
        self.state_dir = Path(state_dir)
        self.project = project
        self.step_s = step_s
        self._stopping = threading.Event()
        self._runs: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> LocalCloudBuild:
        _dir(self.state_dir).mkdir(parents=True, exist_ok=True)
        self._serve()
        log.info("local Cloud Build API listening", extra={"url": self.url})
        return self

    def stop(self) -> None:
        """Stop serving; builds still running stop where they are (nothing more is published)."""
        self._stopping.set()
        self._close()
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            run.join(timeout=5)
        log.info("local Cloud Build stopped")

    # --- builds

    def get_build(self, project: str, location: str | None, build_id: str) -> dict[str, Any]:
        build = read_build(self.state_dir, build_id)
        where = f"projects/{project}/locations/{location}/builds/{build_id}" if location else \
            f"projects/{project}/builds/{build_id}"
        if build is None or build.get("projectId") != project:
            raise not_found(f"Requested entity was not found: build {where}.")
        recorded = re.match(r"^projects/[^/]+/locations/([^/]+)/builds/", build.get("name") or "")
        if recorded and recorded.group(1) != (location or "global"):
            raise not_found(f"Requested entity was not found: build {where} (the build is in location "
                             f"{recorded.group(1)}).")
        return build

    def get_operation(self, project: str, build_id: str) -> dict[str, Any]:
        name = f"operations/build/{project}/{build_id}"
        build = read_build(self.state_dir, build_id)
        if build is None or build.get("projectId") != project:
            raise not_found(f"Operation {name} not found.")
        op: dict[str, Any] = {"name": name, "metadata": {"@type": METADATA_TYPE, "build": build}}
        status = build.get("status")
        if status in DONE:
            op["done"] = True
            if status == "SUCCESS":
                op["response"] = {"@type": BUILD_TYPE, **build}
            else:
                op["error"] = {"code": UNKNOWN,
                               "message": build.get("statusDetail") or f"Build {build_id} ended {status}."}
        return op

    # --- triggers

    def run_trigger(self, project: str, location: str | None, trigger_ref: str,
                    source: dict[str, Any]) -> dict[str, Any]:
        from pitstop.local.build import build_image  # late: build.py records builds through this module

        where = f"projects/{project}/locations/{location}/triggers/{trigger_ref}" if location else \
            f"projects/{project}/triggers/{trigger_ref}"
        trigger = find_trigger(self.state_dir, trigger_ref) if project == self.project else None
        if trigger is None:
            raise not_found(f"Trigger {where} not found: the local Cloud Build of project {self.project} knows "
                             f"{', '.join(t['name'] for t in _triggers(self.state_dir)) or 'no triggers'}.")
        branch, tag, commit, subs = _source(source)
        version = image_tag(subs.get("_VERSION") or tag or (commit[:7] if commit else branch or ""))
        image, digest = build_image(self.state_dir, project, trigger["repo"], version)
        build_id = str(uuid.uuid4())
        fields = dict(build_id=build_id, project=project, repo=trigger["repo"], branch=branch, tag=tag,
                      commit=commit, image=image, digest=digest, trigger=trigger["name"],
                      trigger_id=trigger["id"], substitutions={**subs, "_VERSION": version})
        queued = cloud_build("QUEUED", **fields)
        queued["name"] = f"projects/{project}/locations/{location or 'global'}/builds/{build_id}"
        record_build(self.state_dir, queued)
        log.info("trigger run", extra={"trigger": trigger["name"], "build_id": build_id, "version": version})
        run = threading.Thread(target=self._run, args=(queued, fields), name=f"cloud build {build_id}", daemon=True)
        with self._lock:
            self._runs = [r for r in self._runs if r.is_alive()] + [run]
        try:
            self._announce(queued)
        except Exception:  # Cloud Build answers the run even when its notification is lost
            log.exception("publishing a build status failed", extra={"build_id": build_id, "status": "QUEUED"})
        run.start()
        return {"name": f"operations/build/{project}/{build_id}",
                "metadata": {"@type": METADATA_TYPE, "build": queued}}

    def _run(self, queued: dict[str, Any], fields: dict[str, Any]) -> None:
        previous = queued
        for status in ("WORKING", "SUCCESS"):
            if self._stopping.wait(self.step_s):
                return
            build = {**cloud_build(status, **fields), "name": queued["name"], "createTime": queued["createTime"]}
            if "startTime" in previous:
                build["startTime"] = previous["startTime"]
            record_build(self.state_dir, build)
            try:
                self._announce(build)
            except Exception:  # the emulator gone: the build is recorded, only the message is lost
                log.exception("publishing a build status failed", extra={"build_id": build["id"], "status": status})
            previous = build

    def _announce(self, build: dict[str, Any]) -> None:
        publish(self.project, TOPIC, json.dumps(build).encode(), buildId=build["id"], status=build["status"])


def _source(source: dict[str, Any]) -> tuple[str | None, str | None, str | None, dict[str, str]]:
    """(branch, tag, commit, substitutions) of a RepoSource JSON: exactly one ref."""
    refs = {k: source.get(k) for k in ("branchName", "tagName", "commitSha")}
    given = [k for k, v in refs.items() if v]
    if len(given) != 1:
        raise invalid(f"Exactly one of source.branchName, source.tagName or source.commitSha is required, "
                       f"got {', '.join(given) or 'none'}.")
    subs = source.get("substitutions") or {}
    if not isinstance(subs, dict) or not all(isinstance(v, str) for v in subs.values()):
        raise invalid("source.substitutions must map names to strings.")
    for key in subs:
        if not re.fullmatch(r"_[A-Z0-9_]+", key):
            raise invalid(f"Invalid substitution key {key!r}: user substitutions start with '_' and use "
                           "upper-case letters, digits and '_'.")
    commit = refs["commitSha"]
    if commit and not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        raise invalid(f"source.commitSha {commit!r} is not a hexadecimal commit SHA.")
    return refs["branchName"], refs["tagName"], commit, subs


def start_cloudbuild(state_dir: Path | str, project: str, host: str = "127.0.0.1", port: int = 0,
                     step_s: float = STEP_S) -> LocalCloudBuild:
    """Serve `project`'s local Cloud Build API on host:port (0 = any free port); `.url`, `.stop()`."""
    return LocalCloudBuild(state_dir, project, host, port, step_s).start()


# --- HTTP ---------------------------------------------------------------------

_ID = r"([^/:]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(rf"^/v1/projects/{_ID}/builds/{_ID}$"), "get_build"),
    ("GET", re.compile(rf"^/v1/projects/{_ID}/locations/{_ID}/builds/{_ID}$"), "get_build"),
    ("POST", re.compile(rf"^/v1/projects/{_ID}/triggers/{_ID}:run$"), "run_trigger"),
    ("POST", re.compile(rf"^/v1/projects/{_ID}/locations/{_ID}/triggers/{_ID}:run$"), "run_trigger"),
    ("GET", re.compile(rf"^/v1/operations/build/{_ID}/{_ID}$"), "get_operation"),
]


class _ApiHandler(GoogleApiHandler):
    log = log
    api_name = "the local Cloud Build"

    def _dispatch(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        self._answer(path, lambda: self._route(path))

    do_GET = do_POST = _dispatch

    def _route(self, path: str) -> dict[str, Any]:
        cloud: LocalCloudBuild = self.server.owner  # type: ignore[attr-defined]
        body = self._json_body()
        for method, pattern, action in _ROUTES:
            match = pattern.match(path)
            if method != self.command or not match:
                continue
            args = match.groups()
            if action == "get_build":
                project, location, build_id = args if len(args) == 3 else (args[0], None, args[1])
                return cloud.get_build(project, location, build_id)
            if action == "run_trigger":
                project, location, trigger = args if len(args) == 3 else (args[0], None, args[1])
                # The global form's body is the RepoSource; the regional one's the request ("*").
                source = (body.get("source") or {}) if location else body
                if not isinstance(source, dict):
                    raise invalid("source must be a RepoSource object.")
                return cloud.run_trigger(project, location, trigger, source)
            return cloud.get_operation(*args)
        raise not_found(f"No such method: {self.command} {path}")
