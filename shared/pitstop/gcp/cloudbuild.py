"""Cloud Build, over its API (`cloudbuild_v1.CloudBuildClient`).

Pub/Sub carries no publisher identity: anyone who may publish to `cloud-builds`
could name any image. So a build message only says *which* build to look at;
`build()` fetches that build from Cloud Build in the expected project, and what
Cloud Build answers is what pitstop parses and deploys. `run_trigger()` starts a
trigger's build and answers at once with the queued build (it never waits for
the build to finish: its outcome arrives on `cloud-builds` like any other).

Builds come back as the camelCase JSON Cloud Build publishes on `cloud-builds`
(enum names, RFC 3339 timestamps, zero values left out), so
`pitstop.core.messages.parse_build(build, {})` reads them.

The same code talks to GCP and to the local stand-in (pitstop.local.cloudbuild);
only the endpoint differs. Each call is one request bounded by RPC_TIMEOUT,
never retried here: a failing fetch raises, and the function's Pub/Sub
redelivery is the retry.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud.devtools.cloudbuild_v1 import CloudBuildClient

RPC_TIMEOUT = 10.0  # seconds for one request
# What a build id can be (as parse_build accepts it); anything else names no build. Checked before asking:
# the REST transport refuses an id with '/' with a ValueError, gRPC would send it as it is.
BUILD_ID = re.compile(r"[A-Za-z0-9-]{1,100}")


def build_name(project: str, location: str, build_id: str) -> str:
    return f"projects/{project}/locations/{location}/builds/{build_id}"


def trigger_name(project: str, location: str, trigger: str) -> str:
    return f"projects/{project}/locations/{location}/triggers/{trigger}"


class CloudBuild:
    def __init__(self, client: CloudBuildClient) -> None:
        self.client = client

    @classmethod
    def from_endpoint(cls, endpoint: str | None) -> CloudBuild:
        """GCP with default credentials, or a local stand-in at `endpoint` (REST, anonymous)."""
        from google.cloud.devtools.cloudbuild_v1.services.cloud_build import CloudBuildClient  # late: slow import

        from pitstop.gcp.endpoint import google_client

        return cls(google_client(CloudBuildClient, endpoint))

    def build(self, project: str, build_id: str, location: str | None = None) -> dict[str, Any] | None:
        """The build as Cloud Build knows it, or None if `project` has no such build.

        A regional build (a trigger or worker pool in a region) is found only under its
        `location`. An id no build can have (it comes from a message) is None too. Errors other
        than NOT_FOUND raise google.api_core exceptions.
        """
        from google.api_core import exceptions

        if not isinstance(build_id, str) or not BUILD_ID.fullmatch(build_id):
            return None

        if location:
            # Only `name`: with project_id/id set, the REST transport would pick the global path.
            request: dict[str, str] = {"name": build_name(project, location, build_id)}
        else:
            request = {"project_id": project, "id": build_id}
        try:
            found = self.client.get_build(request=request, timeout=RPC_TIMEOUT, retry=None)
        except (exceptions.NotFound, exceptions.InvalidArgument):
            return None  # InvalidArgument: a location that does not exist, from a message (redelivery cannot help)
        return build_json(found)

    def run_trigger(self, project: str, trigger: str, *, branch: str | None = None, tag: str | None = None,
                    commit: str | None = None, substitutions: dict[str, str] | None = None,
                    location: str | None = None) -> dict[str, Any]:
        """Start `trigger` (its id, or its name) on exactly one of branch, tag or commit.

        Returns the new build (id, status QUEUED, logUrl, ...) without waiting for it.
        An unknown trigger raises google.api_core.exceptions.NotFound, other errors their
        google.api_core exception; two refs or none raise ValueError.
        """
        from google.api_core import exceptions
        from google.cloud.devtools.cloudbuild_v1.types import BuildOperationMetadata, RepoSource

        refs = {"branch_name": branch, "tag_name": tag, "commit_sha": commit}
        given = {k: v for k, v in refs.items() if v}
        if len(given) != 1:
            raise ValueError("run_trigger needs exactly one of branch, tag or commit, got "
                             + (", ".join(f"{k.split('_')[0]}={v!r}" for k, v in given.items()) or "none"))
        source = RepoSource(**given, substitutions=dict(substitutions or {}))
        if location:
            # Only `name` (+ source): with project_id/trigger_id set, REST would pick the global path.
            where = trigger_name(project, location, trigger)
            request: dict[str, Any] = {"name": where, "source": source}
        else:
            where = f"projects/{project}/triggers/{trigger}"
            request = {"project_id": project, "trigger_id": trigger, "source": source}
        try:
            operation = self.client.run_build_trigger(request=request, timeout=RPC_TIMEOUT, retry=None)
        except exceptions.NotFound as err:
            raise exceptions.NotFound(
                f"Cloud Build trigger {trigger!r} not found ({where}): check the trigger's name or id, "
                f"its project and its region (a regional trigger needs its location); nothing was started "
                f"[{err.message}]", response=getattr(err, "response", None)) from err
        metadata = operation.metadata  # the client decodes it as BuildOperationMetadata
        if not isinstance(metadata, BuildOperationMetadata) or not metadata.build.id:
            raise RuntimeError(f"Cloud Build started {where} but its operation {operation.operation.name} "
                               "names no build")
        return build_json(metadata.build)


def build_json(build: Any) -> dict[str, Any]:
    """A Build message as the JSON Cloud Build publishes: camelCase, enum names, zero values left out."""
    from google.cloud.devtools.cloudbuild_v1.types import Build

    # proto-plus prints every zero-valued field unless told not to (None means True for it);
    # `including_default_value_fields` is gone with protobuf 5.
    data = Build.to_dict(build, use_integers_for_enums=False, preserving_proto_field_name=False,
                         always_print_fields_with_no_presence=False)
    data.setdefault("status", "STATUS_UNKNOWN")  # the zero enum value is left out like any zero value
    return data
