"""``make bench``: run every benchmark script and save the numbers beside them.

Each script measures ratios within one run (ours against a floor on the same input), so the
numbers compare across machines better than absolute times do. Results go to
``benchmarks/results.json``; BENCHMARKS.md records them with the machine and command.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine

SCRIPTS = (
    "bench_transform",
    "bench_shaping",
    "bench_delivery",
    "bench_processes",
    "bench_daemon",
    "bench_replay",
    "bench_startup",
)


def main(names: list[str]) -> int:
    """Run the named benchmark scripts (all by default)."""
    chosen = names or list(SCRIPTS)
    results: dict[str, object] = {"machine": machine()}
    for name in chosen:
        path = Path(__file__).with_name(f"{name}.py")
        if not path.exists():
            print(f"(skipping {name}: not present)")
            continue
        print(f"\n### {name}")
        module = importlib.import_module(f"benchmarks.{name}")
        results[name] = module.main()
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
