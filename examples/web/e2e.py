"""End-to-end checks of the example app, run as a Cloud Run job against a URL (`python e2e.py`):
the release's canary tag URL before it takes traffic, or the service URL after.

  TARGET_URL      the URL to check (required)
  EXPECT_VERSION  the version it must answer (default APP_VERSION, the version this image was built
                  as, so the job checks that the URL serves its own release)
  E2E_REQUESTS    how many requests the "steady" check sends (default 10); all must answer 200
  E2E_FAIL        1: one check fails on purpose, to see a failed check

Prints one line per check and `pitstop-summary: passed=N failed=M`; exits 1 if any failed.
The target must answer unauthenticated requests (a private service needs an ID token: not here).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

TIMEOUT_S = 10.0


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check_root(base: str, version: str | None) -> str | None:
    status, body = _get(base + "/")
    if status != 200:
        return f"GET / answered {status}"
    try:
        served = json.loads(body).get("version")
    except (ValueError, AttributeError):
        return f"GET / answered no JSON object: {body[:100]!r}"
    if version and served != version:
        return f"GET / serves version {served!r}, expected {version!r}"
    return None


def check_health(base: str) -> str | None:
    status, _ = _get(base + "/healthz")
    return None if status == 200 else f"GET /healthz answered {status}"


def check_steady(base: str, n: int) -> str | None:
    failed = [status for status, _ in (_get(base + "/") for _ in range(n)) if status != 200]
    return f"{len(failed)} of {n} requests failed (statuses {sorted(set(failed))})" if failed else None


def main() -> int:
    base = os.environ.get("TARGET_URL", "").rstrip("/")
    if not base:
        print("TARGET_URL is not set", file=sys.stderr)
        print("pitstop-summary: passed=0 failed=1")
        return 1
    version = os.environ.get("EXPECT_VERSION") or os.environ.get("APP_VERSION")
    checks: list[tuple[str, Callable[[], str | None]]] = [
        ("root serves the release", lambda: check_root(base, version)),
        ("health", lambda: check_health(base)),
        ("steady", lambda: check_steady(base, int(os.environ.get("E2E_REQUESTS", "10")))),
    ]
    if os.environ.get("E2E_FAIL") == "1":
        checks.append(("forced failure", lambda: "failed on purpose (E2E_FAIL=1)"))
    passed = failed = 0
    for title, check in checks:
        try:
            problem = check()
        except OSError as e:  # refused, reset, timed out
            problem = f"{type(e).__name__}: {e}"
        if problem is None:
            passed += 1
            print(f"PASS {title}")
        else:
            failed += 1
            print(f"FAIL {title}: {problem}")
    print(f"pitstop-summary: passed={passed} failed={failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
