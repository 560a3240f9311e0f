"""Cloud Run traffic, over the Admin API v2 (`run_v2.ServicesClient`).

Only two things: make a service serve a split (creating the new revision first
when asked) and tell which revision serves it now. Applying is idempotent, so a
tick may re-apply a split after a crash. Errors become `CloudRunError`, marked
permanent when retrying cannot help; none of them ever judges the new version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pitstop.core.models import Target

if TYPE_CHECKING:
    from google.cloud import run_v2

OPERATION_TIMEOUT = 300  # seconds to wait for a revision to become ready / traffic to settle


class CloudRunError(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def service_path(project: str, region: str, service: str) -> str:
    return f"projects/{project}/locations/{region}/services/{service}"


class CloudRun:
    def __init__(self, client: run_v2.ServicesClient) -> None:
        self.client = client

    @classmethod
    def from_endpoint(cls, endpoint: str | None) -> CloudRun:
        """GCP with default credentials, or a local stand-in at `endpoint` (REST, anonymous)."""
        from google.cloud.run_v2.services.services import ServicesClient  # late: run_v2 imports are slow

        if not endpoint:
            return cls(ServicesClient())
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return cls(ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                  client_options=ClientOptions(api_endpoint=endpoint)))

    def serving(self, project: str, region: str, service: str) -> str | None:
        """The revision taking most traffic now, or None if the service does not exist."""
        from google.api_core import exceptions

        try:
            svc = self.client.get_service(name=service_path(project, region, service))
        except exceptions.NotFound:
            return None
        except exceptions.GoogleAPICallError as err:
            raise CloudRunError(f"could not read service {service}: {err.message}") from err
        statuses = [t for t in svc.traffic_statuses if t.percent > 0]
        if not statuses:
            return svc.latest_ready_revision.rsplit("/", 1)[-1] or None
        best = max(statuses, key=lambda t: t.percent)
        return best.revision or svc.latest_ready_revision.rsplit("/", 1)[-1] or None

    def apply(self, project: str, region: str, service: str, split: list[Target],
              revision: str | None = None, image: str | None = None) -> list[Target]:
        """Serve `split`; if `revision` is given and missing, create it from `image` at no traffic first."""
        from google.api_core import exceptions

        name = service_path(project, region, service)
        try:
            try:
                svc = self.client.get_service(name=name)
            except exceptions.NotFound:
                if revision is None or image is None:
                    raise CloudRunError(f"service {service} does not exist in {project}/{region}",
                                        permanent=True) from None
                return self._create(project, region, service, split, revision, image)
            if revision and image and not self._has_revision(svc, revision):
                svc = self._deploy(svc, revision, image)
            svc.name = name  # the PATCH is addressed by it; never trust an answer to carry it
            svc.traffic = [_target(t) for t in split]
            return _observed(self._update(svc))
        except exceptions.GoogleAPICallError as err:
            raise CloudRunError(f"{type(err).__name__}: {err.message}", permanent=_permanent(err)) from err

    # ------------------------------------------------------------ steps

    def _has_revision(self, svc: Any, revision: str) -> bool:
        return svc.template.revision == revision or any(t.revision == revision for t in svc.traffic_statuses)

    def _deploy(self, svc: Any, revision: str, image: str) -> Any:
        """New revision from the current template with the new image; traffic pinned where it is."""
        svc.template.revision = revision
        if not svc.template.containers:
            raise CloudRunError(f"service {svc.name} has no container in its template", permanent=True)
        svc.template.containers[0].image = image
        # Pin current traffic by revision name: a LATEST entry would hand the new revision traffic at once.
        pinned = [_target(Target(revision=t.revision or svc.latest_ready_revision.rsplit("/", 1)[-1],
                                 percent=t.percent, tag=t.tag or None))
                  for t in svc.traffic_statuses if t.percent > 0 or t.tag]
        if pinned:
            svc.traffic = pinned
        return self._update(svc)

    def _create(self, project: str, region: str, service: str, split: list[Target],
                revision: str, image: str) -> list[Target]:
        from google.cloud.run_v2.types import Container, RevisionTemplate, Service

        svc = Service(template=RevisionTemplate(revision=revision, containers=[Container(image=image)]),
                      traffic=[_target(t) for t in split])
        op = self.client.create_service(parent=f"projects/{project}/locations/{region}", service=svc,
                                        service_id=service)
        return _observed(self._wait(op))

    def _update(self, svc: Any) -> Any:
        op = self.client.update_service(service=svc)
        return self._wait(op)

    def _wait(self, op: Any) -> Any:
        from google.api_core import exceptions

        try:
            return op.result(timeout=OPERATION_TIMEOUT)
        except exceptions.GoogleAPICallError as err:
            # The operation finished with an error (a revision that cannot start is FAILED_PRECONDITION),
            # or polling it failed (transient).
            raise CloudRunError(f"Cloud Run operation failed: {err.message}", permanent=_permanent(err)) from err
        except TimeoutError as err:  # concurrent.futures.TimeoutError in 3.11
            raise CloudRunError(f"Cloud Run operation still running after {OPERATION_TIMEOUT}s") from err


def _permanent(err: Exception) -> bool:
    """Retrying cannot help: the request is invalid, forbidden, or names what does not exist."""
    from google.api_core import exceptions

    return isinstance(err, (exceptions.BadRequest, exceptions.PermissionDenied, exceptions.Forbidden,
                            exceptions.NotFound, exceptions.FailedPrecondition))


def _target(t: Target) -> Any:
    from google.cloud.run_v2.types import TrafficTarget, TrafficTargetAllocationType

    return TrafficTarget(type_=TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                         revision=t.revision, percent=t.percent, tag=t.tag or "")


def _observed(svc: Any) -> list[Target]:
    latest = svc.latest_ready_revision.rsplit("/", 1)[-1]
    return [Target(revision=t.revision or latest, percent=t.percent, tag=t.tag or None)
            for t in svc.traffic_statuses]
