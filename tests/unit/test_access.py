"""Who may do what (core/access.py), the image and trigger policy for builds, and `deploy --ref`. Pure."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pitstop.core import access
from pitstop.core.models import Access
from pitstop.core.routing import ref_source
from pitstop.core.spec import load_spec

SPEC = """
service: web
regions: [us-central1]
match: {repo: web, tag: "v*"}
access:
  operator: [user:Olive@Example.com]
  approver: [serviceAccount:release-bot@acme.iam.gserviceaccount.com]
  deployer: [domain:example.com]
  four_eyes: true
"""


def test_members_are_normalised_and_groups_refused():
    grants = Access.model_validate({"viewer": ["serviceAccount:P@X.com", "domain:ACME.com", "Bob@X.com"]})
    assert grants.viewer == ["serviceAccount:p@x.com", "domain:acme.com", "bob@x.com"]
    assert Access.model_validate(grants.model_dump()) == grants, "a stored access document reads back the same"
    with pytest.raises(ValidationError, match="cannot expand Google groups"):
        Access.model_validate({"operator": ["group:sre@acme.com"]})
    with pytest.raises(ValidationError, match="is not a member"):
        Access.model_validate({"operator": ["allUsers"]})


def test_roles_come_from_the_spec_the_project_document_and_the_bootstrap_admins():
    spec = load_spec(SPEC)
    project = Access(viewer=["domain:acme.com"])
    assert access.roles_of("olive@example.com", [spec.access, project], hosted_domain="example.com") == {
        "operator", "deployer", "viewer"}
    assert access.roles_of("ann@acme.com", [spec.access, project], hosted_domain="acme.com") == {"viewer"}
    assert access.roles_of("eve@evil.example", [spec.access, project], hosted_domain="evil.example") == set()
    assert access.roles_of("root@acme.com", [spec.access], admins=["user:root@acme.com"]) == set(access.ROLES)
    assert access.roles_of("x@notexample.com", [spec.access], hosted_domain="notexample.com") == set(), \
        "a domain matches whole"
    # An address at the domain is not enough: the account must be one the domain manages (the token's `hd`),
    # not a personal Google account opened with a company address.
    assert access.roles_of("ann@acme.com", [project]) == set()
    assert access.roles_of("olive@example.com", [spec.access]) == {"operator", "viewer"}, "user: grants stay"


def test_a_refusal_names_the_missing_permission_and_role():
    spec = load_spec(SPEC)
    denial = access.check("ann@example.com", "rollout:approve", "web (production)", [spec.access])
    assert denial.permission == "rollout:approve"
    assert "lacks permission rollout:approve on web (production): it needs the approver role (or admin)" in denial.reason
    assert access.check("release-bot@acme.iam.gserviceaccount.com", "rollout:approve", "w", [spec.access]) is None
    assert "needs the admin role," in access.check("olive@example.com", "spec:write", "w", [spec.access]).reason


def test_four_eyes_refuses_only_the_person_who_started_it():
    spec = load_spec(SPEC)
    assert access.four_eyes("olive@example.com", "Olive@example.com", spec).permission == "rollout:approve"
    assert access.four_eyes("carol@example.com", "olive@example.com", spec) is None
    assert access.four_eyes("olive@example.com", None, spec) is None, "a push-started rollout has no starter"
    relaxed = load_spec(SPEC.replace("four_eyes: true", "four_eyes: false"))
    assert access.four_eyes("olive@example.com", "olive@example.com", relaxed) is None


def test_images_must_come_from_the_allowed_repositories():
    spec = load_spec(SPEC)
    own = "us-central1-docker.pkg.dev/acme/apps/web:v1@sha256:" + "0" * 64
    assert access.image_refusal(spec, "acme", own) is None, "default: the service's name in the project's registry"
    assert "docker.io/attacker/miner" in access.image_refusal(spec, "acme", "docker.io/attacker/miner:latest")
    assert access.image_refusal(spec, "other", own) is not None, "another project's registry"
    assert access.image_refusal(spec, "acme", "us-central1-docker.pkg.dev/acme/apps/web-evil:v1") is not None
    pinned = load_spec(SPEC + "image: europe-docker.pkg.dev/shared/*/web\n")
    assert pinned.image == ["europe-docker.pkg.dev/shared/*/web"]
    assert access.image_refusal(pinned, "acme", "europe-docker.pkg.dev/shared/prod/web:v2") is None
    assert "the spec's `image` allows" in access.image_refusal(pinned, "acme", own)


def test_only_the_named_triggers_may_build_a_service():
    spec = load_spec(SPEC + "triggers: [build-web, 3a1f]\n")
    assert access.trigger_refusal(spec, "build-web", "x") is None
    assert access.trigger_refusal(spec, None, "3a1f") is None
    assert "built by trigger nightly" in access.trigger_refusal(spec, "nightly", "9")
    assert "no trigger (a manual build)" in access.trigger_refusal(spec, None, None)
    assert access.trigger_refusal(load_spec(SPEC), "anything", None) is None, "no list: any trigger"


@pytest.mark.parametrize("ref, expected", [
    ("v1.2.0", {"tag": "v1.2.0"}), ("main", {"branch": "main"}), ("release/1.2", {"branch": "release/1.2"}),
    ("a017b5e", {"commit": "a017b5e"}), ("refs/tags/hotfix-1", {"tag": "hotfix-1"}),
    ("heads/v9", {"branch": "v9"}), ("tags/v2", {"tag": "v2"}),
])
def test_deploy_ref_becomes_the_trigger_source(ref, expected):
    assert ref_source(ref, load_spec(SPEC)) == expected


def test_image_globs_match_segment_by_segment():
    spec = load_spec(SPEC)
    assert access.image_refusal(spec, "acme", "evil.io/x-docker.pkg.dev/acme/r/web:v1") is not None
    assert access.image_refusal(spec, "acme", "us-docker.pkg.dev/acme/a/b/web:v1") is not None, "* never crosses /"
    assert access.image_refusal(spec, "acme", "us-docker.pkg.dev/acme/apps/web@sha256:" + "1" * 64) is None


def test_a_manual_build_never_passes_a_trigger_list_whatever_its_substitutions_claim():
    spec = load_spec(SPEC + "triggers: [build-web]\n")
    assert "no trigger (a manual build)" in access.trigger_refusal(spec, "build-web", None)


def test_public_domains_and_people_as_health_sources_are_refused():
    for member in ("domain:gmail.com", "domain:developer.gserviceaccount.com"):
        with pytest.raises(ValidationError, match="anyone can have an account there"):
            Access.model_validate({"viewer": [member]})
    with pytest.raises(ValueError, match="health sources are machines"):
        load_spec(SPEC + "health: {sources: [user:alice@example.com]}\n")


def test_a_deploy_ref_the_spec_would_not_roll_out_is_refused_before_building():
    from pitstop.core.routing import ref_refusal

    tags = load_spec(SPEC)
    assert ref_refusal({"tag": "v2"}, tags) is None
    assert "rolls out builds of tags v*, and branch main is not one" in ref_refusal({"branch": "main"}, tags)
    branch = load_spec(SPEC.replace('tag: "v*"', "branch: main"))
    assert "commit a017b5e is not one" in ref_refusal({"commit": "a017b5e"}, branch)
