"""Specs from hostile or oversized documents: refused fast, with an error message of bounded size."""

from __future__ import annotations

import json
import time

import pytest

from pitstop.core import limits
from pitstop.core.spec import MAX_ERRORS, SpecError, load_spec, load_yaml, parse_spec

SPEC = "service: web\nregions: [us-central1]\nmatch: {repo: web}\n"


def _nested_aliases(levels: int = 9) -> str:
    """A 'billion laughs': each level a list of nine references to the one before, under an unknown field."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [1,1,1,1,1,1,1,1,1]"]
    lines += [f"{n}: &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_fast_with_a_short_message() -> None:
    bomb = SPEC + _nested_aliases()
    assert len(bomb.encode()) < 600  # a few hundred bytes that stand for 9**9 (387 million) ones
    started = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_spec(bomb, "spec bomb")
    assert time.perf_counter() - started < 1
    assert len(str(err.value)) < 300
    assert str(err.value).startswith("spec bomb: uses a YAML alias (*a)") and "write the values out" in str(err.value)


@pytest.mark.parametrize("document", [
    "a: &x 1\nb: *x\n",                     # the smallest alias
    "base: &base {x: 1}\nother:\n  <<: *base\n  y: 2\n",  # a merge key is an alias too
    "a: &a [*a]\n",                         # a recursive one
])
def test_every_alias_is_refused(document: str) -> None:
    with pytest.raises(SpecError, match="YAML alias"):
        load_yaml(document)


def test_an_anchor_without_alias_is_fine() -> None:
    assert load_spec(SPEC.replace("match:", "match: &m")).service == "web"


@pytest.mark.parametrize("text", [
    "a: " + "[" * 250_000 + "]" * 250_000,   # PyYAML takes minutes (pure Python) or crashes (C loader)
    "a: " + "{b: " * 100_000 + "}" * 100_000,
    "- " * 200_000 + "x",
    "a: " + "[" * 250_000,                   # not even closed
])
def test_deep_nesting_is_refused_before_anything_is_built(text: str) -> None:
    started = time.perf_counter()
    # PyYAML >= 6.0.3 refuses very deep flow nesting itself, before our own bound: either refusal will do.
    with pytest.raises(SpecError, match=f"nests deeper than {limits.MAX_DEPTH} levels|exceeded maximum nesting depth"):
        load_yaml(text, "spec deep")
    assert time.perf_counter() - started < 1


def test_nesting_up_to_the_bound_is_read() -> None:
    depth = limits.MAX_DEPTH - 1  # under the top-level mapping
    assert load_yaml("a: " + "[" * depth + "1" + "]" * depth) is not None


@pytest.mark.parametrize("text, fragment", [
    ("a: [b", "not valid YAML"),
    ("a: 1\n---\nb: 2\n", "not valid YAML"),
    ("? [a, b]\n: c\n", "not valid YAML"),     # an unhashable key
    ("when: 2024-13-45\n", "not valid YAML"),  # a timestamp datetime refuses
])
def test_invalid_yaml_is_a_spec_error(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment) as err:
        load_yaml(text, "spec x")
    assert str(err.value).startswith("spec x: ")


def test_an_unknown_field_with_a_huge_value_is_quoted_briefly() -> None:
    doc = {**load_spec(SPEC).model_dump(mode="json", exclude_none=True),
           "colour": {"nested": [["x" * 100_000] * 1000] * 1000}}
    with pytest.raises(SpecError) as err:
        parse_spec(doc, "spec web")
    text = str(err.value)
    assert "\n  colour: unknown field (value {'nested': [[" in text and len(text) < 400, text


def test_many_problems_are_listed_up_to_a_bound() -> None:
    doc = {"service": "web", "regions": list(range(10_000)), "match": {"repo": "web"}}
    with pytest.raises(SpecError) as err:
        parse_spec(doc, "spec web")
    lines = str(err.value).splitlines()
    assert lines[0] == "spec web: invalid rollout spec"
    assert len(lines) == 1 + MAX_ERRORS + 1 and lines[-1] == f"  ... and {10_000 - MAX_ERRORS} more"


def test_a_huge_unknown_key_is_cut_in_the_message() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"service": "web", "regions": ["r"], "match": {"repo": "web"}, "k" * 100_000: 1})
    assert len(str(err.value)) < 600


def test_parse_spec_takes_a_parsed_document() -> None:
    spec = load_spec(SPEC)
    assert parse_spec(json.loads(json.dumps(spec.model_dump(mode="json", exclude_none=True)))) == spec
    assert parse_spec(load_yaml(SPEC), "spec web") == spec
    for not_a_mapping in ([], "service: web", None, 3):
        with pytest.raises(SpecError, match="spec x: expected a mapping"):
            parse_spec(not_a_mapping, "spec x")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=r"spec x: invalid rollout spec\n  regions: required field is missing"):
        parse_spec({"service": "web", "match": {"repo": "web"}}, "spec x")


# ---------------------------------------------------------------- limits.preview

def _aliased(levels: int) -> list:
    value: list = [1] * 9
    for _ in range(levels):
        value = [value] * 9  # what safe_load builds from nested aliases: shared, not copied
    return value


_ROW = ["x" * 10_000] * 10_000


@pytest.mark.parametrize("value", [
    _aliased(9),
    {f"k{i}": {f"k{j}": _ROW for j in range(100)} for i in range(100)},
    "y" * 10_000_000,
    list(range(1_000_000)),
    10 ** 4000,
])
@pytest.mark.parametrize("limit", [20, 60, 1000])
def test_preview_is_bounded_whatever_the_value(value: object, limit: int) -> None:
    started = time.perf_counter()
    text = limits.preview(value, limit)
    assert len(text) <= limit
    assert time.perf_counter() - started < 0.5


def test_preview_of_a_short_value_is_its_repr_and_a_cut_is_marked() -> None:
    assert limits.preview("short") == "'short'"
    assert limits.preview([1, "a", None]) == "[1, 'a', None]"
    assert limits.preview(2**70, 1000) == str(2**70)
    cut = limits.preview("x" * 1000, 60)
    assert len(cut) == 60 and cut.endswith(limits.TRUNCATED)
    assert limits.preview(list(range(100))) == "[0, 1, 2, 3, 4, ...]"
    assert limits.preview({"a": {"b": {"c": {"d": 1}}}}) == "{'a': {'b': {'c': {...}}}}"
    recursive: list = []
    recursive.append(recursive)
    assert limits.preview(recursive) == "[[[[...]]]]"
    assert limits.preview(10 ** 5000) == "<int>"  # beyond Python's int-to-text limit
