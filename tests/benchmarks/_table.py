"""The benchmarks' shared table: one row per figure, ours beside the reference measured in the same run, and the
summary of targets met."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Row:
    """One line of the table: our figure, the reference's, and the target's verdict (``None``: no target)."""

    figure: str
    ours: str
    reference: str
    ratio: str = ""
    target: str = ""
    passed: bool | None = None
    key: str = ""  # non-empty: this row is a target of the summary
    notes: list[str] = field(default_factory=list)


def result(row: Row) -> str:
    if not row.key:
        return "-"
    return "SKIP" if row.passed is None else ("PASS" if row.passed else "MISS")


def render(rows: list[Row], header: str) -> str:
    cols = ("figure", "gridedge", "reference (same run)", "ratio", "target", "result")
    cells = [(r.figure, r.ours, r.reference, r.ratio, r.target, result(r)) for r in rows]
    widths = [max(len(c[i]) for c in [cols, *cells]) for i in range(len(cols))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [header, "", line(cols), line(["-" * w for w in widths])]
    for row, cell in zip(rows, cells, strict=True):
        out.append(line(cell))
        out += [f"    {note}" for note in row.notes]
    targets = [r for r in rows if r.key]
    out += ["", "summary:"]
    out += [f"  {result(r)}  {r.key}: {r.ours}" + (f" vs {r.reference} ({r.ratio})" if r.ratio else "")
            + f"; target {r.target}" for r in targets]
    passed = sum(r.passed is True for r in targets)
    skipped = sum(r.passed is None for r in targets)
    out.append(f"  {passed}/{len(targets)} targets met" + (f" ({skipped} not measured)" if skipped else ""))
    return "\n".join(out)


def targets_json(rows: Sequence[Row]) -> dict[str, dict[str, object]]:
    """The summary's targets for a ``--json`` file: key -> ours, reference, target, pass."""
    return {r.key: {"ours": r.ours, "reference": r.reference, "target": r.target, "pass": r.passed}
            for r in rows if r.key}
