"""Figures and their tables: the one percentile, calls timed in process, and one
Markdown table per suite, each figure beside its same-run baseline and its
target, the verdict in the target's cell."""

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from benchmarks.rawhttp import Answer
from keystore.keys import new_key

Call = Callable[[], Awaitable[object]]


@dataclass
class Section:
    """A suite's table and its notes."""

    name: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Checks that failed (the soak's): the run exits 1.
    failures: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        assert len(cells) == len(self.header), cells
        self.rows.append(cells)

    def markdown(self) -> str:
        lines = [f"### {self.name}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + (["", *self.notes] if self.notes else []))


def judged(target: str, ok: bool, note: str = "") -> str:
    """A target's cell: the target, met or MISSED, and a note."""
    return f"{target}: {'met' if ok else 'MISSED'}" + (f" ({note})" if note else "")


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100) of sorted ``ordered``; 0 if empty."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def ms(answers: Iterable[Answer], *pcts: float) -> str:
    """Percentiles (0-100) of the answers' times in ms, joined by " / "."""
    ordered = sorted(a.seconds for a in answers)
    return " / ".join(f"{percentile(ordered, p) * 1e3:,.1f}" for p in pcts)


def add_warm_checks(s: Section, us: Mapping[str, float], names: Sequence[str]) -> None:
    """The row of ``per_call_us``'s warm checks of ``names``; the target: 5 µs."""
    s.add(
        "µs per warm check (`verify`), in process",
        *(f"{us[name]:.2f}" for name in names),
        f"{us['set']:.2f} set lookup",
        judged("≤ 5", all(us[name] <= 5 for name in names)),
    )


async def per_call_us(calls: Mapping[str, Call], quick: bool) -> dict[str, float]:
    """µs per awaited call, best of 7 loops of 50,000 (10,000 if ``quick``), and
    under "set" the baseline: a key looked up in a Python set. The loops take
    the calls in turn, so that a slow phase of the machine (they last seconds
    here) costs every call alike rather than one of them."""
    key = new_key("ks")

    async def set_lookup() -> bool:
        return key in {key}

    timed, n = {**calls, "set": set_lookup}, 10_000 if quick else 50_000
    best = dict.fromkeys(timed, float("inf"))
    for round_ in range(8):
        for name, call in timed.items():
            start = time.perf_counter()
            for _ in range(n):
                await call()
            if round_:  # the first round warms up
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / n * 1e6 for name, seconds in best.items()}
