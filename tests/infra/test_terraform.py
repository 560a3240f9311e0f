"""Static checks of terraform/ (no provider, no GCP): formatting, IAM, delivery, and the contract
with the code (entry points in functions/main.py, topic names in pitstop)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "terraform"
MAIN_PY = ROOT / "functions" / "main.py"
PACKAGE = ROOT / "shared" / "pitstop"
WIRING = PACKAGE / "local" / "wiring.py"

PRIMITIVE_ROLES = re.compile(r"\broles/(owner|editor|viewer)\b")
TOPIC_NAME = re.compile(r"^(cloud-builds|pitstop-[a-z0-9]+(-[a-z0-9]+)*)$")


# ---------------------------------------------------------------- parsing helpers

def _clean(value: Any) -> Any:
    """python-hcl2 keeps quotes on literals and block labels and adds bookkeeping keys: drop them."""
    if isinstance(value, dict):
        return {_unquote(k): _clean(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _load(directory: Path) -> dict[str, Any]:
    """Blocks of every .tf file directly in `directory`, keyed for lookup."""
    out: dict[str, Any] = {"resource": {}, "data": {}, "locals": {}, "raw": []}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as f:
            raw = hcl2.load(f)
        out["raw"].append(raw)
        parsed = _clean(raw)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        out[kind][(rtype, name)] = body
        for block in parsed.get("locals", []):
            out["locals"].update(block)
    return out


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return _load(TF_DIR)


def _of_type(tf: dict[str, Any], rtype: str, kind: str = "resource") -> dict[str, Any]:
    return {name: body for (t, name), body in tf[kind].items() if t == rtype}


def _block(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    blocks = body.get(name)
    return blocks[0] if blocks else None


def _strings(value: Any):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _local_map(tf: dict[str, Any], expr: str) -> dict[str, Any]:
    """The literal map a `${local.NAME}` for_each expression refers to."""
    match = re.fullmatch(r"\$\{local\.(\w+)\}", expr)
    assert match, f"for_each {expr!r} is not a plain local map; extend this test to resolve it"
    value = tf["locals"][match.group(1)]
    assert isinstance(value, dict), f"local.{match.group(1)} is not a literal map"
    return value


def _terraform_functions(tf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Entry point -> its local.functions entry, checking the function resource iterates over it."""
    functions = _of_type(tf, "google_cloudfunctions2_function")
    assert list(functions) == ["function"], "expected one for_each google_cloudfunctions2_function"
    body = functions["function"]
    assert _block(body, "build_config")["entry_point"] == "${each.key}", "entry_point must be the map key"
    return _local_map(tf, body["for_each"])


def _declared_topics(tf: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for kind in ("resource", "data"):
        for body in _of_type(tf, "google_pubsub_topic", kind).values():
            if body["name"] == "${each.value}":
                names.update(_local_map(tf, body["for_each"]).values())
            else:
                assert "${" not in body["name"], f"cannot resolve topic name {body['name']!r}"
                names.add(body["name"])
    return names


# ---------------------------------------------------------------- code side

def _cloud_event_functions(path: Path) -> set[str]:
    """Top-level functions in `path` decorated with functions_framework.cloud_event."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if (isinstance(dec, ast.Attribute) and dec.attr == "cloud_event"
                        and isinstance(dec.value, ast.Name) and dec.value.id == "functions_framework"):
                    names.add(node.name)
    return names


def _wiring_constant(name: str) -> Any:
    """A literal module-level constant of pitstop/local/wiring.py, read without importing it."""
    if not WIRING.exists():
        return None
    for node in ast.parse(WIRING.read_text()).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            return ast.literal_eval(node.value)
    return None


def _topics_in_code() -> dict[str, str]:
    """Topic names the code uses -> where. The local wiring lists them; beyond it, any string that
    looks like a topic name and sits in a topic context (a name, keyword or env var containing
    "topic") counts, which catches defaults such as Config.events_topic and hard-coded publishes."""
    found: dict[str, str] = {t: "pitstop.local.wiring.TOPICS" for t in _wiring_constant("TOPICS") or ()}
    found.update({t: "pitstop.local.wiring.ROUTES" for t in _wiring_constant("ROUTES") or {}})

    def constants(nodes) -> list[str]:
        return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]

    for path in [MAIN_PY, *sorted(PACKAGE.rglob("*.py"))]:
        if not path.exists():
            continue
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            candidates: list[str] = []
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any("topic" in ast.unparse(t).lower() for t in targets) and node.value is not None:
                    candidates = constants([node.value])
            elif isinstance(node, ast.Call):
                args = constants(node.args)
                if any("topic" in a.lower() for a in args):
                    candidates = args
                candidates += constants(k.value for k in node.keywords if k.arg and "topic" in k.arg.lower())
            elif isinstance(node, ast.arguments):
                positional = node.posonlyargs + node.args
                pairs = list(zip(positional[len(positional) - len(node.defaults):], node.defaults))
                pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
                candidates = constants(d for a, d in pairs if "topic" in a.arg.lower())
            for value in candidates:
                if TOPIC_NAME.match(value):
                    found.setdefault(value, where)
    return found


# ---------------------------------------------------------------- tests

def test_terraform_fmt() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform binary not on PATH; install Terraform >= 1.5 to check formatting")
    result = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", str(TF_DIR)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"run `terraform fmt -recursive terraform/`:\n{result.stdout}"


def test_example_root_module_uses_this_module() -> None:
    example = _load(TF_DIR / "examples" / "basic")
    parsed = [_clean(raw) for raw in example["raw"]]
    modules = [m for p in parsed for block in p.get("module", []) for m in block.values()]
    assert [m["source"] for m in modules] == ["../.."]


def test_every_function_has_its_own_service_account(tf: dict[str, Any]) -> None:
    entry_points = _terraform_functions(tf)
    function = _of_type(tf, "google_cloudfunctions2_function")["function"]
    sa_ref = _block(function, "service_config")["service_account_email"]
    match = re.fullmatch(r"\$\{google_service_account\.(\w+)\[each\.key\]\.email\}", sa_ref)
    assert match, f"functions must run as google_service_account.X[each.key], not {sa_ref!r}"
    account = _of_type(tf, "google_service_account")[match.group(1)]
    # Same map, and the account id embeds the key: one distinct account per function.
    assert _local_map(tf, account["for_each"]) == entry_points
    assert "each.key" in account["account_id"]
    # No other identity (e.g. the push signer) is shared with a function.
    other_accounts = [n for n in _of_type(tf, "google_service_account") if n != match.group(1)]
    for name in other_accounts:
        assert "for_each" not in _of_type(tf, "google_service_account")[name]


def test_no_primitive_roles_anywhere(tf: dict[str, Any]) -> None:
    # Walk values only: comments are dropped by _clean, so prose may still name the roles.
    offenders = [s for raw in tf["raw"] for s in _strings(_clean(raw)) if PRIMITIVE_ROLES.search(s)]
    example = _load(TF_DIR / "examples" / "basic")
    offenders += [s for raw in example["raw"] for s in _strings(_clean(raw)) if PRIMITIVE_ROLES.search(s)]
    assert offenders == []
    # Authoritative project IAM would also silently remove everyone else's bindings.
    for rtype, _ in tf["resource"]:
        assert rtype not in ("google_project_iam_policy", "google_project_iam_binding"), rtype


def test_monitoring_viewer_only_for_functions_that_read_metrics(tf: dict[str, Any]) -> None:
    entry_points = _terraform_functions(tf)
    readers = {k for k, v in entry_points.items() if v["reads_metrics"] is True}
    assert readers == {"on_tick"}
    grants = [b for b in _of_type(tf, "google_project_iam_member").values() if b["role"] == "roles/monitoring.viewer"]
    assert len(grants) == 1 and "if f.reads_metrics" in grants[0]["for_each"]


def test_every_subscription_retries_and_dead_letters(tf: dict[str, Any]) -> None:
    dead_letter_topic = "${google_pubsub_topic.pitstop[\"dead_letter\"].id}"
    subscriptions = _of_type(tf, "google_pubsub_subscription")
    assert subscriptions, "no subscriptions declared"
    sinks = [n for n, b in subscriptions.items() if b["topic"] == dead_letter_topic]
    # Messages published to a topic without subscriptions are lost.
    assert sinks, "the dead-letter topic needs a subscription that keeps the messages"
    for name, body in subscriptions.items():
        if name in sinks:
            continue
        retry, dead_letter = _block(body, "retry_policy"), _block(body, "dead_letter_policy")
        assert retry and retry.get("minimum_backoff") and retry.get("maximum_backoff"), name
        assert dead_letter and dead_letter["dead_letter_topic"] == dead_letter_topic, name
        assert dead_letter.get("max_delivery_attempts"), name
    # An Eventarc trigger's subscription cannot carry a dead-letter policy: none may exist.
    for name, body in _of_type(tf, "google_cloudfunctions2_function").items():
        assert "event_trigger" not in body, f"{name}: use a push subscription, not event_trigger"
    for rtype, name in tf["resource"]:
        assert rtype != "google_eventarc_trigger", name


def test_every_function_is_fed_by_one_authenticated_push_subscription(tf: dict[str, Any]) -> None:
    entry_points = _terraform_functions(tf)
    feeding = _of_type(tf, "google_pubsub_subscription")["function"]
    assert _local_map(tf, feeding["for_each"]) == entry_points
    assert feeding["topic"] == "${local.topic_ids[each.value.topic]}"
    push = _block(feeding, "push_config")
    assert push["push_endpoint"].startswith("${google_cloudfunctions2_function.function[each.key].")
    assert _block(push, "oidc_token")["service_account_email"], "push must be authenticated"
    function = _of_type(tf, "google_cloudfunctions2_function")["function"]
    assert _block(function, "service_config")["ingress_settings"] == "ALLOW_INTERNAL_ONLY"


def test_every_topic_the_code_uses_is_declared(tf: dict[str, Any]) -> None:
    declared = _declared_topics(tf)
    used = _topics_in_code()
    assert used, "found no topic names in the code: the scan is broken"
    missing = {t: where for t, where in used.items() if t not in declared}
    assert missing == {}, f"topics used by the code but not declared in terraform/: {missing}"
    # Topics a function subscribes to or publishes to must be declared too.
    for fn, spec in _terraform_functions(tf).items():
        assert {spec["topic"], *spec["publishes"]} <= declared, fn
    env = _block(_of_type(tf, "google_cloudfunctions2_function")["function"], "service_config")["environment_variables"]
    assert env["PITSTOP_EVENTS_TOPIC"] == "${local.pitstop_topics[\"events\"]}"


def test_terraform_routes_match_the_local_wiring(tf: dict[str, Any]) -> None:
    routes = _wiring_constant("ROUTES")
    if routes is None:
        pytest.skip("pitstop/local/wiring.py has no ROUTES to compare with")
    terraform_routes = {spec["topic"]: fn for fn, spec in _terraform_functions(tf).items()}
    assert terraform_routes == routes


def test_entry_points_match_functions_main(tf: dict[str, Any]) -> None:
    assert MAIN_PY.exists(), f"{MAIN_PY} is missing: Terraform deploys its entry points"
    in_code = _cloud_event_functions(MAIN_PY)
    in_terraform = set(_terraform_functions(tf))
    assert in_terraform - in_code == set(), "Terraform deploys entry points main.py lacks"
    assert in_code - in_terraform == set(), "main.py has entry points Terraform does not deploy"


def _checkov() -> str | None:
    candidates = [os.environ.get("CHECKOV_BIN"), shutil.which("checkov"),
                  str(Path(sys.executable).with_name("checkov"))]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def test_checkov_finds_nothing_unexplained() -> None:
    checkov = _checkov()
    if checkov is None:
        message = ("checkov not found (set CHECKOV_BIN or put it on PATH). Install it in its own venv:"
                   " it pins bc-python-hcl2, which replaces python-hcl2's `hcl2` module")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    # --skip-download: offline, and no Prisma Cloud call. Severities then stay null, so the bar is
    # stricter than "no HIGH/CRITICAL": no failed check at all, every skip with a written reason.
    result = subprocess.run(
        [checkov, "-d", str(TF_DIR), "--framework", "terraform", "--skip-download", "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
              for r in reports for c in r["results"]["failed_checks"]]
    assert failed == [], "fix these or skip them inline with `#checkov:skip=CKV_...:reason`:\n" + "\n".join(failed)
    unexplained = [f"{c['check_id']} {c['resource']}" for r in reports for c in r["results"]["skipped_checks"]
                   if not (c["check_result"].get("suppress_comment") or "").strip()]
    assert unexplained == [], f"skips without a reason: {unexplained}"
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports)


def test_cloudbuild_pipeline_gives_pitstop_what_it_reads() -> None:
    import yaml

    pipeline = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert {"_SERVICE", "_ENVIRONMENT", "_REGION", "_VERSION"} <= set(pipeline["substitutions"])
    # Only images listed under `images:` get their digest into the build message's results.images.
    release = pipeline["images"]
    assert len(release) == 1 and release[0].endswith(":${_VERSION}")
    steps = {s["id"]: s for s in pipeline["steps"]}
    build_args = " ".join(steps["build"]["args"])
    assert f"--tag={release[0]}" in build_args and "--cache-from=" in build_args
    # Lint and tests block the build; the scan is gated by its substitution and precedes any push.
    assert {"lint", "test"} <= set(steps["build"]["waitFor"])
    assert '"${_SCAN}" != "true"' in steps["scan"]["args"][-1]
    assert steps["push-cache"]["waitFor"] == ["scan"]
    assert not any(release[0] in " ".join(map(str, s.get("args", []))) and "push" in s.get("args", [])
                   for s in pipeline["steps"]), "push the release image via `images:`, not a step"
