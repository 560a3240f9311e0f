"""Custom metrics' CEL conditions (core/cel.py): evaluating them, and refusing unusable ones when applied."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pitstop.core import cel
from pitstop.core.models import Health
from pitstop.core.pipeline import load_pipeline
from pitstop.core.spec import SpecError, load_spec

THRESHOLDS = {"max_error_rate": 0.05, "max_p99_ms": 1000.0, "max_latency_increase": 0.2}


def run(condition: str, canary: dict, stable: dict | None = None, thresholds: dict | None = None) -> cel.Evaluated:
    return cel.evaluate(condition, canary, stable, THRESHOLDS if thresholds is None else thresholds)


# ---------------------------------------------------------------- the examples

@pytest.mark.parametrize("canary, stable, passed", [
    (95.0, 100.0, True), (90.0, 100.0, True), (89.0, 100.0, False), (0.0, 100.0, False), (0.0, 0.0, True)])
def test_a_business_metric_against_stable(canary: float, stable: float, passed: bool) -> None:
    got = run("canary.checkouts_per_min >= 0.9 * stable.checkouts_per_min",
              {"checkouts_per_min": canary}, {"checkouts_per_min": stable})
    assert got.passed is passed
    assert got.reason == f"canary.checkouts_per_min = {canary:g}, stable.checkouts_per_min = {stable:g}"


def test_error_rate_within_a_point_of_stable() -> None:
    condition = "canary.error_rate <= stable.error_rate + 0.01"
    assert run(condition, {"error_rate": 0.015}, {"error_rate": 0.01}).passed is True
    assert run(condition, {"error_rate": 0.03}, {"error_rate": 0.01}).passed is False


def test_p99_against_a_threshold_of_the_health() -> None:
    condition = "canary.p99_ms < thresholds.max_p99_ms"
    assert run(condition, {"p99_ms": 999.0}).passed is True
    assert run(condition, {"p99_ms": 1000.0}).passed is False


# ---------------------------------------------------------------- numbers are doubles

@pytest.mark.parametrize("condition, canary, passed", [
    ("canary.checkouts >= 0.9 * stable.checkouts", {"checkouts": 10}, True),  # ints passed by a caller
    ("canary.requests >= 100", {"requests": 120.0}, True),  # an int literal against a double
    ("canary.requests == 120", {"requests": 120.0}, True),
    ("100 < canary.requests", {"requests": 120.0}, True),  # the int on the left: celpy alone refuses it
    ("2 * canary.requests > 239", {"requests": 120.0}, True),
    ("canary.requests / 7 > 17", {"requests": 120.0}, True),  # 17.14..., not integer division's 17
    ("canary['requests'] > 0x10", {"requests": 17.0}, True),  # index syntax and a hex literal
    ("canary.requests > 010", {"requests": 11.0}, True),  # a leading zero: still decimal ten
])
def test_ints_and_doubles_mix(condition: str, canary: dict, passed: bool) -> None:
    got = run(condition, canary, {"checkouts": 10})
    assert got.passed is passed, got


# ---------------------------------------------------------------- missing values: inconclusive, never a pass

def test_no_stable_revision_is_inconclusive_and_says_so() -> None:
    got = run("canary.checkouts_per_min >= 0.9 * stable.checkouts_per_min", {"checkouts_per_min": 95.0}, None)
    assert got == cel.Evaluated(None, "no data for stable.checkouts_per_min (no stable revision measured over "
                                      "this window)")


@pytest.mark.parametrize("canary, stable, missing", [
    ({"checkouts_per_min": None}, {"checkouts_per_min": 100.0}, "canary.checkouts_per_min"),
    ({}, {"checkouts_per_min": 100.0}, "canary.checkouts_per_min"),
    ({"checkouts_per_min": 95.0}, {}, "stable.checkouts_per_min"),
    ({"checkouts_per_min": float("nan")}, {"checkouts_per_min": 100.0}, "canary.checkouts_per_min"),
    ({}, {}, "canary.checkouts_per_min, stable.checkouts_per_min"),
])
def test_a_value_without_data_is_inconclusive_naming_it(canary: dict, stable: dict, missing: str) -> None:
    got = run("canary.checkouts_per_min >= 0.9 * stable.checkouts_per_min", canary, stable)
    assert got == cel.Evaluated(None, f"no data for {missing}")


def test_missing_data_is_never_a_pass_even_where_cel_would_absorb_the_error() -> None:
    # CEL makes `true || error` true; a condition that reads a value with no data is still not judged on it.
    assert run("canary.p99_ms < 500 || canary.checkouts > 1", {"p99_ms": 100.0}).passed is None


def test_an_undefined_threshold_is_inconclusive_naming_it() -> None:
    got = run("canary.x < thresholds.max_x", {"x": 1.0}, thresholds={})
    assert got == cel.Evaluated(None, "thresholds.max_x is not defined")


def test_has_lets_a_condition_handle_a_missing_value_itself() -> None:
    condition = "!has(stable.checkouts) || canary.checkouts >= 0.9 * stable.checkouts"
    assert run(condition, {"checkouts": 1.0}, None).passed is True  # no stable: the author's choice
    assert run(condition, {"checkouts": 1.0}, {"checkouts": 100.0}).passed is False
    # A guard that does not cover what is read: still inconclusive, naming the value.
    got = run("has(stable.x) || canary.y >= stable.x", {"y": 1.0}, {})
    assert got == cel.Evaluated(None, "no data for stable.x")


# ---------------------------------------------------------------- evaluation errors: inconclusive with the reason

@pytest.mark.parametrize("condition, canary, reason", [
    ("canary.errors / canary.requests <= 0.05", {"errors": 0.0, "requests": 0.0},
     "could not be evaluated: division by zero"),  # IEEE would give nan, and nan <= 0.05 is a fail
    ("canary.checkouts / stable.checkouts > 1.1", {"checkouts": 5.0}, "could not be evaluated: division by zero"),
    ("canary.checkouts", {"checkouts": 5.0}, "gives a double 5, not true or false: a condition must be a comparison"),
    ("canary.checkouts > 1 ? 'yes' : 'no'", {"checkouts": 5.0},
     "gives a string 'yes', not true or false: a condition must be a comparison"),
    ("canary.checkouts + 'a' == 'b'", {"checkouts": 5.0},
     "could not be evaluated: `+` does not apply to double and string"),
    ("checkouts > 1", {"checkouts": 5.0},
     "could not be evaluated: checkouts is not defined: a condition reads canary.NAME, stable.NAME and "
     "thresholds.NAME"),
])
def test_an_evaluation_error_is_inconclusive_with_the_reason(condition: str, canary: dict, reason: str) -> None:
    assert run(condition, canary, {"checkouts": 0.0}) == cel.Evaluated(None, reason)


def test_a_condition_that_does_not_compile_is_inconclusive_when_evaluated() -> None:
    got = run("canary.x >", {"x": 1.0})
    assert got.passed is None and got.reason.startswith("the condition does not compile: not a CEL expression")


# ---------------------------------------------------------------- compile_error

@pytest.mark.parametrize("condition", [
    "canary.checkouts_per_min >= 0.9 * stable.checkouts_per_min", "canary.error_rate <= stable.error_rate + 0.01",
    "canary.p99_ms < thresholds.max_p99_ms", "!has(stable.x) || canary.x > stable.x"])
def test_valid_conditions_compile(condition: str) -> None:
    assert cel.compile_error(condition) is None


@pytest.mark.parametrize("condition, reason", [
    ("canary.x >", "not a CEL expression: cannot read it from column 10 (`>`) of `canary.x >`, which ends there: "
                   "is something missing?"),
    ("(((canary.x)", "not a CEL expression: cannot read it from column 12 (`)`)"),
    ("canary.x = 1", "not a CEL expression: cannot read it from column 10 (`=`) of `canary.x = 1` (CEL compares "
                     "with ==)"),
    ("canary.x @ 1", "not a CEL expression: cannot read it from column 10 (`@`) of `canary.x @ 1`"),
    ("canary.x >= 1 &&\n  canary.y = 2\n", "not a CEL expression: cannot read it from line 2, column 12 (`=`) of "
                                           "`canary.x >= 1 && canary.y = 2` (CEL compares with ==)"),  # a YAML block
])
def test_compile_error_says_why(condition: str, reason: str) -> None:
    error = cel.compile_error(condition)
    assert error is not None and error.startswith(reason), error


def test_celpy_is_not_imported_with_the_module() -> None:
    code = "import sys, pitstop.core.cel, pitstop.core.spec; print('celpy' in sys.modules, 'lark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------- thresholds_of

def test_thresholds_are_the_health_limits_and_its_own() -> None:
    health = Health.model_validate({"max_p99_ms": 800, "cpu": {"max": 0.7}, "thresholds": {"min_checkouts": 3}},
                                   strict=False)
    got = cel.thresholds_of(health)
    assert (got["max_p99_ms"], got["max_cpu"], got["max_memory"], got["min_checkouts"]) == (800, 0.7, 0.85, 3)
    assert got["min_requests"] == 50.0 and got["max_error_rate"] == 0.05


# ---------------------------------------------------------------- refused when applied

SPEC = """
service: shop
regions: [us-central1]
match: {repo: shop}
health:
  thresholds: {min_ratio: 0.9}
  metrics:
"""


def metric(name: str, condition: str, extra: str = "") -> str:
    return f"    - {{name: {name}, log_metric: {name}, condition: {condition!r}{extra}}}\n"


def refusal(text: str) -> str:
    with pytest.raises(SpecError) as err:
        load_spec(text, "spec shop.yaml")
    return str(err.value)


def test_a_spec_with_good_conditions_is_accepted() -> None:
    spec = load_spec(SPEC + metric("checkouts", "canary.checkouts >= thresholds.min_ratio * stable.checkouts")
                     + metric("carts", "canary.carts > 0 && canary.error_rate < thresholds.max_error_rate",
                              ", dry_run: true, on_fail: pause"))
    assert [m.name for m in spec.health.metrics] == ["checkouts", "carts"]
    assert spec.health.metrics[1].dry_run and spec.health.metrics[1].on_fail == "pause"


def test_a_condition_that_does_not_compile_is_refused() -> None:
    assert refusal(SPEC + metric("checkouts", "canary.checkouts >=")) == (
        "spec shop.yaml: invalid rollout spec\n"
        "  health.metrics.0.condition: metric checkouts: the condition does not compile: not a CEL expression: "
        "cannot read it from column 18 (`>=`) of `canary.checkouts >=`, which ends there: is something missing?")


def test_a_value_no_metric_provides_is_refused_naming_it() -> None:
    message = refusal(SPEC + metric("checkouts", "canary.checkout >= 0.9 * stable.checkouts"))
    assert ("  health.metrics.0.condition: metric checkouts: the condition reads canary.checkout, which is neither "
            "a built-in value nor a declared metric (built-in: requests, errors, error_rate, p50_ms, p95_ms, p99_ms, "
            "cpu, memory; declared: checkouts)") in message


def test_a_metric_may_read_another_declared_metric() -> None:
    load_spec(SPEC + metric("checkouts", "canary.checkouts >= 0.5 * canary.carts") + metric("carts", "true"))


def test_an_undefined_threshold_is_refused_naming_it() -> None:
    message = refusal(SPEC + metric("checkouts", "canary.checkouts >= thresholds.min_ratoi * stable.checkouts"))
    assert "  health.metrics.0.condition: metric checkouts: the condition reads thresholds.min_ratoi, which is not defined (thresholds: max_cpu, max_error_rate, " \
           "max_latency_increase, max_memory, max_p99_ms, min_latency_increase_ms, min_ratio, min_requests; add " \
           "your own under health.thresholds)" in message


@pytest.mark.parametrize("condition, problem", [
    ("canary.checkouts", "metric checkouts: the condition can never be judged: gives a double 1, not true or false"),
    ("canary.checkouts + 'x' == 'y'", "metric checkouts: the condition can never be judged: could not be "
                                      "evaluated: `+` does not apply to double and string (tried with every value 1.0)"),
    ("size(canary.checkouts) > 1", "metric checkouts: the condition can never be judged"),
])
def test_a_condition_that_cannot_give_true_or_false_is_refused(condition: str, problem: str) -> None:
    assert problem in refusal(SPEC + metric("checkouts", condition))


def test_a_condition_nested_too_deeply_is_refused_not_crashed_on() -> None:
    condition = "(" * 400 + "canary.checkouts" + ")" * 400 + " > 0"
    assert "metric checkouts: the condition" in refusal(SPEC + metric("checkouts", condition))
    assert run(condition, {"checkouts": 1.0}).passed is None


def test_a_division_that_is_zero_only_on_trial_values_is_accepted() -> None:
    load_spec(SPEC + metric("checkouts", "canary.checkouts / (stable.checkouts - canary.checkouts) > 0.5"))


def test_a_metric_named_like_a_built_in_or_twice_is_refused() -> None:
    message = refusal(SPEC + metric("error_rate", "canary.error_rate < 0.1") + metric("carts", "canary.carts > 0")
                      + metric("carts", "canary.carts > 1"))
    assert "  health.metrics.0.name: metric error_rate: the name is a built-in value (canary.error_rate); " \
           "choose another" in message
    assert "  health.metrics.2.name: metric carts: declared twice (also metrics.1)" in message


def test_a_threshold_named_like_a_health_limit_is_refused() -> None:
    text = SPEC.replace("{min_ratio: 0.9}", "{min_ratio: 0.9, max_p99_ms: 300}") + metric("carts", "canary.carts > 0")
    assert "  health.thresholds.max_p99_ms: max_p99_ms is already one of the health's limits, which conditions read " \
           "as thresholds.max_p99_ms; name this threshold differently" in refusal(text)


def test_every_problem_is_listed_at_once() -> None:
    message = refusal(SPEC + metric("a", "canary.b > 1") + metric("c", "canary.c >"))
    assert message.count("\n  health.metrics.") == 2


PIPELINE = """
service: shop
environments:
  staging:
    regions: [us-central1]
    on: {branch: main}
  production:
    regions: [us-central1]
    on: {tag: "v*"}
    health:
      metrics:
        - {name: checkouts, log_metric: checkouts, condition: "canary.checkout >= stable.checkouts"}
"""


def test_a_pipeline_environment_with_a_bad_condition_is_refused() -> None:
    with pytest.raises(SpecError) as err:
        load_pipeline(PIPELINE, "pipeline.yaml")
    assert str(err.value).startswith("pipeline.yaml: invalid pipeline\n  environments.production.health.metrics.0."
                                     "condition: metric checkouts: the condition reads canary.checkout, which is "
                                     "neither a built-in value nor a declared metric")
    load_pipeline(PIPELINE.replace("canary.checkout ", "canary.checkouts "))


# ---------------------------------------------------------------- PUT /api/v1/specs and /pipelines refuse them

class _Call:
    """A request with a YAML body, from a caller the API never gets to authorize: the body is refused first."""

    def __init__(self, body: str) -> None:
        from types import SimpleNamespace

        self.request = SimpleNamespace(mimetype="application/yaml")
        self.engine = SimpleNamespace(store=None)
        self._body = body.encode()

    def body(self) -> bytes:
        return self._body

    def who(self):
        from types import SimpleNamespace

        return SimpleNamespace(email="ana@example.com")

    def must(self, *_: object) -> None:
        raise AssertionError("an invalid document is refused before anyone's grants are checked")


def test_the_api_refuses_a_spec_with_a_bad_condition_and_says_nothing_was_applied() -> None:
    from pitstop.surfaces import api

    body = SPEC + metric("checkouts", "canary.checkout >= stable.checkouts")
    with pytest.raises(api.ApiError) as err:
        api.put_spec(_Call(body), "shop--production")
    assert (err.value.code, err.value.status) == ("invalid_request", 400)
    assert err.value.message.startswith("spec shop--production: invalid rollout spec\n  health.metrics.0.condition: "
                                        "metric checkouts: the condition reads canary.checkout, which is neither")
    assert err.value.message.endswith("\nNothing was applied; the stored spec is unchanged.")


def test_the_api_refuses_a_pipeline_with_a_bad_condition_and_says_nothing_was_applied() -> None:
    from pitstop.surfaces import api

    with pytest.raises(api.ApiError) as err:
        api.put_pipeline(_Call(PIPELINE), "shop")
    assert err.value.code == "invalid_request"
    assert err.value.message.startswith("pipeline shop: invalid pipeline\n  environments.production.health.metrics.0."
                                        "condition: metric checkouts: the condition reads canary.checkout")
    assert err.value.message.endswith("\nNothing was applied; the stored pipeline and specs are unchanged.")


def test_pitstop_apply_dry_run_names_the_metric_and_its_problem(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from pitstop.surfaces import cli

    monkeypatch.setenv("COLUMNS", "300")
    path = tmp_path / "shop.yaml"
    path.write_text(SPEC + metric("checkouts", "canary.checkouts >= thresholds.min_ratoi * stable.checkouts"))
    result = CliRunner().invoke(cli.app, ["apply", "--dry-run", str(path)])
    assert result.exit_code == 1
    assert "invalid rollout spec" in result.output and "metric checkouts" in result.output
    assert "thresholds.min_ratoi, which is not defined" in " ".join(result.output.split())
    path.write_text(SPEC + metric("checkouts", "canary.checkouts >= thresholds.min_ratio * stable.checkouts"))
    assert CliRunner().invoke(cli.app, ["apply", "--dry-run", str(path)]).exit_code == 0
