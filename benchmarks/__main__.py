"""``python -m benchmarks [--quick] [--only core,servers,modes,limits,soak,...]``.

One Firestore emulator for all suites; servers on one CPU, loaders and the
emulator on the other. Each suite prints one Markdown table, each figure beside
a baseline measured in the same run; all go to benchmarks/results/latest.json
(quick.json with --quick). Exits 1 if the soak's checks fail.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime

from benchmarks import core, limits, modes, servers, soak, soak_limits
from benchmarks.harness import Bench, guarded
from benchmarks.procs import ROOT
from benchmarks.report import percentile

# The soak last: it stops and restarts the emulator.
SUITES = {
    "core": core.run,
    "servers": servers.run,
    "modes": modes.run,
    "limits": limits.run,
    "soak-limits": soak_limits.run,
    "soak": soak.run,
}


async def _run(bench: Bench, names: list[str]) -> int:
    started, load = datetime.now(UTC), os.getloadavg()[0]
    sections = []
    for name in names:
        bench.say(f"{name}: starting")
        try:
            sections.append(await SUITES[name](bench))
        except Exception:
            # The suites done so far are not lost with the one that broke.
            for section in sections:
                print(f"\n{section.markdown()}", flush=True)
            raise
    cpus, runs = bench.cpus, bench.runs
    done = subprocess.run([bench.wrk, "-v"], capture_output=True, text=True)
    wrk = (done.stdout + done.stderr).split(" [")[0]  # "wrk 4.1.0"
    pinned = f"servers on CPU {cpus.server}, the rest on CPU {cpus.load}"
    heading = (
        f"keystore benchmarks{' --quick' if bench.quick else ''}, "
        f"{started:%Y-%m-%d %H:%M} UTC, {time.monotonic() - bench.started:.0f} s; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs "
        f"({pinned if cpus.server is not None else 'not pinned'}), "
        f"{wrk}; load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    if others := sorted(run.others_cpu_pct for run in runs):
        heading += (
            ". Others' use of the servers' CPU during the load runs: median "
            f"{percentile(others, 50):.0f}%, max {others[-1]:.0f}%"
        )
    if errors := sum(run.errors for run in runs):
        heading += f". {errors} requests failed in the load runs: figures invalid"
    print(heading + ".")
    for section in sections:
        print(f"\n{section.markdown()}")
    suites = {s.name: {"rows": s.rows, "notes": s.notes} for s in sections}
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{'quick' if bench.quick else 'latest'}.json").write_text(
        json.dumps({"machine": heading, "suites": suites})
    )
    for failure in (f"{s.name}: {f}" for s in sections for f in s.failures):
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if any(s.failures for s in sections) else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, ~2 minutes")
    parser.add_argument("--only", default=",".join(SUITES), help="comma-separated")
    args = parser.parse_args()
    only = args.only.split(",")
    if unknown := sorted(set(only) - set(SUITES)):
        parser.error(f"no suite {', '.join(unknown)}; there are {', '.join(SUITES)}")
    names = [name for name in SUITES if name in only]
    return guarded(args.quick, lambda bench: _run(bench, names))


raise SystemExit(main())
