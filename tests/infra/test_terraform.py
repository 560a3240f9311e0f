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

# HTTP entry points that run as another function's identity: the request-log drain is the sampler's fast half
# and signs its samples as the sampler (on_tick), which on_health trusts (terraform/requestlogs.tf).
RUNS_AS = {"on_drain": "on_tick"}

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
    out: dict[str, Any] = {"resource": {}, "data": {}, "locals": {}, "variable": {}, "output": {}, "raw": []}
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
        for kind in ("variable", "output"):
            for block in parsed.get(kind, []):
                out[kind].update(block)
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
    assert set(functions) == {"function", *_http_functions(tf), *RUNS_AS}, \
        "expected one for_each function + one per HTTP entry point"
    body = functions["function"]
    assert _block(body, "build_config")["entry_point"] == "${each.key}", "entry_point must be the map key"
    return _local_map(tf, body["for_each"])


def _http_functions(tf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """HTTP entry point -> its local.http_functions entry (each has a resource of its own name)."""
    http = tf["locals"]["http_functions"]
    assert isinstance(http, dict) and http, "local.http_functions must be a literal map"
    for name, spec in http.items():
        assert spec["topic"] is None, f"{name}: an HTTP function has no feeding topic"
        body = _of_type(tf, "google_cloudfunctions2_function").get(name)
        assert body is not None, f"no google_cloudfunctions2_function.{name} for HTTP entry point {name}"
        assert _block(body, "build_config")["entry_point"] == name
    return http


def _identities(tf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every function (event-driven and HTTP): what local.identities merges."""
    assert tf["locals"]["identities"] == "${merge(local.functions, local.http_functions)}"
    return {**_terraform_functions(tf), **_http_functions(tf)}


def _function_bodies(tf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return _of_type(tf, "google_cloudfunctions2_function")


def _all_blocks(tf: dict[str, Any]):
    """(kind, type, name, body) of every resource and data block."""
    for kind in ("resource", "data"):
        for (rtype, name), body in tf[kind].items():
            yield kind, rtype, name, body


def _iam_grants(tf: dict[str, Any]):
    """(type, name, role, members) of every IAM member/binding resource; members as written."""
    for (rtype, name), body in tf["resource"].items():
        if re.search(r"_iam_(member|binding)$", rtype):
            yield rtype, name, body["role"], body.get("member", body.get("members"))


def _validation_regexes(tf: dict[str, Any], variable: str) -> list[re.Pattern[str]]:
    """The regex() patterns in a variable's validation conditions, compiled for Python."""
    patterns = []
    for validation in tf["variable"][variable].get("validation", []):
        for literal in re.findall(r'regex\("((?:[^"\\]|\\.)*)"', validation["condition"]):
            patterns.append(re.compile(literal.replace("\\\\", "\\")))
    return patterns


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

def _decorated_functions(path: Path, kind: str) -> set[str]:
    """Top-level functions in `path` decorated with functions_framework.<kind> (cloud_event, http)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if (isinstance(dec, ast.Attribute) and dec.attr == kind
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
    identities = _identities(tf)
    account = _of_type(tf, "google_service_account")["function"]
    # Same map, and the account id embeds the key: one distinct account per function.
    assert account["for_each"] == "${local.identities}"
    assert "each.key" in account["account_id"]
    for name, body in _function_bodies(tf).items():
        expected = ("${google_service_account.function[each.key].email}" if name == "function"
                    else f'${{google_service_account.function["{RUNS_AS.get(name, name)}"].email}}')
        assert _block(body, "service_config")["service_account_email"] == expected, name
    assert set(identities) >= {"on_tick", "api"}
    # No other identity (e.g. the push signer) is shared with a function.
    other_accounts = [n for n in _of_type(tf, "google_service_account") if n != "function"]
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
    grants = {n: b for n, b in _of_type(tf, "google_project_iam_member").items() if b["role"] == "roles/monitoring.viewer"}
    # project_id, and every other project of managed_services (a service's metrics are read there).
    assert {n: b["project"] for n, b in grants.items()} == {
        "function_reads_metrics": "${var.project_id}",
        "function_reads_metrics_in_service_projects": "${each.value.project}"}
    assert all("if f.reads_metrics" in b["for_each"] for b in grants.values())
    assert "for project in local.service_projects" in grants["function_reads_metrics_in_service_projects"]["for_each"]


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
    assert tf["locals"]["function_environment"]["PITSTOP_EVENTS_TOPIC"] == "${local.pitstop_topics[\"events\"]}"


def test_terraform_routes_match_the_local_wiring(tf: dict[str, Any]) -> None:
    routes = _wiring_constant("ROUTES")
    if routes is None:
        pytest.skip("pitstop/local/wiring.py has no ROUTES to compare with")
    terraform_routes = {spec["topic"]: fn for fn, spec in _terraform_functions(tf).items()}
    assert terraform_routes == routes


def test_entry_points_match_functions_main(tf: dict[str, Any]) -> None:
    assert MAIN_PY.exists(), f"{MAIN_PY} is missing: Terraform deploys its entry points"
    for kind, in_terraform in (("cloud_event", set(_terraform_functions(tf))),
                               ("http", {*_http_functions(tf), *RUNS_AS})):
        in_code = _decorated_functions(MAIN_PY, kind)
        assert in_terraform - in_code == set(), f"Terraform deploys {kind} entry points main.py lacks"
        assert in_code - in_terraform == set(), f"main.py has {kind} entry points Terraform does not deploy"


# ---------------------------------------------------------------- who sent it (issue #8)

PUBLIC_MEMBERS = re.compile(r"\b(allUsers|allAuthenticatedUsers)\b|principalSet://goog/public:all")
PUBLISHER = "roles/pubsub.publisher"
MEMBER_VARIABLES = ("command_publishers", "health_publishers", "api_invokers", "admins")


def _topic_of(tf: dict[str, Any], expr: str) -> str | None:
    """The topic name a `topic = ...` expression refers to, when it is one of the module's topics."""
    match = re.fullmatch(r'\$\{google_pubsub_topic\.pitstop\["(\w+)"\]\.(name|id)\}', expr)
    if match:
        return tf["locals"]["pitstop_topics"][match.group(1)]
    match = re.fullmatch(r'\$\{local\.topic_ids\["([\w-]+)"\]\}', expr)
    return match.group(1) if match else None


def _topic_bindings(tf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Topic name -> its authoritative publisher binding."""
    out: dict[str, dict[str, Any]] = {}
    for name, body in _of_type(tf, "google_pubsub_topic_iam_binding").items():
        assert body["role"] == PUBLISHER, name
        topic = _topic_of(tf, body["topic"])
        assert topic, f"{name}: cannot tell which topic {body['topic']!r} is"
        assert topic not in out, f"two publisher bindings on {topic}"
        out[topic] = body
    return out


def _publishers_by_function(tf: dict[str, Any]) -> dict[str, set[str]]:
    """Topic -> the functions whose `publishes` lists it."""
    out: dict[str, set[str]] = {}
    for fn, spec in _identities(tf).items():
        for topic in spec["publishes"]:
            out.setdefault(topic, set()).add(fn)
    return out


def test_locked_topics_have_authoritative_publishers_and_nothing_else(tf: dict[str, Any]) -> None:
    locked = tf["locals"]["locked_topics"]
    assert set(locked) == {"cloud-builds", "pitstop-commands", "pitstop-health", "pitstop-alerts"}
    assert set(_topic_bindings(tf)) == set(locked)
    # The functions' own publisher grants on these topics come from `publishes`, through the binding.
    assert tf["locals"]["function_publishers"] == (
        "${{for topic in local.locked_topics : topic => [for fn, f in local.identities : "
        "google_service_account.function[fn].member if contains(f.publishes, topic)]}}")
    # A member resource for the same role on a bound topic would fight the binding.
    for name, body in _of_type(tf, "google_pubsub_topic_iam_member").items():
        if body["role"] != PUBLISHER:
            continue
        if body["topic"] == "${local.topic_ids[each.value.topic]}":
            assert "if !contains(local.locked_topics, topic)" in body["for_each"], name
        else:
            assert _topic_of(tf, body["topic"]) not in locked, name
    # Nothing replaces a whole topic policy (it would drop the bindings above, or be dropped by them).
    assert not _of_type(tf, "google_pubsub_topic_iam_policy")


def test_cloud_builds_is_published_to_by_the_cloud_build_agent_only(tf: dict[str, Any]) -> None:
    binding = _topic_bindings(tf)["cloud-builds"]
    assert binding["members"] == '${concat([local.cloudbuild_agent], local.function_publishers["cloud-builds"])}'
    assert "cloud-builds" not in _publishers_by_function(tf), "no pitstop function may publish build messages"
    assert tf["locals"]["cloudbuild_agent"] == (
        "serviceAccount:service-${data.google_project.build.number}@gcp-sa-cloudbuild.iam.gserviceaccount.com")
    assert _of_type(tf, "google_project", "data")["build"]["project_id"] == "${local.build_project}"
    # The topic (created or looked up) lives where the builds run.
    for kind in ("resource", "data"):
        assert _of_type(tf, "google_pubsub_topic", kind)["cloud_builds"]["project"] == "${local.build_project}"


def test_command_and_health_publishers_come_only_from_the_variables(tf: dict[str, Any]) -> None:
    bindings = _topic_bindings(tf)
    assert bindings["pitstop-commands"]["members"] == (
        '${distinct(concat(var.command_publishers, local.function_publishers["pitstop-commands"]))}')
    assert bindings["pitstop-health"]["members"] == (
        '${distinct(concat(var.health_publishers, local.function_publishers["pitstop-health"]))}')
    by_function = _publishers_by_function(tf)
    assert "pitstop-commands" not in by_function, "no function sends commands"
    assert by_function["pitstop-health"] == {"on_tick"}, "only the sampler (on_tick) publishes health samples"


def test_api_is_iam_protected_and_invoked_only_by_api_invokers(tf: dict[str, Any]) -> None:
    api = _function_bodies(tf)["api"]
    assert "event_trigger" not in api
    assert _block(api, "service_config")["environment_variables"] == "${local.function_environment}"
    # 2nd gen: invoking goes through the Cloud Run service, so run.invoker there is the gate.
    bindings = _of_type(tf, "google_cloud_run_v2_service_iam_binding")
    assert list(bindings) == ["api_invokers"]
    binding = bindings["api_invokers"]
    assert binding["role"] == "roles/run.invoker"
    assert binding["name"] == "${google_cloudfunctions2_function.api.name}"
    assert binding["members"] == "${var.api_invokers}"
    # Every other invoker grant is the push identity on the event-driven functions.
    for rtype, name, role, member in _iam_grants(tf):
        if role in ("roles/run.invoker", "roles/cloudfunctions.invoker") and name not in ("api_invokers",
                                                                                          "drain_invoker"):
            body = tf["resource"][(rtype, name)]
            assert (rtype, member) == ("google_cloud_run_v2_service_iam_member", "${google_service_account.pusher.member}"), name
            assert body["for_each"] == "${google_cloudfunctions2_function.function}", name
    assert tf["output"]["api_url"]["value"] == "${google_cloudfunctions2_function.api.service_config[0].uri}"


def test_nothing_is_public(tf: dict[str, Any]) -> None:
    # Resources, data sources, locals and outputs: no public member anywhere. (Variables are
    # excluded: their validations name the public members in order to reject them.)
    values = [tf["resource"], tf["data"], tf["locals"], tf["output"]]
    offenders = [s for v in values for s in _strings(v) if PUBLIC_MEMBERS.search(s)
                 and s != "principalSet://goog/public:all"]
    assert offenders == []
    # The one public principal set is the deny policy's *denied* principals.
    deny_rule = _block(_block(_of_type(tf, "google_iam_deny_policy")["firestore_writes"], "rules"), "deny_rule")
    assert deny_rule["denied_principals"] == ["principalSet://goog/public:all"]
    # Every member list a caller supplies rejects public members (and takes ordinary ones).
    for variable in MEMBER_VARIABLES:
        patterns = _validation_regexes(tf, variable)
        assert patterns, f"var.{variable} has no validation"
        for public in ("allUsers", "allAuthenticatedUsers", "principalSet://goog/public:all"):
            assert not any(p.search(public) for p in patterns), f"var.{variable} accepts {public}"
        assert any(p.search("user:alice@example.com") for p in patterns), variable
    assert not any(p.search("group:sre@example.com") for p in _validation_regexes(tf, "admins")), (
        "an ID token does not carry groups: group: admins would silently never match")


def test_every_function_gets_the_identity_environment(tf: dict[str, Any]) -> None:
    for name, body in _function_bodies(tf).items():
        assert _block(body, "service_config")["environment_variables"] == "${local.function_environment}", name
    env = tf["locals"]["function_environment"]
    assert env["PITSTOP_AUDIENCE"] == "${local.audience}"
    assert tf["locals"]["audience"] == '${coalesce(var.audience, "pitstop:${var.project_id}")}'
    assert env["PITSTOP_ADMINS"] == '${join(",", var.admins)}'
    assert env["PITSTOP_SAMPLER_IDENTITY"] == '${google_service_account.function["on_tick"].email}'
    assert env["PITSTOP_BUILD_PROJECT"] == "${local.build_project}"
    assert tf["locals"]["build_project"] == "${coalesce(var.build_project, var.project_id)}"
    for variable in ("audience", "build_project"):
        assert tf["variable"][variable]["default"] is None, f"var.{variable} defaults through a local"
    assert tf["variable"]["admins"]["default"] == []


def test_cloud_build_roles_follow_what_each_function_does(tf: dict[str, Any]) -> None:
    roles = {fn: spec["build_role"] for fn, spec in _identities(tf).items()}
    assert roles == {"on_build": "roles/cloudbuild.builds.viewer", "on_health": None, "on_tick": None,
                     "on_alert": None, "on_command": "roles/cloudbuild.builds.editor",
                     "api": "roles/cloudbuild.builds.editor", "on_event": None}
    grant = _of_type(tf, "google_project_iam_member")["function_cloud_build"]
    assert grant["project"] == "${local.build_project}"
    assert grant["role"] == "${each.value.build_role}"
    assert "if f.build_role != null" in grant["for_each"]
    # The api needs what on_command needs: every per-function grant iterates over all identities (those
    # that touch Cloud Run over the ones that deploy: every function but on_event, which only notifies).
    assert tf["resource"][("google_project_iam_member", "function_firestore")]["for_each"] == "${local.identities}"
    assert "if f.deploys" in tf["resource"][("google_project_iam_member", "function_reads_run_operations")]["for_each"]
    assert {fn for fn, spec in _identities(tf).items() if not spec["deploys"]} == {"on_event"}
    for rtype, name in [("google_cloud_run_v2_service_iam_member", "function_manages_service"),
                        ("google_service_account_iam_member", "function_acts_as_runtime"),
                        ("google_project_iam_member", "function_reads_run_operations_in_service_projects"),
                        ("google_project_iam_member", "function_runs_check_jobs"),
                        ("google_project_iam_member", "function_reads_check_logs"),
                        ("google_project_iam_member", "function_reads_occurrences"),
                        ("google_pubsub_topic_iam_member", "function_publishes")]:
        assert "local.identities" in tf["resource"][(rtype, name)]["for_each"], name
    assert "pitstop-events" in _identities(tf)["api"]["publishes"]


def test_only_pitstop_identities_get_datastore_roles(tf: dict[str, Any]) -> None:
    grants = [(rtype, name, member) for rtype, name, role, member in _iam_grants(tf) if "datastore" in (role or "")]
    assert grants == [("google_project_iam_member", "function_firestore", "${google_service_account.function[each.key].member}")]
    # No datastore role hides in a custom role either.
    for name, body in _of_type(tf, "google_project_iam_custom_role").items():
        assert not any(p.startswith("datastore.") for p in body["permissions"]), name


def test_firestore_writes_are_denied_to_everyone_but_pitstop(tf: dict[str, Any]) -> None:
    policy = _of_type(tf, "google_iam_deny_policy")["firestore_writes"]
    assert policy["count"] == "${var.deny_firestore_writes ? 1 : 0}"
    assert tf["variable"]["deny_firestore_writes"]["default"] is True
    assert policy["parent"] == '${urlencode("cloudresourcemanager.googleapis.com/projects/${var.project_id}")}'
    deny_rule = _block(_block(policy, "rules"), "deny_rule")
    assert deny_rule["exception_principals"] == (
        '${[for fn, sa in google_service_account.function : '
        '"principal://iam.googleapis.com/projects/-/serviceAccounts/${sa.email}"]}')
    assert deny_rule["denied_permissions"] == "${local.firestore_write_permissions}"
    permissions = tf["locals"]["firestore_write_permissions"]
    # v2 (deny) permission names, and only Firestore ones.
    assert {"datastore.googleapis.com/entities.create", "datastore.googleapis.com/entities.update",
            "datastore.googleapis.com/entities.delete"} <= set(permissions)
    assert all(p.startswith("datastore.googleapis.com/") for p in permissions)
    assert not any(p.endswith((".get", ".list")) for p in permissions), "reads stay allowed"


def test_audit_events_go_to_a_locked_log_bucket(tf: dict[str, Any]) -> None:
    bucket = _of_type(tf, "google_logging_project_bucket_config")["audit"]
    assert bucket["locked"] == "${var.audit_log_locked}"
    assert tf["variable"]["audit_log_locked"]["default"] is True
    assert bucket["retention_days"] == "${var.audit_log_retention_days}"
    assert tf["variable"]["audit_log_retention_days"]["default"] == 400
    sinks = _of_type(tf, "google_logging_project_sink")
    assert sorted(sinks) == ["audit", "request_logs"]  # request_logs: Cloud Run's request logs to Pub/Sub (#12)
    sink = sinks["audit"]
    assert sink["destination"] == (
        "logging.googleapis.com/projects/${var.project_id}/locations/${var.audit_log_location}"
        "/buckets/${google_logging_project_bucket_config.audit.bucket_id}")
    assert sink["project"] == bucket["project"] == "${var.project_id}", "same project: no writer grant needed"
    assert sink["unique_writer_identity"] is True
    flt = sink["filter"]
    assert 'resource.type = \\"cloud_run_revision\\"' in flt
    assert "jsonPayload.event_hash:*" in flt
    # The service names come from the same map that names every function.
    assert "for fn, name in local.function_name" in flt
    assert tf["locals"]["function_name"] == '${{for fn in keys(local.identities) : fn => "pitstop-${replace(fn, "_", "-")}"}}'
    names = {n: b["name"] for n, b in _function_bodies(tf).items()}
    assert names == {"function": "${local.function_name[each.key]}", "api": '${local.function_name["api"]}',
                     "on_drain": "${local.drain_name}"}


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


def test_alerts_are_published_to_by_the_monitoring_agent_only(tf: dict[str, Any]) -> None:
    """Incidents are unsigned (they can only roll back): the topic's publisher binding is authoritative."""
    binding = _of_type(tf, "google_pubsub_topic_iam_binding")["monitoring_publishes_alerts"]
    assert binding["role"] == "roles/pubsub.publisher"
    # The agent of project_id, and of every other project of managed_services (each has a channel).
    assert binding["members"] == "${local.monitoring_agents}"
    agent = "serviceAccount:service-${%s.number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"
    assert tf["locals"]["monitoring_agent"] == agent % "data.google_project.this"
    assert tf["locals"]["monitoring_agents"] == (
        '${concat([local.monitoring_agent], [for p in local.service_projects : "%s"])}'
        % agent % "data.google_project.service[p]")
    assert _of_type(tf, "google_project", "data")["service"]["for_each"] == "${local.service_projects}"
    assert binding["depends_on"] == ["${google_monitoring_notification_channel.alerts}",
                                     "${google_monitoring_notification_channel.alerts_in_service_projects}"]
    assert "monitoring_publishes_alerts" not in _of_type(tf, "google_pubsub_topic_iam_member")



# ---------------------------------------------------------------- Firestore indexes, managed services in other projects

def test_firestore_composite_indexes_serve_the_store_queries(tf: dict[str, Any]) -> None:
    """`where service == S order by created_at desc` needs a composite index per collection (rollouts,
    releases); `releases where due_at <=` has one field and is served by the automatic index."""
    indexes = _of_type(tf, "google_firestore_index")
    assert set(indexes) == {"rollouts_by_service", "releases_by_service"}
    for name, collection in [("rollouts_by_service", "rollouts"), ("releases_by_service", "releases")]:
        index = indexes[name]
        assert index["collection"] == collection, name
        assert index["project"] == "${var.project_id}", name
        assert index["database"] == "${local.firestore_database}", name
        assert [(f["field_path"], f["order"]) for f in index["fields"]] == [
            ("service", "ASCENDING"), ("created_at", "DESCENDING")], name


def test_managed_services_take_an_optional_project(tf: dict[str, Any]) -> None:
    variable = tf["variable"]["managed_services"]
    assert "project = optional(string)" in variable["type"], "project is optional: old entries stay valid"
    assert variable["default"] == []
    conditions = [v["condition"] for v in variable["validation"]]
    # Unique per (project, location, name): the same service name may run in several projects.
    assert any('"${coalesce(s.project, "-")}/${coalesce(s.location, "-")}/${s.name}"' in c for c in conditions)
    project_patterns = [p for c in conditions if "s.project == null" in c
                        for p in re.findall(r'regex\("((?:[^"\\]|\\.)*)", s\.project\)', c)]
    assert len(project_patterns) == 1
    pattern = re.compile(project_patterns[0].replace("\\\\", "\\"))
    assert pattern.search("acme-prod") and not pattern.search("123456789012"), "a project ID, not a number"
    # Defaults filled in once; a service in project_id keeps its old key (LOCATION/NAME), so an
    # upgrade moves no binding or alert policy.
    local = tf["locals"]["managed_services"]
    assert "project = coalesce(s.project, var.project_id)" in local
    assert "location = coalesce(s.location, var.region)" in local
    assert ('coalesce(s.project, var.project_id) == var.project_id ? "${coalesce(s.location, var.region)}/${s.name}"'
            in local)
    assert tf["locals"]["service_projects"] == (
        "${toset([for s in local.managed_services : s.project if s.project != var.project_id])}")


def test_per_service_grants_and_alerts_go_to_the_services_project(tf: dict[str, Any]) -> None:
    run = _of_type(tf, "google_cloud_run_v2_service_iam_member")["function_manages_service"]
    assert (run["project"], run["location"], run["name"]) == (
        "${each.value.service.project}", "${each.value.service.location}", "${each.value.service.name}")
    assert run["role"] == "roles/run.developer"
    act_as = _of_type(tf, "google_service_account_iam_member")["function_acts_as_runtime"]
    assert act_as["service_account_id"] == (
        "projects/${each.value.service_account.project}/serviceAccounts/${each.value.service_account.email}")
    assert "for key, sa in local.runtime_service_accounts" in act_as["for_each"]
    runtime = tf["locals"]["runtime_service_accounts"]
    assert "{project = s.project, email = s.service_account}" in runtime
    assert '(sa.project == var.project_id ? sa.email : "${sa.project}/${sa.email}")' in runtime
    policy = _of_type(tf, "google_monitoring_alert_policy")["run_5xx_ratio"]
    assert policy["project"] == "${each.value.project}"
    # A policy can only notify channels of its own project: every service project has one.
    assert policy["notification_channels"] == ["${local.alert_channels[each.value.project]}"]
    channels = _of_type(tf, "google_monitoring_notification_channel")
    assert channels["alerts_in_service_projects"]["for_each"] == "${local.service_projects}"
    assert channels["alerts_in_service_projects"]["project"] == "${each.key}"
    assert {c["labels"]["topic"] for c in channels.values()} == {'${google_pubsub_topic.pitstop["alerts"].id}'}
    assert "{(var.project_id) = google_monitoring_notification_channel.alerts.id}" in tf["locals"]["alert_channels"]
    assert tf["output"]["notification_channels"]["value"] == "${local.alert_channels}"
    # Nothing iterating over managed services (or their projects) is pinned to project_id.
    for kind, rtype, name, body in _all_blocks(tf):
        if re.search(r"local\.(managed_services|runtime_service_accounts|service_projects|check_projects)\b",
                     str(body.get("for_each", ""))):
            pinned = [k for k in ("project", "project_id", "service_account_id", "parent")
                      if "var.project_id" in str(body.get(k, ""))]
            assert pinned == [], f"{kind} {rtype}.{name} puts a per-service resource in project_id: {pinned}"


def test_run_operations_reader_is_defined_and_granted_in_every_service_project(tf: dict[str, Any]) -> None:
    roles = _of_type(tf, "google_project_iam_custom_role")
    own, others = roles["run_operations_reader"], roles["run_operations_reader_in_service_projects"]
    assert own["project"] == "${var.project_id}"
    assert (others["for_each"], others["project"]) == ("${local.service_projects}", "${each.key}")
    for body in (own, others):
        assert body["permissions"] == ["run.operations.get"], "the role holds that one permission"
        assert body["role_id"] == "pitstopRunOperationsReader"
    grants = _of_type(tf, "google_project_iam_member")
    grant = grants["function_reads_run_operations_in_service_projects"]
    assert grant["project"] == "${each.value.project}"
    assert grant["role"] == "${google_project_iam_custom_role.run_operations_reader_in_service_projects[each.value.project].name}"
    assert "for fn, f in local.identities" in grant["for_each"] and "if f.deploys" in grant["for_each"]
    assert "for project in local.service_projects" in grant["for_each"]
    assert grants["function_reads_run_operations"]["role"] == "${google_project_iam_custom_role.run_operations_reader.name}"


def _block_source(text: str, header: str) -> str:
    """A top-level block of a formatted .tf file, from its header line to its closing brace."""
    match = re.search(rf"^{re.escape(header)} \{{\n.*?^\}}\n", text, re.M | re.S)
    assert match, f"no {header} block"
    return match.group(0)


def _attribute_source(text: str, name: str) -> str:
    """`name = <expression>` as written (over several lines until its brackets balance)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s*{name}\s*=", line))
    depth, out = 0, []
    for line in lines[start:]:
        out.append(line)
        depth += sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
        if depth <= 0:
            break
    return "\n".join(out).strip()


def _evaluate(tmp: Path, variables: dict[str, Any], expression: str) -> tuple[int, str]:
    """Evaluate `expression` with `terraform console` (no provider needed) in the module in `tmp`."""
    (tmp / "in.tfvars.json").write_text(json.dumps(variables))
    result = subprocess.run([shutil.which("terraform"), "console", "-var-file=in.tfvars.json"],
                            input=f"jsonencode({expression})\n", capture_output=True, text=True, cwd=tmp,
                            timeout=120, env={**os.environ, "TF_IN_AUTOMATION": "1", "NO_COLOR": "1"})
    return result.returncode, result.stdout + result.stderr


def test_managed_service_keys_and_projects_evaluate_as_documented(tf: dict[str, Any], tmp_path: Path) -> None:
    """The variable, its validations, the locals and the per-service for_each maps, copied as written
    into a provider-free module and evaluated: old entries keep their keys, projects fan out."""
    if shutil.which("terraform") is None:
        pytest.skip("terraform binary not on PATH; install Terraform >= 1.5 to evaluate the expressions")
    variables_tf, main_tf, iam_tf, monitoring_tf = (
        (TF_DIR / f).read_text() for f in ("variables.tf", "main.tf", "iam.tf", "monitoring.tf"))
    for_each = {
        "manages": (iam_tf, 'resource "google_cloud_run_v2_service_iam_member" "function_manages_service"'),
        "acts_as": (iam_tf, 'resource "google_service_account_iam_member" "function_acts_as_runtime"'),
        "operations": (iam_tf, 'resource "google_project_iam_member" "function_reads_run_operations_in_service_projects"'),
        "roles": (iam_tf, 'resource "google_project_iam_custom_role" "run_operations_reader_in_service_projects"'),
        "metrics": (iam_tf, 'resource "google_project_iam_member" "function_reads_metrics_in_service_projects"'),
        "alerts": (monitoring_tf, 'resource "google_monitoring_alert_policy" "run_5xx_ratio"'),
        "channels": (monitoring_tf, 'resource "google_monitoring_notification_channel" "alerts_in_service_projects"'),
        "job_roles": (iam_tf, 'resource "google_project_iam_custom_role" "check_jobs_runner"'),
        "jobs": (iam_tf, 'resource "google_project_iam_member" "function_runs_check_jobs"'),
        "logs": (iam_tf, 'resource "google_project_iam_member" "function_reads_check_logs"'),
        "occurrences": (iam_tf, 'resource "google_project_iam_member" "function_reads_occurrences"'),
    }
    locals_ = [_attribute_source(main_tf, name) for name in (
        "functions", "http_functions", "identities", "managed_services", "service_projects", "runtime_service_accounts",
        "check_projects", "registry_project")]
    for key, (text, header) in for_each.items():
        expr = _attribute_source(_block_source(text, header), "for_each").split("=", 1)[1].strip()
        locals_.append(f"keys_{key} = try(keys({expr}), sort({expr}))")  # each.key: a map's keys, a set's elements
    variables = [_block_source(variables_tf, f'variable "{v}"')
                 for v in ("project_id", "region", "managed_services", "registry_project")]
    (tmp_path / "main.tf").write_text("\n".join(variables) + "\nlocals {\n" + "\n".join(locals_) + "\n}\n")
    probe = "{services = local.managed_services, projects = local.service_projects, " + ", ".join(
        f"{k} = local.keys_{k}" for k in for_each) + (", accounts = local.runtime_service_accounts, "
                                                     "check_projects = local.check_projects, "
                                                     "registry = local.registry_project}")

    def evaluate(services: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
        rc, out = _evaluate(tmp_path, {"project_id": "acme-pitstop", "region": "us-central1",
                                       "managed_services": services, **more}, probe)
        assert rc == 0, out
        line = next(line for line in out.splitlines() if line.startswith('"'))
        return json.loads(json.loads(line))

    fns = sorted(fn for fn, spec in _identities(tf).items() if spec["deploys"])  # all but on_event
    # An entry without project: exactly the keys and projects it had before.
    legacy = evaluate([{"name": "web", "service_account": "web-run@acme-pitstop.iam.gserviceaccount.com"}])
    assert legacy["services"] == {"us-central1/web": {
        "name": "web", "project": "acme-pitstop", "location": "us-central1",
        "service_account": "web-run@acme-pitstop.iam.gserviceaccount.com", "alert_on_5xx": True}}
    assert legacy["projects"] == []
    assert legacy["manages"] == [f"{fn}/us-central1/web" for fn in fns]
    assert legacy["acts_as"] == [f"{fn}/web-run@acme-pitstop.iam.gserviceaccount.com" for fn in fns]
    assert legacy["alerts"] == ["us-central1/web"]
    assert legacy["operations"] == legacy["roles"] == legacy["metrics"] == legacy["channels"] == []
    # Checks (issue #10) add resources of their own and rename none: a service in project_id gets its
    # jobs role and grants there; occurrences are read in project_id unless registry_project says.
    assert legacy["check_projects"] == legacy["job_roles"] == ["acme-pitstop"]
    assert legacy["jobs"] == legacy["logs"] == [f"{fn}/acme-pitstop" for fn in fns]
    assert legacy["occurrences"] == fns
    assert legacy["registry"] == "acme-pitstop"
    elsewhere = evaluate([{"name": "web", "service_account": "web-run@acme-pitstop.iam.gserviceaccount.com"}],
                         registry_project="acme-artifacts")
    assert elsewhere["registry"] == "acme-artifacts"
    assert {k: elsewhere[k] for k in for_each} == {k: legacy[k] for k in for_each}, "only the project moves"
    nothing = evaluate([])
    assert nothing["check_projects"] == nothing["job_roles"] == nothing["jobs"] == nothing["logs"] == []

    # The README's pipeline: staging in acme-staging, production in acme-prod in three regions.
    prod_sa = "web-run@acme-prod.iam.gserviceaccount.com"
    release = evaluate(
        [{"name": "web", "project": "acme-staging", "location": "us-central1",
          "service_account": "web-run@acme-staging.iam.gserviceaccount.com"}]
        + [{"name": "web", "project": "acme-prod", "location": r, "service_account": prod_sa}
           for r in ("us-central1", "europe-west1", "asia-northeast1")])
    assert sorted(release["services"]) == ["acme-prod/asia-northeast1/web", "acme-prod/europe-west1/web",
                                           "acme-prod/us-central1/web", "acme-staging/us-central1/web"]
    assert {k: s["project"] for k, s in release["services"].items()} == {
        k: k.split("/")[0] for k in release["services"]}
    assert release["projects"] == ["acme-prod", "acme-staging"]
    assert release["roles"] == release["channels"] == ["acme-prod", "acme-staging"]
    assert release["operations"] == sorted(f"{fn}/{p}" for fn in fns for p in ("acme-prod", "acme-staging"))
    assert release["metrics"] == ["on_tick/acme-prod", "on_tick/acme-staging"]
    # Check jobs run where the environments are, not in acme-pitstop (no service there).
    assert release["check_projects"] == release["job_roles"] == ["acme-prod", "acme-staging"]
    assert release["jobs"] == release["logs"] == sorted(f"{fn}/{p}" for fn in fns for p in ("acme-prod", "acme-staging"))
    # One actAs per function and (project, account), however many regions share the account.
    assert release["accounts"][f"acme-prod/{prod_sa}"] == {"project": "acme-prod", "email": prod_sa}
    assert len(release["acts_as"]) == 2 * len(fns)
    assert len(release["manages"]) == 4 * len(fns) and len(release["alerts"]) == 4

    # Unique per (project, location, name): the same name and region in two projects is fine, twice
    # in one project is not.
    twice = [{"name": "web", "project": "acme-prod", "service_account": prod_sa}] * 2
    rc, out = _evaluate(tmp_path, {"project_id": "acme-pitstop", "region": "us-central1", "managed_services": twice}, probe)
    assert rc != 0 and "lists the same service (project, location and name) twice" in out
    rc, out = _evaluate(tmp_path, {"project_id": "acme-pitstop", "region": "us-central1", "managed_services": [
        {"name": "web", "project": "123456789012", "service_account": prod_sa}]}, probe)
    assert rc != 0 and "must be a project ID" in out
    rc, out = _evaluate(tmp_path, {"project_id": "acme-pitstop", "region": "us-central1", "managed_services": [],
                                   "registry_project": "123456789012"}, probe)
    assert rc != 0 and "registry_project must be a project ID" in out


# ---------------------------------------------------------------- release checks (issue #10)

CHECK_JOB_PERMISSIONS = [
    "run.executions.cancel",  # run_once cancels a second execution a racing caller started
    "run.executions.get", "run.executions.list",
    "run.jobs.create", "run.jobs.delete", "run.jobs.get", "run.jobs.list", "run.jobs.run",
    "run.jobs.runWithOverrides", "run.jobs.update",
    "run.operations.get",
]


def _check_grant_for_each(body: dict[str, Any]) -> None:
    """A grant to every function that runs checks, in every project holding managed services."""
    assert "for fn, f in local.identities" in body["for_each"]
    assert "for project in local.check_projects" in body["for_each"]
    assert "if f.runs_checks" in body["for_each"]
    assert body["project"] == "${each.value.project}"
    assert body["member"] == "${google_service_account.function[each.value.function].member}"


def test_every_function_runs_checks(tf: dict[str, Any]) -> None:
    """The release engine runs in every function that decides (all but on_event, which only delivers
    notifications), and any input may bring a release to a check."""
    identities = _identities(tf)
    assert {fn: spec.get("runs_checks") for fn, spec in identities.items()} == {fn: fn != "on_event" for fn in identities}
    assert tf["locals"]["check_projects"] == "${toset([for s in local.managed_services : s.project])}"


def test_check_jobs_role_holds_exactly_the_jobs_permissions(tf: dict[str, Any]) -> None:
    roles = _of_type(tf, "google_project_iam_custom_role")
    role = roles["check_jobs_runner"]
    assert (role["for_each"], role["project"]) == ("${local.check_projects}", "${each.key}")
    assert role["role_id"] == "pitstopCheckJobsRunner"
    assert role["permissions"] == CHECK_JOB_PERMISSIONS
    # Jobs only: nothing that reaches services, revisions, IAM policies or accounts.
    assert not [p for p in role["permissions"] if not p.startswith(("run.jobs.", "run.executions.", "run.operations."))]
    assert not [p for p in role["permissions"] if p.endswith(("IamPolicy", ".actAs"))]
    # The operations role stays what it was (its key, id and one permission).
    for name in ("run_operations_reader", "run_operations_reader_in_service_projects"):
        assert roles[name]["permissions"] == ["run.operations.get"], name
    grant = _of_type(tf, "google_project_iam_member")["function_runs_check_jobs"]
    _check_grant_for_each(grant)
    assert grant["role"] == "${google_project_iam_custom_role.check_jobs_runner[each.value.project].name}"
    # A job runs as an account the functions may act as: the managed services' runtime accounts
    # only (no project-level serviceAccountUser, no actAs on any other account).
    act_as = [(rtype, name) for rtype, name, role_, _ in _iam_grants(tf) if role_ == "roles/iam.serviceAccountUser"]
    assert act_as == [("google_service_account_iam_member", "function_acts_as_runtime"),
                      ("google_service_account_iam_member", "tick_acts_as_drain_invoker")]
    assert "for key, sa in local.runtime_service_accounts" in tf["resource"][act_as[0]]["for_each"]


def test_check_output_is_read_from_logging_in_the_jobs_projects(tf: dict[str, Any]) -> None:
    jobs = PACKAGE / "gcp" / "jobs.py"
    if jobs.exists():
        assert "entries:list" in jobs.read_text(), "gcp/jobs.py no longer reads Cloud Logging: drop the grant"
    grants = {n: b for n, b in _of_type(tf, "google_project_iam_member").items() if "logging" in b["role"]}
    assert list(grants) == ["function_reads_check_logs"]
    assert grants["function_reads_check_logs"]["role"] == "roles/logging.viewer", "not privateLogViewer"
    _check_grant_for_each(grants["function_reads_check_logs"])


def test_scan_reads_occurrences_in_the_registry_project(tf: dict[str, Any]) -> None:
    grants = {n: b for n, b in _of_type(tf, "google_project_iam_member").items() if "containeranalysis" in b["role"]}
    assert list(grants) == ["function_reads_occurrences"]
    grant = grants["function_reads_occurrences"]
    assert grant["role"] == "roles/containeranalysis.occurrences.viewer"
    assert grant["project"] == "${local.registry_project}"
    assert grant["for_each"] == "${{for fn, f in local.identities : fn => f if f.runs_checks}}"
    assert grant["member"] == "${google_service_account.function[each.key].member}"
    assert tf["locals"]["registry_project"] == "${coalesce(var.registry_project, var.project_id)}"
    assert tf["variable"]["registry_project"]["default"] is None, "var.registry_project defaults through a local"
    patterns = _validation_regexes(tf, "registry_project")
    assert len(patterns) == 1
    assert patterns[0].search("acme-artifacts") and not patterns[0].search("123456789012")
    # The APIs the checks call, enabled (with the others) in project_id.
    assert {"containeranalysis.googleapis.com", "run.googleapis.com", "logging.googleapis.com"} <= set(tf["locals"]["apis"])


def test_on_event_reads_secrets_and_deploys_nothing(tf: dict[str, Any]) -> None:
    """Notifications (issue #11): only on_event reads Secret Manager, and it gets no Cloud Run role."""
    identities = _identities(tf)
    assert identities["on_event"]["topic"] == "pitstop-events"
    # Only the secrets the sinks name (var.notify_secrets), never every secret of the project.
    assert not any(b["role"] == "roles/secretmanager.secretAccessor"
                   for b in _of_type(tf, "google_project_iam_member").values())
    grant = _of_type(tf, "google_secret_manager_secret_iam_member")["on_event_reads_secret"]
    assert grant["role"] == "roles/secretmanager.secretAccessor" and "var.notify_secrets" in grant["for_each"]
    assert 'function["on_event"]' in grant["member"]
    publish = _of_type(tf, "google_pubsub_topic_iam_member")["on_event_publishes_to_sink"]
    assert publish["role"] == "roles/pubsub.publisher" and "var.notify_topics" in publish["for_each"]
    secrets, topics = _validation_regexes(tf, "notify_secrets")[0], _validation_regexes(tf, "notify_topics")[0]
    assert secrets.search("slack-hook") and secrets.search("projects/acme/secrets/chat-hook")
    assert not secrets.search("projects/acme/secrets/a/versions/1")
    assert topics.search("projects/acme-audit/topics/deployments") and not topics.search("deployments")


# ---------------------------------------------------------------- request logs (issue #12)

def test_request_logs_are_sunk_per_service_project_with_a_bounded_filter(tf: dict[str, Any]) -> None:
    sink = _of_type(tf, "google_logging_project_sink")["request_logs"]
    assert sink["for_each"] == "${local.request_log_services}" and sink["project"] == "${each.key}"
    assert "local.check_projects" in tf["locals"]["request_log_services"], "every project holding managed services"
    assert sink["destination"] == 'pubsub.googleapis.com/${google_pubsub_topic.pitstop["request_logs"].id}'
    assert tf["locals"]["pitstop_topics"]["request_logs"] == "pitstop-request-logs"
    assert sink["unique_writer_identity"] is True
    flt = sink["filter"]
    # The log name as Cloud Logging spells it (the slash URL-encoded), the revision resource, the services,
    # and the volume bound: every 5xx, a sample of the rest.
    assert 'logName = \\"projects/${each.key}/logs/run.googleapis.com%2Frequests\\"' in flt, flt
    assert 'resource.type = \\"cloud_run_revision\\"' in flt
    assert "resource.labels.service_name = (" in flt and "each.value" in flt
    assert "(httpRequest.status >= 500 OR sample(insertId, ${var.request_log_fraction}))" in flt
    variable = tf["variable"]["request_log_fraction"]
    assert variable["default"] == 0.1 and "var.request_log_fraction > 0" in variable["validation"][0]["condition"]
    # Each sink's writer identity may publish on the topic, and nothing else is granted to it.
    grant = _of_type(tf, "google_pubsub_topic_iam_member")["request_log_sink_publishes"]
    assert grant["for_each"] == "${google_logging_project_sink.request_logs}"
    assert (grant["role"], grant["member"]) == (PUBLISHER, "${each.value.writer_identity}")
    assert _topic_of(tf, grant["topic"]) == "pitstop-request-logs"


def test_the_drain_pulls_its_subscription_on_a_tick_armed_cloud_tasks_chain(tf: dict[str, Any]) -> None:
    from pitstop.drain import SUBSCRIPTION

    sub = _of_type(tf, "google_pubsub_subscription")["request_logs"]
    assert sub["name"] == SUBSCRIPTION and "push_config" not in sub, "a pull subscription, named as the code names it"
    assert sub["topic"] == '${google_pubsub_topic.pitstop["request_logs"].id}'
    assert _wiring_constant("PULLS") == {"pitstop-request-logs": SUBSCRIPTION}, "the same locally"
    pulls = _of_type(tf, "google_pubsub_subscription_iam_member")["drain_pulls"]
    assert (pulls["role"], pulls["member"]) == ("roles/pubsub.subscriber",
                                                '${google_service_account.function["on_tick"].member}')
    drain = _function_bodies(tf)["on_drain"]
    config = _block(drain, "service_config")
    assert config["max_instance_count"] == 1, "the counts live in one instance's memory"
    assert config["ingress_settings"] == "ALLOW_INTERNAL_ONLY"
    assert tf["locals"]["drain_url"].endswith("/${local.drain_name}")
    # Cloud Tasks: a queue on_tick may enqueue to, calling the drain as an account that may only invoke it.
    queue = _of_type(tf, "google_cloud_tasks_queue")["drain"]
    assert _block(queue, "retry_config")["max_attempts"] == 1, "a missed slot is not retried: the next is 5 s on"
    enqueue = _of_type(tf, "google_cloud_tasks_queue_iam_member")["tick_enqueues"]
    assert (enqueue["role"], enqueue["member"]) == ("roles/cloudtasks.enqueuer",
                                                    '${google_service_account.function["on_tick"].member}')
    invoker = _of_type(tf, "google_cloud_run_v2_service_iam_member")["drain_invoker"]
    assert (invoker["name"], invoker["member"]) == ("${google_cloudfunctions2_function.on_drain.name}",
                                                    "${google_service_account.drain_invoker.member}")
    acts = _of_type(tf, "google_service_account_iam_member")["tick_acts_as_drain_invoker"]
    assert acts["service_account_id"] == "${google_service_account.drain_invoker.name}"
    env = tf["locals"]["function_environment"]
    assert (env["PITSTOP_DRAIN_QUEUE"], env["PITSTOP_DRAIN_URL"], env["PITSTOP_DRAIN_INVOKER"]) == (
        "${google_cloud_tasks_queue.drain.id}", "${local.drain_url}", "${google_service_account.drain_invoker.email}")
    assert env["PITSTOP_LOG_FRACTION"] == "${tostring(var.request_log_fraction)}"
    assert "cloudtasks.googleapis.com" in tf["locals"]["apis"]
