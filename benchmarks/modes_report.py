"""The sync-modes table: one row per metric, a column per mode and per reference.

Each mode's cell ends in a mark against the references that compete on the row
(the sketch, fastapi-simple-security; the floor is a ceiling, not a rival):
``+`` better than every one of them, ``=`` level with the best (within 2 %),
``-`` behind one. The verdict column says how the row meets its target.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from benchmarks.stats import percentile
from keystore.settings import SyncMode

MODES = get_args(SyncMode)  # ttl, reload, listen
REFS = ("sketch", "fss", "floor")
COLUMNS = (*MODES, *REFS)
LISTEN_REVOKE_MAX_S = 2.0
WHOAMI_RATIO_TARGET = 0.95
TIE = 0.02

Value = float | None


@dataclass(frozen=True)
class Spec:
    metric: str
    values: Mapping[str, Value]
    fmt: Callable[[float], str]
    #: True if a larger value is better.
    higher: bool = False
    #: Reference columns that compete on this row.
    rivals: tuple[str, ...] = ("sketch", "fss")
    #: Text for columns without a value (else "-").
    notes: dict[str, str] | None = None
    target: str = ""
    verdict: str = ""


def _better(a: float, b: float, higher: bool) -> int:
    """1 if ``a`` beats ``b``, 0 if level within TIE, -1 if behind."""
    if math.isinf(a) and math.isinf(b):
        return 0
    if a == b or abs(a - b) <= TIE * max(abs(a), abs(b)):
        return 0
    return 1 if (a > b) == higher else -1


def _mark(spec: Spec, mode: str) -> str:
    mine = spec.values.get(mode)
    rivals = [spec.values.get(r) for r in spec.rivals]
    known = [r for r in rivals if r is not None]
    if mine is None or not known:
        return ""
    worst = min(_better(mine, r, spec.higher) for r in known)
    return {1: " +", 0: " =", -1: " -"}[worst]


def _ahead(spec: Spec) -> str:
    marks = {mode: _mark(spec, mode).strip() for mode in MODES}
    if not any(marks.values()):
        return ""
    words = {"+": "ahead", "=": "level", "-": "BEHIND"}
    return "vs refs: " + ", ".join(
        f"{mode} {words[m]}" for mode, m in marks.items() if m
    )


def _cells(spec: Spec) -> list[str]:
    notes = spec.notes or {}
    cells = [spec.metric]
    for column in COLUMNS:
        value = spec.values.get(column)
        if value is None:
            cells.append(notes.get(column, "-"))
        else:
            mark = _mark(spec, column) if column in MODES else ""
            cells.append(spec.fmt(value) + mark)
    verdict = "; ".join(v for v in (spec.verdict, _ahead(spec)) if v)
    return [*cells, spec.target, verdict]


def _seconds(v: float) -> str:
    return "never" if math.isinf(v) else f"{v:.2f}"


def _int(v: float) -> str:
    return f"{v:,.0f}"


def _pct(values: list[float | None], q: float) -> float | None:
    if not values:
        return None
    return percentile(sorted(math.inf if v is None else v for v in values), q * 100)


def _bystanders(b: dict[str, Any] | None) -> str:
    if not b:
        return "-"
    return f"{float(b['p99_ms']):.1f} / {float(b['max_ms']):.0f}"


def _met(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def build(r: dict[str, Any]) -> list[list[str]]:
    cfg = r["config"]
    rev: dict[str, list[float | None]] = r["revocation"]["seconds"]
    p50 = {app: _pct(times, 0.5) for app, times in rev.items()}
    worst = {app: _pct(times, 1.0) for app, times in rev.items()}
    listen_max = worst.get("listen")
    specs: list[Spec] = [
        Spec(
            f"revocation p50 s ({len(rev['listen'])} rows deleted at once)",
            p50,
            _seconds,
            target="",
            verdict="settings below the table",
        ),
        Spec(
            "revocation max s",
            worst,
            _seconds,
            target=f"listen <= {LISTEN_REVOKE_MAX_S:g}",
            verdict=(
                f"listen {_met(listen_max is not None and listen_max <= 2.0)}"
                if "listen" in worst
                else ""
            ),
        ),
        Spec(
            "  listen app CPU s, write to last refusal",
            {"listen": r["revocation"].get("listen_cpu_s")},
            lambda v: f"{v:.2f}",
            rivals=(),
            verdict="info: applying the change + answering polls",
        ),
        Spec(
            "  listen: valid-key p99 / max ms meanwhile",
            {},
            str,
            rivals=(),
            notes={"listen": _bystanders(r["revocation"].get("listen_bystanders"))},
            verdict="info: the same key while idle is in the stall rows",
        ),
    ]

    reads = r["reads"]
    fss_note = {"fss": "n/a SQLite"}
    first = {m: float(reads["first_ready"][m]) for m in MODES}
    idle_ok = (
        abs(first["listen"] - cfg["keys"]) <= 0.01 * cfg["keys"]
        and reads["valid_per_hour"]["listen"] == 0
    )
    specs += [
        Spec(
            "Firestore reads to first ready",
            {**first, "sketch": 0.0},
            _int,
            rivals=("sketch",),
            target=f"listen ~ {cfg['keys']:,} (one load)",
            verdict=f"listen {_met(abs(first['listen'] - cfg['keys']) <= 100)}",
        ),
        Spec(
            f"Firestore reads/h, {cfg['load_keys']} keys at "
            f"{cfg['valid_rate']:g} req/s ({reads['valid_window_s']:.0f} s)",
            reads["valid_per_hour"],
            _int,
            notes=fss_note,
            target="listen ~ 0 + 1/change",
            verdict=f"listen idle {_met(idle_ok)}",
        ),
        Spec(
            f"  + unknown keys at {cfg['unknown_rate']:g}/s "
            f"({cfg['unknown_seconds']:g} s each)",
            reads["unknown_per_hour"],
            _int,
            notes=fss_note,
            verdict="info",
        ),
    ]

    stall = r["stall"]
    specs += [
        Spec(
            f"cached-key p99 ms while unknown keys arrive ({cfg['cached_rate']:g}/s)",
            {app: s["cached"]["p99_ms"] for app, s in stall.items()},
            lambda v: f"{v:.2f}",
            notes={"fss": "not run"},
            verdict="",
        ),
        Spec(
            "cached-key max ms while unknown keys arrive",
            {app: s["cached"]["max_ms"] for app, s in stall.items()},
            lambda v: f"{v:.1f}",
            notes={"fss": "not run"},
        ),
        Spec(
            "  unknown keys answered /s (offered)",
            {app: float(s["unknown"]["answered_rps"]) for app, s in stall.items()},
            lambda v: f"{v:.0f}",
            rivals=(),
            notes={"fss": "not run"},
            verdict="info",
        ),
    ]

    ip = r["inproc"]
    us = {m: float(ip["keystore"][m]["us_verify"]) for m in MODES}
    us["sketch"] = float(ip["sketch"]["us_check"])
    us["floor"] = float(ip["floor_us"])
    fss_check = r["fss"].get("check")
    if fss_check:
        us["fss"] = float(fss_check["us_check_key"])
    specs.append(
        Spec(
            "µs per warm check, in-process",
            {k: v for k, v in us.items()},
            lambda v: f"{v:.2f}",
            notes={"fss": r["fss"].get("error", "-")},
            verdict="sketch: cachetools; fss: SQLite + a thread; floor: set",
        )
    )

    tp = r["throughput"]
    ratio = {app: t["ratio"] for app, t in tp.items()}
    floor_ratio = ratio.get("floor")
    low = [m for m in MODES if m in ratio and ratio[m] < WHOAMI_RATIO_TARGET]
    note = f"floor itself {floor_ratio:.3f}" if floor_ratio is not None else ""
    verdict = (
        f"{_met(not low)}{' for ' + ', '.join(MODES) if not low else ''}"
        if not low
        else f"MISSED by {', '.join(low)}"
    )
    if floor_ratio is not None and floor_ratio < WHOAMI_RATIO_TARGET:
        verdict += f"; target above the framework ({note})"
    failed = {app: t["failed_whoami"] for app, t in tp.items() if t["failed_whoami"]}
    if failed:
        verdict = f"INVALID: failed whoami requests {failed}; " + verdict
    specs += [
        Spec(
            "req/s GET /healthz (open)",
            {app: t["healthz"] for app, t in tp.items()},
            _int,
            higher=True,
            rivals=(),
            verdict="info",
        ),
        Spec(
            "req/s GET /v1/whoami (valid key)",
            {app: t["whoami"] for app, t in tp.items()},
            _int,
            higher=True,
            rivals=("fss",),
        ),
        Spec(
            "whoami / healthz req/s",
            ratio,
            lambda v: f"{v:.3f}",
            higher=True,
            rivals=("fss",),
            target=f">= {WHOAMI_RATIO_TARGET}",
            verdict=verdict,
        ),
    ]

    mem = {m: float(ip["keystore"][m]["bytes_per_key"]) for m in MODES}
    mem["sketch"] = float(ip["sketch"]["bytes_per_key"])
    specs.append(
        Spec(
            "bytes per key in memory (ttl, sketch: per cached key)",
            {k: v for k, v in mem.items()},
            _int,
            rivals=("sketch",),
            notes={"fss": "n/a on disk"},
            verdict="tracemalloc; ttl holds only keys in use",
        )
    )
    ready = {m: float(r["ready"][m]["ready_s"]) for m in MODES}
    for ref in ("sketch", "fss", "floor"):
        if ref in r["ready"]:
            ready[ref] = float(r["ready"][ref]["healthz_s"])
    specs.append(
        Spec(
            "s from process start to ready",
            ready,
            _seconds,
            rivals=("sketch", "fss"),
            verdict="modes: /readyz; refs: /healthz",
        )
    )
    header = ["metric", *COLUMNS, "target", "verdict"]
    return [header, *(_cells(spec) for spec in specs)]


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(values: list[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])
