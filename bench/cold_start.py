"""Cold start of a Cloud Function: import functions/main.py, then build the first engine.

Each run is a fresh Python process (as a new instance is). Emulator hosts are set so that building the
clients needs no credentials and opens no connection. Prints the median of N runs:

    python bench/cold_start.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import main
t1 = time.perf_counter()
main.engine()
print(round((t1 - t0) * 1000), round((time.perf_counter() - t1) * 1000))
"""


def main(runs: int) -> None:
    env = {**os.environ, "GOOGLE_CLOUD_PROJECT": "cold-start", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:1",
           "PUBSUB_EMULATOR_HOST": "127.0.0.1:2", "PYTHONPATH": str(ROOT / "shared")}
    rows = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-B", "-c", PROBE, str(ROOT / "functions")], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        rows.append((int(out[0]), int(out[1])))
    print(f"cold start over {runs} fresh processes (median): import functions/main.py "
          f"{statistics.median(r[0] for r in rows):.0f} ms, first engine {statistics.median(r[1] for r in rows):.0f} "
          f"ms, total {statistics.median(sum(r) for r in rows):.0f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
