"""One Markdown table per suite: each figure beside its same-run baseline and its
target, the verdict in the target's cell; and the JSON of a whole run."""

import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any


@dataclass
class Section:
    """A suite's table, its notes, and the figures behind it (for the JSON)."""

    name: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
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


def write_json(path: Path, machine: str, sections: list[Section]) -> None:
    def plain(value: Any) -> Any:
        return asdict(value) if is_dataclass(value) else str(value)  # type: ignore[arg-type]

    suites = {
        s.name: {"rows": s.rows, "notes": s.notes, "data": s.data} for s in sections
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "suites": suites}, default=plain))
