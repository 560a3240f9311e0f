"""The part of the Cloud Monitoring filter language that the local Monitoring understands.

Grammar (the subset pitstop and its users write):

    filter   := term ( ["AND"] term )*          # juxtaposition means AND, as on GCP
    term     := field ( "=" | "!=" ) rhs
              | "(" filter ")"                  # a group of ANDs: pitstop wraps a spec's own filter so
    field    := metric.type | resource.type
              | resource.labels.NAME | metric.labels.NAME   (".label." also accepted)
    rhs      := STRING | one_of(STRING, ...) | starts_with(STRING)
    STRING   := "..." or '...'  (backslash escapes the next character)

`metric.type` must appear exactly once, as `metric.type = "<one metric type>"`:
ListTimeSeries reads one metric. (Parentheses only group ANDs, so they change
nothing and are flattened.) Everything else (OR, NOT,
`:`, `<`, other functions, other fields) is rejected with `FilterError`
naming it, so a filter is never half-understood.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

METRIC_TYPE = "metric.type"
RESOURCE_TYPE = "resource.type"

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<op>!=|>=|<=|[=:<>(),-])
    """,
    re.VERBOSE,
)
_LABEL_FIELD = re.compile(r"(resource|metric)\.labels?\.([A-Za-z_][A-Za-z0-9_]*)")
_FUNCTIONS = {"one_of", "starts_with"}
_NOT_SUPPORTED_WORDS = {"OR", "NOT", "or", "not", "and"}


class FilterError(ValueError):
    """The filter is malformed or uses something the local Monitoring does not support."""


@dataclass(frozen=True, slots=True)
class Condition:
    field: str  # canonical: metric.type, resource.type, resource.labels.X, metric.labels.X
    kind: Literal["equals", "one_of", "starts_with"]
    values: tuple[str, ...]
    negated: bool = False

    def matches(self, value: str) -> bool:
        if self.kind == "starts_with":
            hit = value.startswith(self.values[0])
        else:
            hit = value in self.values
        return hit != self.negated


@dataclass(frozen=True, slots=True)
class Filter:
    metric_type: str
    conditions: tuple[Condition, ...]  # all terms except the metric.type one

    def label_fields(self) -> set[str]:
        return {c.field for c in self.conditions if c.field != RESOURCE_TYPE}

    def matches(self, fields: Mapping[str, str]) -> bool:
        """`fields` maps canonical field names (resource.type, resource.labels.X, ...) to values."""
        return all(c.matches(fields.get(c.field, "")) for c in self.conditions)


def parse_filter(text: str) -> Filter:
    tokens = _tokenize(text)
    conditions, pos = _parse_conjunction(tokens, 0, nested=False)
    if pos < len(tokens):  # only a stray ")" stops the top level early
        raise FilterError(f"filter: unexpected {tokens[pos][1]!r} (no group to close)")
    return _with_metric_type(conditions)


def _parse_conjunction(tokens: list[tuple[str, str]], pos: int, nested: bool) -> tuple[list[Condition], int]:
    """Terms joined by AND (or nothing) up to the end, or up to the ")" closing a group."""
    conditions: list[Condition] = []
    while pos < len(tokens) and tokens[pos] != ("op", ")"):
        if conditions and tokens[pos] == ("word", "AND"):
            pos += 1
            if pos >= len(tokens):
                raise FilterError("filter: AND at the end of the filter")
        if tokens[pos] == ("op", "("):
            group, pos = _parse_conjunction(tokens, pos + 1, nested=True)
            if pos >= len(tokens):
                raise FilterError("filter: a '(' is not closed")
            if not group:
                raise FilterError("filter: an empty group ()")
            conditions.extend(group)
            pos += 1  # the ")"
            continue
        condition, pos = _parse_term(tokens, pos)
        conditions.append(condition)
    if not nested and not conditions and pos < len(tokens):
        raise FilterError(f"filter: unexpected {tokens[pos][1]!r}")
    return conditions, pos


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FilterError(f"filter: unexpected character {text[pos]!r} at position {pos}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
        pos = match.end()
    if not tokens:
        raise FilterError('filter is empty; it must name a metric type (metric.type = "...")')
    return tokens


def _parse_term(tokens: list[tuple[str, str]], pos: int) -> tuple[Condition, int]:
    kind, text = tokens[pos]
    if kind == "word" and text in _NOT_SUPPORTED_WORDS:
        raise FilterError(f"filter: {text!r} is not supported by the local Monitoring (only AND)")
    if kind == "op" and text == "-":
        raise FilterError(f"filter: {text!r} (negation) is not supported by the local Monitoring")
    if kind != "word":
        raise FilterError(f"filter: expected a field name, found {text!r}")
    field = _canonical_field(text)
    op_kind, op = tokens[pos + 1] if pos + 1 < len(tokens) else ("end", "")
    if op not in ("=", "!="):
        found = repr(op) if op else "the end of the filter"
        raise FilterError(f"filter: after {text} expected = or !=, found {found} (only = and != are supported)")
    condition, pos = _parse_rhs(field, tokens, pos + 2)
    return Condition(field, condition[0], condition[1], negated=op == "!="), pos


def _canonical_field(name: str) -> str:
    if name in (METRIC_TYPE, RESOURCE_TYPE):
        return name
    match = _LABEL_FIELD.fullmatch(name)
    if match is None:
        raise FilterError(
            f"filter: field {name!r} is not supported by the local Monitoring "
            "(use metric.type, resource.type, resource.labels.NAME, metric.labels.NAME)"
        )
    return f"{match.group(1)}.labels.{match.group(2)}"


def _parse_rhs(
    field: str, tokens: list[tuple[str, str]], pos: int
) -> tuple[tuple[Literal["equals", "one_of", "starts_with"], tuple[str, ...]], int]:
    if pos >= len(tokens):
        raise FilterError(f"filter: {field} has no value")
    kind, text = tokens[pos]
    if kind == "string":
        return ("equals", (_unquote(text),)), pos + 1
    if kind != "word":
        raise FilterError(f"filter: {field} must be compared with a quoted string, found {text!r}")
    if tokens[pos + 1 : pos + 2] != [("op", "(")]:
        raise FilterError(f"filter: {field} must be compared with a quoted string, found {text!r}")
    if text not in _FUNCTIONS:
        raise FilterError(
            f"filter: function {text}() is not supported by the local Monitoring (only one_of, starts_with)"
        )
    args, pos = _parse_args(text, tokens, pos + 2)
    if text == "starts_with" and len(args) != 1:
        raise FilterError(f"filter: starts_with() takes one string, got {len(args)}")
    return ("one_of" if text == "one_of" else "starts_with", tuple(args)), pos


def _parse_args(function: str, tokens: list[tuple[str, str]], pos: int) -> tuple[list[str], int]:
    args: list[str] = []
    while True:
        if pos >= len(tokens):
            raise FilterError(f"filter: {function}( is not closed")
        kind, text = tokens[pos]
        if kind != "string":
            raise FilterError(f"filter: {function}() takes quoted strings, found {text!r}")
        args.append(_unquote(text))
        closing = tokens[pos + 1] if pos + 1 < len(tokens) else ("end", "")
        if closing == ("op", ")"):
            return args, pos + 2
        if closing != ("op", ","):
            raise FilterError(f"filter: {function}() expected , or ) after {text}")
        pos += 2


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def _with_metric_type(conditions: list[Condition]) -> Filter:
    on_type = [c for c in conditions if c.field == METRIC_TYPE]
    if not on_type:
        raise FilterError('filter must name a metric type (metric.type = "...")')
    if len(on_type) > 1 or on_type[0].kind != "equals" or on_type[0].negated:
        raise FilterError('filter must name exactly one metric type, as metric.type = "..."')
    rest = tuple(c for c in conditions if c.field != METRIC_TYPE)
    return Filter(metric_type=on_type[0].values[0], conditions=rest)
