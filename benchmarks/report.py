"""The results table: each keystore figure beside its baseline and its target."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WHOAMI_RATIO_TARGET = 0.95
CHECK_US_TARGET = 5.0
P99_RATIO_TARGET = 1.5


@dataclass(frozen=True)
class Row:
    metric: str
    keystore: str
    baseline: str
    target: str
    verdict: str


def _best_rps(runs: list[dict[str, Any]]) -> float:
    return max(float(run["rps"]) for run in runs)


def _spread(runs: list[dict[str, Any]]) -> float:
    """How far apart repeated runs of one measurement were, as a share of the best."""
    rates = [float(run["rps"]) for run in runs]
    return (max(rates) - min(rates)) / max(rates) if max(rates) else 0.0


def _bad(runs: list[dict[str, Any]]) -> int:
    return sum(int(run["status_errors"]) + int(run["socket_errors"]) for run in runs)


def _verdict(ok: bool, note: str = "") -> str:
    word = "MET" if ok else "MISSED"
    return f"{word}; {note}" if note else word


def build_rows(r: dict[str, Any]) -> list[Row]:
    tp = r["throughput"]
    ks_h = _best_rps(tp["keystore"]["healthz"])
    ks_w = _best_rps(tp["keystore"]["whoami"])
    fl_h = _best_rps(tp["floor"]["healthz"])
    fl_w = _best_rps(tp["floor"]["whoami"])
    ks_ratio, fl_ratio = ks_w / ks_h, fl_w / fl_h
    errors = _bad(tp["keystore"]["whoami"]) + _bad(tp["floor"]["whoami"])
    spread = max(_spread(runs) for app in tp.values() for runs in app.values())
    note = f"floor allows {fl_ratio:.3f}"
    if fl_ratio < WHOAMI_RATIO_TARGET:
        note = f"target above framework: floor itself {fl_ratio:.3f}"
    ratio_verdict = _verdict(ks_ratio >= WHOAMI_RATIO_TARGET, note)
    if spread > 0.05:
        ratio_verdict += f"; repeats differ by up to {spread:.0%}: noisy"
    if errors:
        ratio_verdict = f"INVALID: {errors} failed requests"
    rows = [
        Row(
            "req/s GET /healthz (open)",
            f"{ks_h:,.0f}",
            f"{fl_h:,.0f} floor",
            f"{ks_h / fl_h:.2f}x floor",
            "info: same handler in both; any gap is noise",
        ),
        Row(
            "req/s GET /v1/whoami (cached key)",
            f"{ks_w:,.0f}",
            f"{fl_w:,.0f} floor",
            f"{ks_w / fl_w:.2f}x floor",
            "info",
        ),
        Row(
            "whoami / healthz req/s",
            f"{ks_ratio:.3f}",
            f"{fl_ratio:.3f} floor",
            f">= {WHOAMI_RATIO_TARGET}",
            ratio_verdict,
        ),
    ]

    ip, sk = r["inproc"]["keystore"], r["inproc"]["sketch"]
    for name, label in (
        ("verify", "µs per warm verify()"),
        ("does_api_key_exist", "µs per warm does_api_key_exist()"),
    ):
        us = float(ip[f"us_{name}"])
        rows.append(
            Row(
                label,
                f"{us:.2f}",
                f"{float(ip['us_floor']):.2f} set",
                f"<= {CHECK_US_TARGET:g}",
                _verdict(us <= CHECK_US_TARGET),
            )
        )
    rows += [
        Row(
            "CPU ms per unknown-key check, in-process",
            f"{float(ip['unknown_cpu_ms']):.2f}",
            f"{float(sk['unknown_cpu_ms']):.2f} sketch",
            "",
            "info: all threads, 1 CPU",
        ),
        Row(
            "wall ms per unknown-key check, in-process",
            f"{float(ip['unknown_wall_ms']):.2f}",
            f"{float(sk['unknown_wall_ms']):.2f} sketch",
            "",
            "info: the sketch blocks its loop this long",
        ),
    ]
    for level, sides in r["latency"].items():
        rows += _latency_rows(level, sides["keystore"], sides["sketch"])
    failures = int(r["keystore_log"]["firestore_failures"])
    rows.append(
        Row(
            "Firestore calls the server gave up on (log)",
            str(failures),
            "-",
            "",
            "info: each opens a retry_after window of 503s" if failures else "info",
        )
    )

    herd = int(ip["herd_reads"])
    sketch_herd = r["sketch_herd"]
    herd_ok = herd == 1 and int(ip["herd_true"]) == int(r["config"]["herd"])
    herd_note = "sketch: 1 as its get blocks the event loop"
    for kind, outcome in sketch_herd.items():
        if set(outcome["statuses"]) != {"200"}:
            herd_note += f"; sketch {kind} answers {outcome['statuses']}"
    rows += [
        Row(
            f"Firestore reads, herd of {r['config']['herd']} on 1 uncached key",
            str(herd),
            f"{sketch_herd['async']['reads']} sketch",
            "= 1",
            _verdict(herd_ok, herd_note),
        ),
        Row(
            "  same herd, sketch with a plain def dependency",
            "-",
            f"{sketch_herd['threaded']['reads']} sketch-def",
            "",
            "info: thread pool, no single flight",
        ),
    ]
    malformed = int(ip["malformed_reads"])
    rows.append(
        Row(
            f"Firestore reads, {r['config']['malformed']:,} malformed keys",
            str(malformed),
            f"{sk['malformed_reads']:,} sketch",
            "= 0",
            _verdict(malformed == 0, f"{float(ip['malformed_us']):.1f} µs each"),
        )
    )
    return rows


def _latency_rows(level: str, ks: dict[str, Any], sk: dict[str, Any]) -> list[Row]:
    conns = level.removeprefix("c").replace("-pause", " pause ").split("-")[0]
    rate = float(ks["stream"]["offered_rps"])
    # Saturated (no pause), the p99 also grows by the CPU the misses take, stall
    # or no stall; the target is for the steady load below capacity.
    steady = "-pause" in level

    def p99(side: dict[str, Any], phase: str) -> float:
        return float(side[phase]["p99_ms"])

    def rps(side: dict[str, Any], phase: str) -> float:
        return float(side[phase]["rps"])

    def stream(side: dict[str, Any]) -> str:
        s = side["stream"]
        codes = " ".join(f"{k}:{v}" for k, v in sorted(s["statuses"].items()))
        return (
            f"{float(s['answered_rps']):.0f}/s p99 {float(s['p99_ms']):.0f}ms {codes}"
        )

    ks_ratio = p99(ks, "misses") / p99(ks, "idle")
    sk_ratio = p99(sk, "misses") / p99(sk, "idle")
    failed = _bad([ks["idle"], ks["misses"], sk["idle"], sk["misses"]])
    verdict = _verdict(ks_ratio <= P99_RATIO_TARGET, f"sketch {sk_ratio:.2f}")
    if not steady:
        lost = 1 - rps(ks, "misses") / max(rps(ks, "idle"), 1.0)
        verdict = f"info: saturated; the misses took {lost:.0%} of its req/s"
    if failed:
        verdict = f"INVALID: {failed} cached-key requests failed"
    refused = int(ks["stream"]["statuses"].get("503", 0))
    if refused:
        verdict += f"; {refused} unknown keys got 503"
    # A server that leaves the misses waiting keeps its cached p99 cheaply.
    for name, side in (("keystore", ks), ("sketch", sk)):
        answered = float(side["stream"]["answered_rps"])
        if answered < 0.9 * rate:
            verdict += f"; {name} answered only {answered:.0f}/s of the misses"
    return [
        Row(
            f"p99 ms whoami c={conns}: idle -> {rate:g}/s misses",
            f"{p99(ks, 'idle'):.2f} -> {p99(ks, 'misses'):.2f}",
            f"{p99(sk, 'idle'):.2f} -> {p99(sk, 'misses'):.2f} sketch",
            "",
            "info",
        ),
        Row(
            f"  p99 during misses / idle, c={conns}, {rate:g}/s",
            f"{ks_ratio:.2f}",
            f"{sk_ratio:.2f} sketch",
            f"<= {P99_RATIO_TARGET}" if steady else "",
            verdict,
        ),
        Row(
            f"  req/s whoami c={conns}, {rate:g}/s: idle -> misses",
            f"{rps(ks, 'idle'):,.0f} -> {rps(ks, 'misses'):,.0f}",
            f"{rps(sk, 'idle'):,.0f} -> {rps(sk, 'misses'):,.0f} sketch",
            "",
            "info",
        ),
        Row(
            f"  unknown keys answered, c={conns}, {rate:g}/s",
            stream(ks),
            stream(sk),
            f"offered {rate:g}/s",
            "info",
        ),
    ]


def foreign_load(r: dict[str, Any]) -> dict[str, float]:
    """CPU taken on the servers' CPU by processes not ours, over the load runs.

    The server's CPU is ours alone only if nothing else on the machine runs there;
    what the CPU was busy beyond the server's own use is someone else's.
    """
    runs: list[dict[str, Any]] = []
    for app in r["throughput"].values():
        for endpoint in app.values():
            runs += endpoint
    for level in r["latency"].values():
        for side in level.values():
            runs += [side["idle"], side["misses"]]
    cpu = str(r["machine"]["server_cpu"])
    extra = sorted(
        max(
            0.0,
            float(run["cpu"].get(f"cpu{cpu}_busy_pct", 0.0))
            - float(run["cpu"].get("server_cpu_pct", 0.0)),
        )
        for run in runs
        if run.get("cpu")
    )
    if not extra:
        return {}
    return {"median_pct": extra[len(extra) // 2], "max_pct": extra[-1]}


def format_table(rows: list[Row]) -> str:
    header = Row("metric", "keystore", "baseline", "ratio/target", "verdict")
    cells = [list(asdict(row).values()) for row in [header, *rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]

    def line(values: list[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


def format_breakdown(breakdown: dict[str, float]) -> str:
    width = max(len(name) for name in breakdown)
    lines = ["Where a warm verify() spends its time (µs, pure steps only):"]
    lines += [f"  {name.ljust(width)}  {us:6.2f}" for name, us in breakdown.items()]
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**results, "rows": [asdict(row) for row in rows]}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
