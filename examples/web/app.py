"""The demo service: a tiny HTTP app whose behaviour each version sets by env.

  FAIL_RATE   share of requests answered 500 (0.3 = 30 % errors)
  LATENCY_MS  typical latency; each request sleeps about this long
  SLOW_FACTOR multiplies latency (3 = p99 about three times the healthy one)
  SMOKE_FAIL  1: /healthz answers 503 (a smoke check of the new revision fails; users' requests are fine)
  CPU_BURN    share of one CPU a background thread keeps busy (1 = a whole core: the revision's CPU utilization
              near 100 %, what Cloud Run's container/cpu/utilizations shows; 0.5 = half of it)
  FAIL_REGIONS comma-separated regions (europe-west1,asia-northeast1): FAIL_RATE and SLOW_FACTOR
              apply only where the revision runs in one of them (CPU_BURN too); elsewhere it is healthy

Cloud Run (or the local one) sets PORT, K_SERVICE and K_REVISION. The region: the local Cloud Run sets
PITSTOP_LOCAL_REGION (real Cloud Run sets no region variable); otherwise the metadata server's
/computeMetadata/v1/instance/region ("projects/NUMBER/regions/REGION"), asked once at start and only
when FAIL_REGIONS is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAIL_RATE = float(os.environ.get("FAIL_RATE", "0"))
LATENCY_MS = float(os.environ.get("LATENCY_MS", "15"))
SLOW_FACTOR = float(os.environ.get("SLOW_FACTOR", "1"))
VERSION = os.environ.get("APP_VERSION", "dev")
REVISION = os.environ.get("K_REVISION", "local")
SMOKE_FAIL = os.environ.get("SMOKE_FAIL") == "1"
FAIL_REGIONS = {r.strip() for r in os.environ.get("FAIL_REGIONS", "").split(",") if r.strip()}
CPU_BURN = min(max(float(os.environ.get("CPU_BURN", "0")), 0.0), 1.0)


def _region() -> str | None:
    """Where this revision runs: the local Cloud Run's variable, else the metadata server (None if neither)."""
    if os.environ.get("PITSTOP_LOCAL_REGION"):
        return os.environ["PITSTOP_LOCAL_REGION"]
    if not FAIL_REGIONS:
        return None  # nothing depends on it: don't ask
    host = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
    request = urllib.request.Request(f"http://{host}/computeMetadata/v1/instance/region",
                                     headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return answer.read().decode().rsplit("/", 1)[-1] or None
    except (OSError, ValueError):
        return None


REGION = _region()
if FAIL_REGIONS and REGION not in FAIL_REGIONS:
    FAIL_RATE, SLOW_FACTOR, CPU_BURN = 0.0, 1.0, 0.0  # the bad behaviour is for other regions: healthy here


def _burn(share: float) -> None:
    """Keep `share` of one core busy, in 100 ms slices. Hashing a large buffer releases the GIL, so the
    requests still get theirs: the revision's CPU goes up, its latency hardly."""
    block = os.urandom(1 << 20)
    while True:
        until = time.monotonic() + 0.1 * share
        while time.monotonic() < until:
            hashlib.sha256(block).digest()
        if share < 1:
            time.sleep(0.1 * (1 - share))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes; don't hold the body for an ACK

    def log_message(self, *args) -> None:  # the router logs requests; keep stderr for errors
        pass

    def do_GET(self) -> None:
        # Mostly around LATENCY_MS with a tail: p99 is about 2x the median.
        delay = LATENCY_MS * SLOW_FACTOR * (1 + random.random() if random.random() < 0.97 else 2.2)
        time.sleep(delay / 1000)
        failed = self.path != "/healthz" and random.random() < FAIL_RATE
        status = 500 if failed else 200
        if self.path == "/healthz" and SMOKE_FAIL:
            failed, status = True, 503
        body = json.dumps({"version": VERSION, "revision": REVISION, "region": REGION, "ok": not failed}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    if CPU_BURN > 0:
        threading.Thread(target=_burn, args=(CPU_BURN,), name="cpu-burn", daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
