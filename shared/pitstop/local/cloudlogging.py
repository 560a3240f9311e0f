"""A local Cloud Logging `entries:list` for the output of local Cloud Run jobs.

On GCP a job's stdout and stderr become log entries of resource type
`cloud_run_job`, labelled with the execution, task and attempt; pitstop reads a
check's summary line from them. Here the entries come from the files the local
jobs keep (jobs.py): one entry per line, stdout as `run.googleapis.com/stdout`
(severity DEFAULT), stderr as `run.googleapis.com/stderr` (ERROR); a line that is
a JSON object becomes a `jsonPayload` with its own `severity`, as Cloud Run
does. Only each file's order is known, so a task attempt's lines are spaced a
microsecond apart from its start, stdout first. Unlike GCP, nothing lags.

The local Cloud Run serves it at `POST /v2/entries:list` (the REST call
`google-cloud-logging` makes over HTTP), with the request's `resourceNames`
(`projects/P`), `filter`, `orderBy` (`timestamp asc|desc`), `pageSize` and
`pageToken`. The filter is the subset below; anything else is refused with
INVALID_ARGUMENT, so a filter is never half-understood:

    filter := term ( ["AND"] term )*
    term   := field op value      op: = != > >= < <= : (":" is "has", a substring)
    field  := resource.type | resource.labels.NAME | labels.NAME | labels."NAME"
            | logName | severity | timestamp | textPayload | insertId
    value  := "quoted" or a bare word
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from pitstop.local.googleapi import invalid

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
SEVERITIES = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
_STREAMS = {"stdout": "DEFAULT", "stderr": "ERROR"}
_TOKEN = re.compile(r"""\s*(?:
    (?P<label>labels\."(?:[^"\\]|\\.)*")     # labels."run.googleapis.com/execution_name"
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<op>>=|<=|!=|[=<>:])
  | (?P<word>[^\s=<>!:"()]+)
  | (?P<bad>\S))""", re.VERBOSE)
_FIELD = re.compile(r'^(resource\.type|resource\.labels\.[A-Za-z0-9_]+|logName|severity|timestamp|textPayload|insertId'
                    r'|labels\..+)$')


def list_entries(state_dir: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Answer an `entries:list` request from the jobs' output files in `state_dir`."""
    projects = set()
    for name in body.get("resourceNames") or []:
        if not re.fullmatch(r"projects/[^/]+", name):
            raise invalid(f"resourceNames: the local Logging reads projects only (projects/P), got '{name}'.")
        projects.add(name.split("/", 1)[1])
    if not projects:
        raise invalid("resourceNames must name at least one project.")
    order = (body.get("orderBy") or "timestamp asc").strip().lower()
    if order not in ("timestamp asc", "timestamp desc"):
        raise invalid(f"orderBy must be 'timestamp asc' or 'timestamp desc', got '{body.get('orderBy')}'.")
    size = int(body.get("pageSize") or DEFAULT_PAGE_SIZE)
    if not 0 < size <= MAX_PAGE_SIZE:
        raise invalid(f"pageSize must be between 1 and {MAX_PAGE_SIZE}, got {size}.")
    start = int(body.get("pageToken") or 0)
    matches = parse_filter(body.get("filter") or "")
    entries = [e for p in sorted(projects) for e in _job_entries(state_dir, p) if matches(e)]
    entries.sort(key=lambda e: _time(e["timestamp"]), reverse=order.endswith("desc"))
    page = entries[start:start + size]
    answer: dict[str, Any] = {"entries": page} if page else {}
    if start + size < len(entries):
        answer["nextPageToken"] = str(start + size)
    return answer


def parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate on entries for the filter `text` (see the module docstring); ApiError 400 if unsupported."""
    tokens = []
    for m in _TOKEN.finditer(text):
        if m.group("bad"):
            raise invalid(f"The local Logging does not support '{m.group('bad')}' in filters: {text}")
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "label":  # labels."run.googleapis.com/execution_name"
            kind, value = "word", "labels." + json.loads(value.removeprefix("labels."))
        tokens.append((kind, json.loads(value) if kind == "string" else value))
    terms: list[Callable[[dict[str, Any]], bool]] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == ("word", "AND"):
            i += 1
            continue
        if tokens[i][1] in ("OR", "NOT") or len(tokens) < i + 3:
            raise invalid(f"The local Logging supports only 'field op value' terms joined by AND: {text}")
        (_, name), (op_kind, op), (value_kind, value) = tokens[i:i + 3]
        if op_kind != "op" or value_kind == "op" or not _FIELD.match(name):
            raise invalid(f"The local Logging does not support the term '{name} {op} {value}': {text}")
        terms.append(_term(name, op, value))
        i += 3
    return lambda entry: all(term(entry) for term in terms)


def _term(name: str, op: str, value: str) -> Callable[[dict[str, Any]], bool]:
    def key(v: str) -> Any:
        if name == "severity":
            return SEVERITIES.index(v.upper()) if v.upper() in SEVERITIES else -1
        if name == "timestamp":
            return _time(v)
        return v

    try:
        wanted = key(value)
    except ValueError as e:
        raise invalid(f"Invalid {name} value '{value}': {e}") from e
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b, "!=": lambda a, b: a != b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ":": lambda a, b: str(b) in str(a),
    }
    test = compare[op]

    def matches(entry: dict[str, Any]) -> bool:
        found = _field(entry, name)
        if found is None:
            return op == "!="
        return test(key(found), wanted)

    return matches


def _field(entry: dict[str, Any], name: str) -> str | None:
    if name.startswith("resource.labels."):
        return entry["resource"]["labels"].get(name.removeprefix("resource.labels."))
    if name.startswith("labels."):
        return entry["labels"].get(name.removeprefix("labels."))
    if name == "resource.type":
        return entry["resource"]["type"]
    return entry.get(name)


def _job_entries(state_dir: Path, project: str) -> list[dict[str, Any]]:
    """Every output line of the project's job executions, as log entries."""
    entries = []
    for record_path in sorted((Path(state_dir) / "jobs" / project).glob("*/*/*/task*-attempt*.json")):
        location, job, execution = record_path.parts[-4:-1]
        record = json.loads(record_path.read_text())
        start = _time(record["start_time"])
        base = {
            "resource": {"type": "cloud_run_job",
                         "labels": {"project_id": project, "job_name": job, "location": location}},
            "labels": {"run.googleapis.com/execution_name": execution,
                       "run.googleapis.com/task_index": str(record["task_index"]),
                       "run.googleapis.com/task_attempt": str(record["attempt"])},
        }
        n = 0
        for stream, severity in _STREAMS.items():
            path = record_path.with_name(record_path.name.removesuffix(".json") + f".{stream}.log")
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            for line in lines:
                timestamp = _iso(start + timedelta(microseconds=n))
                entry = {**base, "logName": f"projects/{project}/logs/run.googleapis.com%2F{stream}",
                         "timestamp": timestamp, "receiveTimestamp": timestamp, "severity": severity,
                         "insertId": f"{execution}-{record['task_index']}-{record['attempt']}-{n}"}
                entries.append(entry | _payload(line, severity))
                n += 1
    return entries


def _payload(line: str, severity: str) -> dict[str, Any]:
    """A JSON object line is structured (jsonPayload, its own severity), any other line textPayload."""
    try:
        parsed = json.loads(line)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        level = str(parsed.pop("severity", severity)).upper()
        return {"jsonPayload": parsed, "severity": level if level in SEVERITIES else severity}
    return {"textPayload": line}


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
