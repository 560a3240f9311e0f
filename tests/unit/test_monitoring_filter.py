"""The local Monitoring's filter parser: the subset pitstop writes, and loud refusal of the rest."""

import pytest

from pitstop.local.monitoring_filter import Condition, FilterError, parse_filter

COUNT = "run.googleapis.com/request_count"


def fields(**labels: str) -> dict[str, str]:
    out = {"resource.type": "cloud_run_revision"}
    for name, value in labels.items():
        scope, _, label = name.partition("__")
        out[f"{scope}.labels.{label}"] = value
    return out


def test_metric_type_with_and_without_spaces_and_either_quote():
    for text in (f'metric.type = "{COUNT}"', f'metric.type="{COUNT}"', f"metric.type = '{COUNT}'"):
        parsed = parse_filter(text)
        assert parsed.metric_type == COUNT
        assert parsed.conditions == ()


def test_and_of_equals_not_equals_one_of_starts_with():
    parsed = parse_filter(
        f'metric.type = "{COUNT}" AND resource.type = "cloud_run_revision" '
        'AND resource.labels.service_name = "web" AND metric.labels.response_code_class != "2xx" '
        'AND resource.labels.revision_name = one_of("web-1", \'web-2\') '
        'AND resource.labels.location = starts_with("us-")'
    )
    assert parsed.conditions == (
        Condition("resource.type", "equals", ("cloud_run_revision",)),
        Condition("resource.labels.service_name", "equals", ("web",)),
        Condition("metric.labels.response_code_class", "equals", ("2xx",), negated=True),
        Condition("resource.labels.revision_name", "one_of", ("web-1", "web-2")),
        Condition("resource.labels.location", "starts_with", ("us-",)),
    )
    match = fields(resource__service_name="web", metric__response_code_class="5xx",
                   resource__revision_name="web-2", resource__location="us-central1")
    assert parsed.matches(match)
    assert not parsed.matches({**match, "metric.labels.response_code_class": "2xx"})
    assert not parsed.matches({**match, "resource.labels.revision_name": "web-3"})
    assert not parsed.matches({**match, "resource.labels.location": "europe-west1"})
    assert not parsed.matches({**match, "resource.type": "gce_instance"})


def test_singular_label_spelling_and_implicit_and_are_gcp_syntax():
    parsed = parse_filter(f'resource.label.service_name = "web"\nmetric.type = "{COUNT}"')
    assert parsed.conditions == (Condition("resource.labels.service_name", "equals", ("web",)),)


def test_escaped_quotes_inside_strings():
    parsed = parse_filter(f'metric.type = "{COUNT}" AND metric.labels.response_code = "a\\"b"')
    assert parsed.conditions[0].values == ('a"b',)


def test_negated_one_of_excludes_the_listed_values():
    parsed = parse_filter(f'metric.type = "{COUNT}" AND resource.labels.revision_name != one_of("a", "b")')
    assert parsed.matches(fields(resource__revision_name="c"))
    assert not parsed.matches(fields(resource__revision_name="a"))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('resource.type = "cloud_run_revision"', "metric type"),
        ("", "metric type"),
        (f'metric.type = "{COUNT}" OR resource.type = "x"', "'OR'"),
        (f'NOT metric.type = "{COUNT}"', "'NOT'"),
        (f'metric.type = "{COUNT}" and resource.type = "x"', "'and'"),
        (f'(metric.type = "{COUNT}" OR resource.type = "x")', "'OR'"),
        (f'(metric.type = "{COUNT}"', "not closed"),
        (f'metric.type = "{COUNT}")', "no group to close"),
        (f'metric.type = "{COUNT}" AND ()', "empty group"),
        (f'metric.type = "{COUNT}" AND -resource.type = "x"', "'-'"),
        (f'metric.type = "{COUNT}" AND resource.labels.service_name : "web"', "':'"),
        (f'metric.type = "{COUNT}" AND metric.labels.response_code > "500"', "'>'"),
        (f'metric.type = "{COUNT}" AND project = "p"', "'project'"),
        (f'metric.type = "{COUNT}" AND metadata.system_labels.x = "p"', "'metadata.system_labels.x'"),
        (f'metric.type = "{COUNT}" AND resource.labels.x = has_substring("a")', "has_substring()"),
        (f'metric.type = "{COUNT}" AND resource.labels.x = monitoring.regex.full_match("a")', "monitoring.regex"),
        (f'metric.type = "{COUNT}" AND metric.labels.response_code = 503', "quoted string"),
        (f'metric.type = "{COUNT}" AND resource.labels.x = starts_with("a", "b")', "starts_with() takes one"),
        (f'metric.type = "{COUNT}" AND resource.labels.x = one_of("a"', "expected , or )"),
        (f'metric.type = "{COUNT}" AND resource.labels.x', "expected = or !="),
        ('metric.type = starts_with("run.googleapis.com/")', "exactly one metric type"),
        (f'metric.type = "{COUNT}" AND metric.type = "x"', "exactly one metric type"),
        (f'metric.type != "{COUNT}"', "exactly one metric type"),
        ('metric.type = "unterminated', "unexpected character"),
    ],
)
def test_unsupported_or_malformed_filters_are_refused_by_name(text: str, named: str):
    with pytest.raises(FilterError) as error:
        parse_filter(text)
    assert named in str(error.value)


def test_groups_of_ands_are_flattened():
    """pitstop wraps a spec's own filter in parentheses next to its resource clauses (gcp/metrics.py)."""
    parsed = parse_filter(f'(metric.type = "{COUNT}" AND metric.labels.response_code_class = "2xx") '
                          f'AND (resource.labels.revision_name = one_of("a", "b"))')
    assert parsed.metric_type == COUNT
    assert {c.field for c in parsed.conditions} == {"metric.labels.response_code_class",
                                                   "resource.labels.revision_name"}
