"""The twin's errors and the validation issue they carry.

Owns :class:`FeederIssue` (one problem with a feeder, naming component, field and element names, like
power-grid-model's ``ValidationError``) and the exception tree under :class:`gateway.errors.GridedgeError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import GridedgeError


@dataclass(frozen=True, slots=True)
class FeederIssue:
    """One problem with a feeder: ``component`` (``"line"``), ``field`` (``"r1_ohm"``), the element names."""

    component: str
    field: str
    ids: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        shown = ", ".join(self.ids[:8]) + (f", ... ({len(self.ids)} in all)" if len(self.ids) > 8 else "")
        where = f"{self.component}.{self.field}" if self.field else self.component
        return f"{where}: {self.message}" + (f" [{shown}]" if shown else "")


def merge_issues(issues: tuple[FeederIssue, ...] | list[FeederIssue]) -> tuple[FeederIssue, ...]:
    """One issue per (component, field, message), holding every id it was raised for, in first-seen order."""
    merged: dict[tuple[str, str, str], list[str]] = {}
    for issue in issues:
        ids = merged.setdefault((issue.component, issue.field, issue.message), [])
        ids.extend(i for i in issue.ids if i not in ids)
    return tuple(FeederIssue(c, f, tuple(ids), m) for (c, f, m), ids in merged.items())


class TwinError(GridedgeError):
    """Root of the feeder twin's errors."""


class FeederError(TwinError, ValueError):
    """A feeder cannot be used as given; ``issues`` lists every problem found (component, field, ids)."""

    def __init__(self, issues: tuple[FeederIssue, ...] | list[FeederIssue], source: str | None = None) -> None:
        self.issues = merge_issues(issues)
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"{head}{len(self.issues)} feeder issue(s):\n{lines}")


class PowerFlowError(TwinError, RuntimeError):
    """The power-flow engine failed as a whole (not one scenario: those come back with ``converged`` False)."""


class ScenarioError(TwinError, ValueError):
    """Scenario arrays given to a solve have the wrong shape or values (the message names the argument)."""
