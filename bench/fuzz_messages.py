"""Fuzz the Pub/Sub parsers for longer than the test suite does (tests/unit/test_fuzz.py: 10,000 cases).

    .venv/bin/python bench/fuzz_messages.py [--cases 200000] [--seed 1]

Mutated Cloud Build, health sample, alert (schema 1.2 and test) and command messages go through the
real path (push data -> messages.envelope -> the kind's parser); pitstop.local.fuzz says how they are
mutated and what an accepted input must hold. Prints cases/s and, by kind, how many were accepted,
refused, crashed (must be 0) or broke a bound (must be 0); exits 1 on any crash or violation, showing
the first ones with the call that rebuilds each case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))  # without `pip install -e .` too

from pitstop.local import fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    tally = fuzz.run(args.cases, args.seed)
    print(f"seed {args.seed}: {tally.total('cases')} cases in {tally.seconds:.1f} s, "
          f"{tally.total('cases') / tally.seconds:,.0f} cases/s")
    print(fuzz.table(tally))
    print("('direct ok': refused by the envelope for size or depth, accepted by the parser on its own)")
    if tally.failures:
        print("\nfirst failures (rebuild one with pitstop.local.fuzz.case(seed, index)):")
        print("\n".join(tally.failures))
    return 1 if tally.total("crashes") or tally.total("violations") else 0


if __name__ == "__main__":
    sys.exit(main())
