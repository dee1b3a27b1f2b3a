"""Servers: the demo app (ttl mode, defaults) and the floor under uvicorn on its
pure-Python HTTP parser and event loop (h11, asyncio), and on the C ones that
uvicorn[standard] brings (httptools, uvloop). All four servers run at once and
every req/s comes from the same rounds, so that both the ratio to the floor and
the speedup of one setup over the other are taken within a round."""

from contextlib import AsyncExitStack
from importlib.metadata import version
from importlib.util import find_spec

from benchmarks.harness import DEMO, FLOOR, Bench, Target
from benchmarks.procs import BenchmarkError, on_cpu
from benchmarks.rawhttp import fetch, get
from benchmarks.report import Section
from keystore import ApiKeyStore, Settings

APPS = {"keystore": DEMO, "floor": FLOOR}
#: uvicorn's options for each setup; with httptools and uvloop installed, its
#: default (--http auto --loop auto) is the second.
SETUPS = {
    "h11 + asyncio": ("--http", "h11", "--loop", "asyncio"),
    "httptools + uvloop": ("--http", "httptools", "--loop", "uvloop"),
}
WHOAMI = "/v1/whoami"
ROUTES = {
    "GET /healthz (open route)": "/healthz",
    "GET /v1/whoami (cached key)": WHOAMI,
}
#: Where each (setup, route, app) is in the rounds' targets.
Index = dict[tuple[str, str, str], int]


async def run(bench: Bench) -> Section:
    if missing := [name for name in ("httptools", "uvloop") if not find_spec(name)]:
        raise BenchmarkError(
            f"{', '.join(missing)} missing: pip install -e '.[server]'"
        )
    slow, fast = SETUPS
    s = Section("servers", ("figure", slow, fast, f"{fast} over {slow}"))
    collection = bench.collection("servers")
    async with ApiKeyStore(Settings(collection=collection)) as store:
        key = (await store.create(name="bench", scopes=["reports:read"])).key
    env = {"KEYSTORE_COLLECTION": collection, "FLOOR_KEYS": key}
    targets: list[Target] = []
    index: Index = {}
    async with AsyncExitStack() as stack:
        for setup, options in SETUPS.items():
            for app, module in APPS.items():
                serving = bench.serve(
                    f"{app}-{options[1]}", module, options=options, **env
                )
                server = await stack.enter_async_context(serving)
                for route, path in ROUTES.items():
                    index[setup, route, app] = len(targets)
                    targets.append((server, path, key if path == WHOAMI else None))
        with on_cpu(bench.cpus.load):
            for server, path, sent in targets:
                status, text = await fetch(get(server.url + path, sent))
                if status != 200:  # else we would time 401s
                    raise BenchmarkError(
                        f"{server.url}{path} answered {status}: {text}"
                    )
            bench.say(
                "servers: req/s of keystore and the floor on both setups in rounds"
            )
            found = await bench.rounds(targets)
    rounds = len(found.rps)
    for route in ROUTES:
        for app in APPS:
            before, after = index[slow, route, app], index[fast, route, app]
            s.add(
                f"req/s, {route}, {app}: median of {rounds} rounds",
                f"{found.median(before):,.0f}",
                f"{found.median(after):,.0f}",
                f"{found.ratio(after, before):.2f}x",
            )
        kept = [
            found.ratio(index[setup, route, "keystore"], index[setup, route, "floor"])
            for setup in SETUPS
        ]
        s.add(f"{route}: keystore / floor req/s", *(f"{k:.3f}" for k in kept), "-")
    versions = ", ".join(
        f"{p} {version(p)}" for p in ("uvicorn", "httptools", "uvloop")
    )
    s.notes.append(f"{versions}; ratios and speedups: medians of the rounds' own.")
    return s
