"""``python -m benchmarks [--quick] [--only core,modes,limits,soak]``.

One Firestore emulator for all suites; servers on one CPU, loaders and the
emulator on the other. Each suite prints one Markdown table, each figure beside
a baseline measured in the same run; all go to benchmarks/results/latest.json
(quick.json with --quick). Exits 1 if the soak's checks fail.
"""

import argparse
import os
import sys
import time
from collections.abc import Awaitable, Callable

from benchmarks import core, limits, modes, soak
from benchmarks.harness import Bench, guarded
from benchmarks.procs import ROOT
from benchmarks.report import Section, write_json
from benchmarks.stats import percentile

SUITES: dict[str, Callable[[Bench], Awaitable[Section]]] = {
    "core": core.run,
    "modes": modes.run,
    "limits": limits.run,
    "soak": soak.run,  # last: it stops and restarts the emulator
}


async def _run(bench: Bench, names: list[str]) -> int:
    machine = bench.machine()
    sections = []
    for name in names:
        bench.say(f"{name}: starting")
        sections.append(await SUITES[name](bench))
    others = sorted(run.others_cpu_pct for run in bench.loader.runs)
    heading = (
        f"keystore benchmarks{' --quick' if bench.quick else ''}, {machine}; "
        f"{time.monotonic() - bench.started:.0f} s, load average "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    if others:
        heading += (
            f". Others' use of the servers' CPU during the load runs: median "
            f"{percentile(others, 50):.0f}%, max {others[-1]:.0f}%"
        )
    if errors := sum(run.errors for run in bench.loader.runs):
        heading += f". {errors} requests failed in the load runs: figures invalid"
    print(heading + ".")
    for section in sections:
        print(f"\n{section.markdown()}")
    name = "quick.json" if bench.quick else "latest.json"
    write_json(ROOT / "benchmarks" / "results" / name, heading, sections)
    failed = [f"{s.name}: {f}" for s in sections for f in s.failures]
    for failure in failed:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, ~2 minutes")
    parser.add_argument(
        "--only", default=",".join(SUITES), help="suites, comma-separated"
    )
    args = parser.parse_args()
    names = [name for name in SUITES if name in args.only.split(",")]
    if unknown := set(args.only.split(",")) - set(SUITES):
        parser.error(
            f"no suite {', '.join(sorted(unknown))}; there are {', '.join(SUITES)}"
        )
    return guarded(args.quick, lambda bench: _run(bench, names))


raise SystemExit(main())
