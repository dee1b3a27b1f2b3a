"""Load and faults: the app under mixed load for 75 s while Firestore dies and returns.

    .venv/bin/python -m benchmarks.soak [--seconds 75]

A real uvicorn process serves the app (ttl mode, 5 s TTL so that rows age past
their TTL during the outage) against its own emulator. A loader sends a steady
mix of valid, revoked and random well-formed keys. A third of the way in, the
emulator is exported and killed; it is restarted from the export 15 s later
(a real Firestore keeps its data through an outage; the emulator needs the
export for that). Usage counts are written only at shutdown, so every use
counted during the outage must reach Firestore after it.

Checks (exit 1 if any fails): no answer but 200/401/503, no 503 outside the
outage (plus its Retry-After pause), every 503 has Retry-After, valid keys
served 200 throughout, the app recovers without a restart, no request takes
longer than the deadline, memory stays bounded, and the usage counts in
Firestore equal the 200s the loader saw.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from keystore import ApiKeyStore, Settings
from keystore.keys import new_key

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "demo-keystore"
TIMEOUT = 2.0
RETRY_AFTER = 2
#: Seconds after Firestore is back by which every answer must be right again.
RECOVERY = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Emulator:
    state_dir: Path
    port: int

    def run(self, command: str, **env: str) -> None:
        subprocess.run(
            [str(ROOT / "emulator.sh"), command],
            env={
                **os.environ,
                "KEYSTORE_EMULATOR_DIR": str(self.state_dir),
                "KEYSTORE_EMULATOR_PORT": str(self.port),
                **env,
            },
            check=True,
            capture_output=True,
            timeout=120,
        )

    def export(self) -> Path:
        target = self.state_dir / f"export-{time.time_ns()}"
        target.mkdir()
        r = httpx.post(
            f"http://127.0.0.1:{self.port}/emulator/v1/projects/{PROJECT}:export",
            json={
                "database": f"projects/{PROJECT}/databases/(default)",
                "export_directory": str(target),
            },
            timeout=30,
        )
        r.raise_for_status()
        return next(target.rglob("*.overall_export_metadata"))


@dataclass
class Tally:
    by_phase: dict[str, Counter[str]] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    valid_ok: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, phase: str, kind: str, status: str, ms: float) -> None:
        self.by_phase.setdefault(phase, Counter())[f"{kind}:{status}"] += 1
        if kind == "valid":
            self.latencies_ms.setdefault(phase, []).append(ms)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def soak(seconds: float, rate: float, with_outage: bool = True) -> int:
    work = Path(tempfile.mkdtemp(prefix="keystore-soak-"))
    emulator = Emulator(work / "emulator", free_port())
    emulator.state_dir.mkdir()
    emulator.run("start")
    os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{emulator.port}"
    os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
    settings = Settings(project=PROJECT, collection="soak_keys")
    async with ApiKeyStore(settings) as store:
        valid = [await store.create(name=f"valid-{i}") for i in range(50)]
        revoked = [await store.create(name=f"revoked-{i}") for i in range(20)]
        for made in revoked:
            await store.revoke(made.record.id)
    id_of = {made.key: made.record.id for made in valid}

    port = free_port()
    app_log = (work / "app.log").open("w")
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=work,
        env={
            **os.environ,
            "KEYSTORE_COLLECTION": settings.collection,
            "KEYSTORE_CACHE_TTL": "5",
            "KEYSTORE_TIMEOUT": str(TIMEOUT),
            "KEYSTORE_RETRY_AFTER": str(RETRY_AFTER),
            "KEYSTORE_USAGE_FLUSH_INTERVAL": "3600",
            "KEYSTORE_LOG_FORMAT": "json",
        },
        # A file, not a pipe: a pipe nobody reads fills up, and then the app's
        # next log line blocks its event loop.
        stdout=app_log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    tally = Tally()
    memory: list[float] = []
    outage = (seconds / 3, seconds / 3 + 15)
    killed_at: float | None = None
    recovered_at: float | None = None
    last_503 = 0.0
    try:
        for _ in range(300):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        started = time.monotonic()

        def phase(now: float) -> str:
            if killed_at is None or now < killed_at:
                return "before"
            if recovered_at is None or now < recovered_at:
                return "outage"
            return "after"

        async def faults() -> None:
            nonlocal killed_at, recovered_at
            await asyncio.sleep(outage[0])
            export = await asyncio.to_thread(emulator.export)
            killed_at = time.monotonic()
            await asyncio.to_thread(emulator.run, "stop")
            print(f"[{time.monotonic() - started:5.1f}s] emulator killed", flush=True)
            await asyncio.sleep(outage[1] - outage[0])
            await asyncio.to_thread(
                emulator.run, "start", KEYSTORE_EMULATOR_IMPORT=str(export)
            )
            recovered_at = time.monotonic()
            print(f"[{recovered_at - started:5.1f}s] emulator back", flush=True)

        async def sample_memory() -> None:
            while time.monotonic() - started < seconds:
                memory.append(rss_mb(app.pid))
                await asyncio.sleep(2)

        async def one(http: httpx.AsyncClient, kind: str, key: str) -> None:
            nonlocal last_503
            t0 = time.monotonic()
            try:
                r = await http.get(f"{base}/v1/whoami", headers={"x-api-key": key})
                status = r.status_code
            except httpx.HTTPError as exc:
                tally.problems.append(f"transport error: {type(exc).__name__}")
                return
            ms = (time.monotonic() - t0) * 1000
            now_phase = phase(t0)
            label = (
                f"{status}-busy" if status == 503 and "busy" in r.text else str(status)
            )
            tally.add(now_phase, kind, label, ms)
            if status == 200 and kind == "valid":
                tally.valid_ok[key] += 1
            if status not in (200, 401, 503):
                tally.problems.append(f"{kind} got {status}: {r.text[:80]}")
            if status == 503:
                last_503 = max(last_503, time.monotonic())
            if status == 503 and "retry-after" not in r.headers:
                tally.problems.append("503 without Retry-After")
            # After the outage the store finds Firestore again within a few rounds
            # of a pause (RETRY_AFTER) and a probe (TIMEOUT); a freshly restarted
            # emulator is slow at first. RECOVERY bounds it.
            settled = recovered_at is not None and t0 > recovered_at + RECOVERY
            if (
                status == 503
                and now_phase != "outage"
                and (now_phase == "before" or settled)
            ):
                tally.problems.append(
                    f"503 outside the outage ({kind}, {t0 - started:.1f}s)"
                )
            if ms > (TIMEOUT + 1) * 1000:
                tally.problems.append(f"{kind} took {ms:.0f} ms")
            if kind == "valid" and status != 200:
                tally.problems.append(f"valid key got {status} ({now_phase})")

        async def load() -> None:
            rng = random.Random(7)
            # Enough connections that the requests Firestore's outage holds
            # (unknown keys, up to KEYSTORE_TIMEOUT each) leave room for the
            # rest: with 32, valid keys queued here for ~1 s behind them.
            limits = httpx.Limits(max_connections=256)
            async with httpx.AsyncClient(limits=limits, timeout=30) as http:
                pending: set[asyncio.Task[None]] = set()
                while time.monotonic() - started < seconds:
                    roll = rng.random()
                    if roll < 0.7:
                        kind, key = "valid", rng.choice(valid).key
                    elif roll < 0.85:
                        kind, key = "revoked", rng.choice(revoked).key
                    else:
                        kind, key = "random", new_key("ks")
                    task = asyncio.create_task(one(http, kind, key))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    await asyncio.sleep(1 / rate)
                await asyncio.gather(*pending)

        jobs = [load(), sample_memory()] + ([faults()] if with_outage else [])
        await asyncio.gather(*jobs)
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=60)
        app_log.close()
        output = (work / "app.log").read_text()

    async with ApiKeyStore(settings) as store:
        counted = {
            made.record.id: (await store.get(made.record.id)).usage_count  # type: ignore[union-attr]
            for made in valid
        }
    emulator.run("stop")
    expected = {id_of[key]: n for key, n in tally.valid_ok.items()}
    lost = {
        k: expected.get(k, 0) - counted[k]
        for k in counted
        if counted[k] != expected.get(k, 0)
    }
    if lost:
        tally.problems.append(f"usage counts differ from the 200s seen: {lost}")
    if "Traceback" in output:
        tally.problems.append("the app printed a traceback")
    growth = max(memory) - memory[len(memory) // 4] if memory else 0.0
    if growth > 50:
        tally.problems.append(f"memory grew by {growth:.0f} MB")

    down = ((killed_at or started) - started, (recovered_at or started) - started)
    print(
        f"\nsoak: {seconds:.0f} s at {rate:.0f} req/s; Firestore down from "
        f"{down[0]:.1f} s to {down[1]:.1f} s"
    )
    if recovered_at is not None and last_503 > recovered_at:
        print(f"last 503: {last_503 - recovered_at:.1f} s after Firestore was back")
    print(f"{'phase':<8} {'requests':>8}  statuses by key kind")
    for name in ("before", "outage", "after"):
        counts = tally.by_phase.get(name, Counter())
        print(f"{name:<8} {sum(counts.values()):>8}  {dict(sorted(counts.items()))}")
    for name, values in tally.latencies_ms.items():
        print(
            f"valid-key latency {name:<6} p50 {percentile(values, 0.5):6.1f} ms  "
            f"p99 {percentile(values, 0.99):6.1f} ms  max {max(values):6.1f} ms"
        )
    print(
        f"app memory: {min(memory):.0f}-{max(memory):.0f} MB "
        f"(growth after warm-up {growth:.1f} MB)"
    )
    print(
        f"usage counts in Firestore: {sum(counted.values())}, "
        f"200s seen: {sum(expected.values())}"
    )
    summary = {
        "problem_count": len(tally.problems),
        "problems": tally.problems[:20],
        "phases": {k: dict(v) for k, v in tally.by_phase.items()},
    }
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "soak.json").write_text(
        json.dumps(summary, indent=1)
    )
    if tally.problems:
        print("app log, last lines:\n" + "\n".join(output.splitlines()[-25:]))
        print(f"FAILED: {len(tally.problems)} problems, first: {tally.problems[:5]}")
        return 1
    print("OK: no unexpected status, no hang, recovered by itself, no count lost")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=75.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument(
        "--no-outage",
        action="store_true",
        help="load only: tells the memory used by load from that used by the outage",
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args.seconds, args.rate, not args.no_outage)))


if __name__ == "__main__":
    main()
