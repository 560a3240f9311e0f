"""Custom metrics' conditions: CEL expressions over `canary`, `stable` and `thresholds`. Pure.

    canary.checkouts_per_min >= 0.9 * stable.checkouts_per_min
    canary.error_rate <= stable.error_rate + 0.01
    canary.p99_ms < thresholds.max_p99_ms

`canary.X` and `stable.X` are the new and the stable revision's values over the same window: the built-in
ones (BUILTIN_VALUES) and the spec's own metrics by name; `thresholds.Y` are the health's numbers
(`thresholds_of`). Every number is a double, the literals in the condition too: CEL refuses `0.9 * x` for an
int `x` and `x == 1` for a double `x`, and nobody writing a health condition means that.

A value the condition reads that has no data (None, absent, or no stable revision measured) makes it
inconclusive, never a pass, unless the condition tests it with `has()` itself (`!has(stable.x) || ...`).
An evaluation error (a division by zero, a result that is not true or false, operands of the wrong types)
is inconclusive too, with the reason.

cel-python (`celpy`, with lark and more) is imported inside the functions: the Cloud Functions' cold start
does not pay for it, only a judge of a spec with custom metrics, or applying one.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

from pitstop.core import limits
from pitstop.core.models import Health

# What `canary.X` / `stable.X` carry besides the spec's own metrics (the judge fills them from the sample).
BUILTIN_VALUES = ("requests", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms", "cpu", "memory")
ROOTS = ("canary", "stable", "thresholds")
_REVISIONS = ("canary", "stable")


@dataclass(frozen=True)
class Evaluated:
    passed: bool | None  # None: inconclusive (a value missing, or the condition could not be evaluated)
    reason: str


@dataclass(frozen=True)
class _Read:
    """One `root.name` the condition reads; `guarded` when it is read inside has(), which tests presence."""

    root: str
    name: str
    guarded: bool

    def __str__(self) -> str:
        return f"{self.root}.{self.name}"


@dataclass(frozen=True)
class _Compiled:
    program: Any  # celpy.Runner
    reads: tuple[_Read, ...]


def thresholds_of(health: Health) -> dict[str, float]:
    """What a condition reads as `thresholds.Y`: the health's limits by name, then its own `thresholds`."""
    return {"max_error_rate": health.max_error_rate, "max_p99_ms": health.max_p99_ms,
            "max_latency_increase": health.max_latency_increase,
            "min_latency_increase_ms": health.min_latency_increase_ms,
            "min_requests": float(health.min_requests), "max_cpu": health.cpu.max,
            "max_memory": health.memory.max, **health.thresholds}


# ---------------------------------------------------------------- compiling

def compile_error(condition: str) -> str | None:
    """None when `condition` compiles, else why not, for a person."""
    try:
        _compiled(condition)
    except _CompileError as err:
        return str(err)
    return None


class _CompileError(ValueError):
    pass


@functools.lru_cache(maxsize=256)
def _compiled(condition: str) -> _Compiled:
    import celpy  # late: see the module's docstring

    env = celpy.Environment()
    try:
        tree = env.compile(condition)
    except celpy.CELParseError as err:
        raise _CompileError(f"not a CEL expression: {_parse_message(err, condition)}") from None
    except RecursionError:
        raise _CompileError("nests too deeply to compile") from None
    except Exception as err:  # lark raises its own kinds for some inputs
        raise _CompileError(f"not a CEL expression: {limits.truncate(str(err), 200)}") from None
    try:
        _doubles(tree)
        program = env.program(tree, functions={"_/_": _divide})
        reads = tuple(dict.fromkeys(_reads(tree)))
    except RecursionError:
        raise _CompileError("nests too deeply to compile") from None
    except Exception as err:
        raise _CompileError(f"cannot be compiled: {limits.truncate(str(err), 200)}") from None
    return _Compiled(program, reads)


def _parse_message(err: Exception, condition: str) -> str:
    """celpy's message is the text with a caret under the error (it knows the column): say it on one line."""
    line, column = getattr(err, "line", None) or 1, getattr(err, "column", None)
    lines = condition.split("\n")
    shown = limits.truncate(" ".join(condition.split()), 200)
    if isinstance(line, int) and isinstance(column, int) and 1 <= line <= len(lines) and column >= 1:
        offset = sum(len(text) + 1 for text in lines[:line - 1]) + column - 1
        rest = condition[offset:].split()
        at = f" (`{limits.truncate(rest[0], 40)}`)" if rest else ""
        where = f"line {line}, column {column}" if len(lines) > 1 else f"column {column}"
        hint = ", which ends there: is something missing?" if len(rest) == 1 else \
            " (CEL compares with ==)" if rest and rest[0] == "=" else ""
        return f"cannot read it from {where}{at} of `{shown}`{hint}"
    lines = [line for line in str(err).splitlines() if line.strip() and line.strip() != "^"]
    return limits.truncate(" ".join(lines), 300) or f"cannot read `{shown}`"


def _doubles(tree: Any) -> None:
    """Integer literals become doubles in place (every value is a double, so `canary.requests >= 100` works)."""
    from lark import Token

    for node in tree.iter_subtrees():
        for i, child in enumerate(node.children):
            if isinstance(child, Token) and child.type == "INT_LIT":
                text = child.value
                value = int(text, 16) if text.lower().lstrip("-").startswith("0x") else int(text, 10)  # 010 is ten
                node.children[i] = Token("FLOAT_LIT", repr(float(value)))


def _divide(a: Any, b: Any) -> Any:
    """Division that refuses a zero divisor: IEEE's inf or nan would pass or fail a canary on no traffic."""
    if float(b) == 0.0:
        raise ZeroDivisionError("division by zero")
    return a / b


def _reads(tree: Any) -> list[_Read]:
    """`canary.X`, `stable.X`, `thresholds.Y` (also `canary["X"]`) in the parse tree, in reading order; those
    inside has() are `guarded`. Iterative: a deeply nested condition must not exhaust Python's stack here."""
    from lark import Token, Tree

    found: list[_Read] = []
    stack: list[tuple[Any, bool]] = [(tree, False)]
    while stack:
        node, guarded = stack.pop()
        if not isinstance(node, Tree):
            continue
        if node.data == "ident_arg" and node.children and str(node.children[0]) == "has":
            guarded = True
        if node.data in ("member_dot", "member_index") and len(node.children) == 2:
            root, field = _root(node.children[0]), node.children[1]
            name = str(field) if isinstance(field, Token) else _string_literal(field)
            if root is not None and name is not None:
                found.append(_Read(root, name, guarded))
        stack.extend((child, guarded) for child in reversed(node.children))
    return found


def _root(member: Any) -> str | None:
    """'canary' for the member `canary` (member > primary > ident canary), else None."""
    from lark import Tree

    node = member
    for rule in ("member", "primary", "ident"):
        if not (isinstance(node, Tree) and node.data == rule and len(node.children) == 1):
            return None
        node = node.children[0]
    return str(node) if str(node) in ROOTS else None


def _string_literal(expr: Any) -> str | None:
    """The text of `expr` when it is nothing but a string literal ("x" or 'x')."""
    from lark import Token, Tree

    node = expr
    while isinstance(node, Tree) and len(node.children) == 1:
        node = node.children[0]
    if isinstance(node, Token) and node.type == "STRING_LIT" and len(node.value) >= 2 and node.value[0] in "\"'":
        return node.value[1:-1]
    return None


# ---------------------------------------------------------------- evaluating

def evaluate(condition: str, canary: dict[str, float | None], stable: dict[str, float | None] | None,
             thresholds: dict[str, float]) -> Evaluated:
    """The condition on these values: passed True/False when it gives a bool; None (inconclusive) when a value
    it reads has no data, or it cannot be evaluated, with the reason."""
    try:
        compiled = _compiled(condition)
    except _CompileError as err:
        return Evaluated(None, f"the condition does not compile: {err}")
    values = {"canary": canary, "stable": stable, "thresholds": thresholds}
    # A value tested with has() anywhere in the condition is the author's to handle when absent; CEL decides.
    guarded = {(r.root, r.name) for r in compiled.reads if r.guarded}
    missing = _unique(r for r in compiled.reads if (r.root, r.name) not in guarded and _value(values, r) is None)
    if missing:
        return Evaluated(None, _missing_reason(missing, stable is None))
    try:
        result = compiled.program.evaluate(_activation(canary, stable or {}, thresholds))
    except RecursionError:
        return Evaluated(None, "could not be evaluated: nests too deeply")
    except Exception as err:  # celpy raises CELEvalError, and may let another error through
        result = err
    if _is_error(result):
        absent = _unique(r for r in compiled.reads if _value(values, r) is None)
        if _kind(result) is KeyError and absent:  # read a value the has() guard did not cover
            return Evaluated(None, _missing_reason(absent, stable is None))
        return Evaluated(None, f"could not be evaluated: {_describe(result)}")
    if not _is_bool(result):
        return Evaluated(None, f"gives {_type_name(result)} {_show(result)}, not true or false: a condition must "
                               f"be a comparison")
    return Evaluated(bool(result), _shown_values(compiled.reads, values))


def _value(values: dict[str, Any], read: _Read) -> float | None:
    source = values[read.root]
    if source is None:
        return None
    value = source.get(read.name)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _unique(reads: Any) -> list[_Read]:
    """Each `root.name` once, in the order the condition reads them (guarded or not)."""
    seen: dict[tuple[str, str], _Read] = {}
    for r in reads:
        seen.setdefault((r.root, r.name), r)
    return list(seen.values())


def _missing_reason(missing: list[_Read], no_stable: bool) -> str:
    parts = []
    values = [r for r in missing if r.root in _REVISIONS]
    if values:
        parts.append("no data for " + ", ".join(str(r) for r in values))
        if no_stable and any(r.root == "stable" for r in values):
            parts[-1] += " (no stable revision measured over this window)"
    undefined = [str(r) for r in missing if r.root == "thresholds"]
    if undefined:
        parts.append(f"{', '.join(undefined)} {'is' if len(undefined) == 1 else 'are'} not defined")
    return "; ".join(parts)


def _shown_values(reads: tuple[_Read, ...], values: dict[str, Any]) -> str:
    """What the condition read, for the verdict's sentence: `canary.x = 95, stable.x = 100`."""
    return ", ".join(f"{r} = {_number(_value(values, r))}" for r in _unique(reads))


def _activation(canary: dict[str, float | None], stable: dict[str, float | None],
                thresholds: dict[str, float]) -> dict[str, Any]:
    from celpy import celtypes

    def cel_map(values: dict[str, float | None]) -> Any:  # missing values are absent: has() sees them so
        return celtypes.MapType({celtypes.StringType(k): celtypes.DoubleType(float(v))
                                 for k, v in values.items() if v is not None and not math.isnan(float(v))})

    return {"canary": cel_map(canary), "stable": cel_map(stable), "thresholds": cel_map(thresholds)}


def _is_error(result: Any) -> bool:
    import celpy

    return isinstance(result, (celpy.CELEvalError, Exception))


def _is_bool(result: Any) -> bool:
    from celpy import celtypes

    return isinstance(result, (celtypes.BoolType, bool))


def _kind(err: Any) -> type | None:
    """The Python error a CELEvalError stands for (its second argument), or the error's own type."""
    args = getattr(err, "args", ())
    if len(args) >= 2 and isinstance(args[1], type):
        return args[1]
    return type(err)


_OPERATORS = {"addition_add": "+", "addition_sub": "-", "multiplication_mul": "*", "multiplication_div": "/",
              "multiplication_mod": "%", "relation_lt": "<", "relation_le": "<=", "relation_gt": ">",
              "relation_ge": ">=", "relation_eq": "==", "relation_ne": "!=", "relation_in": "in",
              "unary_not": "!", "unary_neg": "-"}


def _describe(err: Any) -> str:
    """A CELEvalError in a sentence: celpy's own message can hold its whole activation."""
    kind = _kind(err)
    message = str(err.args[0]) if getattr(err, "args", None) else str(err)
    if kind is ZeroDivisionError:
        return "division by zero"
    if "undeclared reference to" in message:
        name = re.search(r"undeclared reference to '([^']+)'", message)
        return (f"{name.group(1) if name else 'a name'} is not defined: a condition reads canary.NAME, "
                f"stable.NAME and thresholds.NAME")
    if "no matching overload" in message:
        op = re.search(r"'RULE', '([a-z_]+)'", message)
        types = re.findall(r"celtypes\.([A-Za-z]+)Type", message)
        what = f"`{_OPERATORS.get(op.group(1), op.group(1))}`" if op else "an operator"
        if types:
            return f"{what} does not apply to {' and '.join(t.lower() for t in types)}"
        return f"{what} does not apply to these operands"
    if kind is KeyError:
        return f"no such value: {limits.truncate(message, 200)}"
    return limits.truncate(message, 300)


def _type_name(value: Any) -> str:
    name = type(value).__name__.removesuffix("Type").lower()
    return {"str": "a string", "string": "a string", "int": "an int", "uint": "a uint", "double": "a double",
            "float": "a double", "list": "a list", "map": "a map", "nonetype": "null"}.get(name, f"a {name}")


def _show(value: Any) -> str:
    if isinstance(value, (int, float)):
        return _number(float(value))
    return limits.truncate(repr(str(value)) if isinstance(value, str) else repr(value), 80)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


# ---------------------------------------------------------------- applying a spec

def health_problems(health: Health) -> list[tuple[str, str]]:
    """What makes `health`'s custom metrics unusable, as (field path under health, problem): a condition that
    does not compile, reads a value no metric provides or a threshold not defined, or cannot give true or
    false; a metric named like a built-in value or twice; a threshold named like one of the health's limits.
    Run when a spec or pipeline is applied (models.py stays free of celpy)."""
    problems: list[tuple[str, str]] = []
    builtin_limits = set(thresholds_of(health.model_copy(update={"thresholds": {}})))
    for name in health.thresholds:
        if name in builtin_limits:
            problems.append((f"thresholds.{name}", f"{name} is already one of the health's limits, which conditions "
                                                   f"read as thresholds.{name}; name this threshold differently"))
    declared: dict[str, int] = {}
    for i, metric in enumerate(health.metrics):
        if metric.name in BUILTIN_VALUES:
            problems.append((f"metrics.{i}.name", f"metric {metric.name}: the name is a built-in value "
                                                  f"(canary.{metric.name}); choose another"))
        elif metric.name in declared:
            problems.append((f"metrics.{i}.name", f"metric {metric.name}: declared twice (also metrics."
                                                  f"{declared[metric.name]})"))
        declared.setdefault(metric.name, i)
    thresholds = thresholds_of(health)
    known = set(BUILTIN_VALUES) | set(declared)
    for i, metric in enumerate(health.metrics):
        problem = condition_problem(metric.condition, known, thresholds)
        if problem:
            problems.append((f"metrics.{i}.condition", f"metric {metric.name}: {problem}"))
    return problems


def condition_problem(condition: str, values: set[str], thresholds: dict[str, float]) -> str | None:
    """Why `condition` cannot judge anything with these value names and thresholds, or None."""
    error = compile_error(condition)
    if error:
        return f"the condition does not compile: {error}"
    compiled = _compiled(condition)
    unknown = [str(r) for r in compiled.reads if r.root in _REVISIONS and r.name not in values]
    if unknown:
        return (f"the condition reads {', '.join(dict.fromkeys(unknown))}, which is neither a built-in value nor "
                f"a declared metric (built-in: {', '.join(BUILTIN_VALUES)}; declared: "
                f"{', '.join(sorted(values - set(BUILTIN_VALUES))) or 'none'})")
    undefined = [str(r) for r in compiled.reads if r.root == "thresholds" and r.name not in thresholds]
    if undefined:
        return (f"the condition reads {', '.join(dict.fromkeys(undefined))}, which is not defined (thresholds: "
                f"{', '.join(sorted(thresholds))}; add your own under health.thresholds)")
    # A trial with every value present (1.0): what fails here fails on every window, so say it now.
    sample = {name: 1.0 for name in values}
    trial = evaluate(condition, sample, sample, thresholds)
    if trial.passed is None and not trial.reason.endswith("division by zero"):
        return f"the condition can never be judged: {trial.reason} (tried with every value 1.0)"
    return None
