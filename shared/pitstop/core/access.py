"""Who may do what: roles, the permissions they grant, and the build and image policy. Pure.

An identity is a verified email (`gcp/identity.py` checks the ID token); this module only
decides. Grants come from the spec of the service and environment a request concerns, from
the project-wide access document, and from the bootstrap admins in PITSTOP_ADMINS (so a new
installation has someone who may write the first access document).

    permission          role       what it allows
    rollout:read        viewer     status, history, audit (every role below includes it)
    rollout:operate     operator   pause, resume, promote, abort, rollback
    rollout:approve     approver   approve a gate (not one's own rollout, with four_eyes)
    deployment:create   deployer   deploy a ref: run the service's Cloud Build trigger
    spec:write          admin      apply specs and the access document; admin includes every role
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Iterable

from pitstop.core.models import Access, RolloutSpec

ROLE_OF = {
    "rollout:read": "viewer",
    "rollout:operate": "operator",
    "rollout:approve": "approver",
    "deployment:create": "deployer",
    "spec:write": "admin",
}
PERMISSION_OF_ACTION = {
    "pause": "rollout:operate", "resume": "rollout:operate", "promote": "rollout:operate",
    "abort": "rollout:operate", "rollback": "rollout:operate", "approve": "rollout:approve",
    "deploy": "deployment:create", "apply": "spec:write", "read": "rollout:read",
    # A release: starting it in an environment is a deployment; lifting a freeze is an admin's call.
    "promote_release": "deployment:create", "unfreeze": "spec:write",
}
ROLES = ("viewer", "operator", "approver", "deployer", "admin")


@dataclass(frozen=True)
class Denial:
    """Why an identity may not do something: the sentence names the missing permission and its role."""

    permission: str
    reason: str


def member_matches(member: str, email: str, hosted_domain: str | None = None) -> bool:
    """`domain:D` needs an account D manages (the token's `hd`), not only an address at D: anyone may open a
    personal Google account with a company address, and keep it after leaving."""
    email = email.lower()
    kind, _, value = member.rpartition(":")
    if kind == "domain":
        return email.endswith("@" + value) and hosted_domain == value
    return email == value


def roles_of(email: str, grants: Iterable[Access | None], admins: Iterable[str] = (),
             hosted_domain: str | None = None) -> set[str]:
    """Every role `email` holds through these grants (admin implies all)."""
    roles = {"admin"} if any(member_matches(m, email, hosted_domain) for m in admins) else set()
    for access in grants:
        if access is None:
            continue
        roles |= {role for role in ROLES
                  if any(member_matches(m, email, hosted_domain) for m in getattr(access, role))}
    if "admin" in roles:
        return set(ROLES)
    if roles:
        roles.add("viewer")
    return roles


def check(email: str, permission: str, where: str, grants: Iterable[Access | None],
          admins: Iterable[str] = (), hosted_domain: str | None = None) -> Denial | None:
    """None if `email` holds `permission` on `where` (e.g. "web (production)"), else why not."""
    role = ROLE_OF[permission]
    if role in roles_of(email, grants, admins, hosted_domain):
        return None
    return Denial(permission, f"{email} lacks permission {permission} on {where}: it needs the {role} role"
                              f"{'' if role == 'admin' else ' (or admin)'}, granted in the spec's access.{role} or the project access document")


def four_eyes(email: str, started_by: str | None, spec: RolloutSpec | None) -> Denial | None:
    """With `access.four_eyes`, whoever started a rollout may not approve its gates."""
    if spec is None or not spec.access.four_eyes or not started_by or started_by.lower() != email.lower():
        return None
    return Denial("rollout:approve", f"{email} started this rollout and may not approve it: {spec.key} requires four "
                                     f"eyes (access.four_eyes), so another approver must")


# ---------------------------------------------------------------- builds: which images and triggers

def allowed_images(spec: RolloutSpec, project: str) -> list[str]:
    """The image repositories (globs) a service may run; by default its own name in the project's registry."""
    return spec.image or [f"*-docker.pkg.dev/{getattr(spec, 'project', None) or project}/*/{spec.service}"]


def repository(image: str) -> str:
    """An image reference without tag or digest: REGION-docker.pkg.dev/PROJECT/REPO/NAME."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def image_refusal(spec: RolloutSpec, project: str, image: str) -> str | None:
    """Why `image` may not run as this service; None if a pattern allows it."""
    patterns = allowed_images(spec, project)
    repo = repository(image)
    if any(_path_matches(repo, p) for p in patterns):
        return None
    source = "the spec's `image`" if spec.image else "the default (no `image` in the spec)"
    return (f"image {repo} is not one {spec.key} may run: {source} allows {', '.join(patterns)}")


def _path_matches(repo: str, pattern: str) -> bool:
    """A glob per path segment: `*` never crosses a `/` (`*-docker.pkg.dev/p/*/web` is not `evil.io/x-docker…`)."""
    got, want = repo.split("/"), pattern.split("/")
    return len(got) == len(want) and all(fnmatchcase(g, w) for g, w in zip(got, want))


def trigger_refusal(spec: RolloutSpec, trigger_name: str | None, trigger_id: str | None) -> str | None:
    """Why a build from this trigger may not deploy; None if the spec names no triggers or names this one.
    A build without a trigger id is a manual build, whatever its substitutions say its trigger was."""
    if not spec.triggers or (trigger_id and {trigger_name, trigger_id} & set(spec.triggers)):
        return None
    if not trigger_id:
        trigger_name = None
    built_by = f"trigger {trigger_name or trigger_id}" if (trigger_name or trigger_id) else "no trigger (a manual build)"
    return f"{spec.key} deploys only builds of trigger {', '.join(spec.triggers)}; this one was built by {built_by}"
