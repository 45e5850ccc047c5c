"""Feeder-twin benchmark: our power flow and certified envelope beside OpenDSS doing the same work, same run.

Run: ``.venv/bin/python -m tests.benchmarks.bench_twin [--quick] [--pandapower] [--json PATH]`` (``make bench``).

Cases (:mod:`tests.benchmarks._twin_cases`): Baran-Wu 33-bus with 10 DERs, and the IEEE European LV feeder with a
DER on each of its 55 customers; from ../shared/feeders, or from pandapower's copies on a fresh clone (or with
``--pandapower``). The reference (:mod:`tests.benchmarks._twin_opendss`) is the same feeder compiled in OpenDSS
(dss-python), the same DERs as generators (export) and loads (import), and the same envelope problem as
``certify_envelope`` resolves it (limits minus margins, worst-case loads, ratings, equal policy, relative tolerance),
found by bisection with full OpenDSS solves.

Figures, per case (medians over every timed call; the contenders take turns in every round, so machine noise falls
on both alike):

* one power flow with the DER outputs changed: ours ``PowerFlow.solve_batch`` of one scenario (every voltage,
  loading and loss of the feeder) beside OpenDSS setting the DERs, ``Solve`` and reading every node voltage;
* one certified envelope (export and import): ``certify_envelope`` beside the OpenDSS bisection of both
  directions; with the AC solves each took;
* the same AC work: our envelope beside OpenDSS solving, one by one (warm-started), exactly the scenarios our
  envelope solved (recorded from one ``certify_envelope`` call) and judging each the same way: how much of the
  envelope's lead is the engine and how much the search;
* one power flow and one certified envelope, the work of one gateway cycle (the issue's target): ours
  ``PowerFlow.solve()`` (the operating point) + ``certify_envelope``, beside OpenDSS solving the operating point +
  the bisection;
* agreement: our export and import limit (W per DER) beside OpenDSS bisection's; both are a passing level at most
  ``rtol`` below the true limit, so they must agree to about ``rtol`` (the target allows twice that).

Engines are built once per case (not timed; their build times are noted) and reused, as the gateway does; ours
with its default options (``method="auto"``: iterative current on these radial feeders, Newton-Raphson where it
does not converge). Every figure is wall-clock; each cycle row also notes the CPU time of this process (all
threads), the steadier measure on a shared machine, and the same cycle with
``FlowOptions(method="newton_raphson")`` throughout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from gateway.twin import EnvelopeRequest, EnvelopeResult, FlowOptions, FlowResult, PowerFlow, certify_envelope
from tests.benchmarks._table import Row, render, targets_json
from tests.benchmarks._twin_cases import Case, cases
from tests.benchmarks._twin_opendss import OpenDssFeeder, Problem


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int
    calls: dict[str, int]  # timed calls per round, per figure, for the 33-bus case (the LV case: a tenth, >= 3)


FULL = Settings(rounds=9, calls={"flow": 200, "envelope": 60, "cycle": 60})
QUICK = Settings(rounds=3, calls={"flow": 60, "envelope": 20, "cycle": 20})


@dataclass(slots=True)
class Figures:
    """Every timed call (ms) of one case, ours and the reference, and the envelopes' answers."""

    case: str
    source: str
    ours: dict[str, list[float]] = field(default_factory=dict)
    opendss: dict[str, list[float]] = field(default_factory=dict)
    ours_cpu: dict[str, list[float]] = field(default_factory=dict)
    opendss_cpu: dict[str, list[float]] = field(default_factory=dict)
    newton_ms: list[float] = field(default_factory=list)
    replay_ms: list[float] = field(default_factory=list)
    replay_cpu: list[float] = field(default_factory=list)
    export_w: float = math.nan
    import_w: float = math.nan
    dss_export_w: float = math.nan
    dss_import_w: float = math.nan
    newton_export_w: float = math.nan
    newton_import_w: float = math.nan
    ac_solves: int = 0
    batches: int = 0
    dss_solves: int = 0
    certified: bool = False
    binding: str = ""
    build_ms: float = math.nan
    dss_build_ms: float = math.nan
    rtol: float = 0.0
    target_ms: float = math.nan
    target_ratio: float | None = None


def _calls(fn: Callable[[], object], n: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU time (this process, every thread) of ``n`` calls, ms each."""
    wall, cpu = [], []
    for _ in range(n):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return wall, cpu


#: The scenarios of one ``solve_batch`` call: DER outputs, load P and Q, ``(S, n)`` each.
Scenarios = tuple[np.ndarray, np.ndarray, np.ndarray]


def _recorded(engine: PowerFlow, request: EnvelopeRequest) -> list[Scenarios]:
    """Every batch of scenarios one ``certify_envelope`` call solves (the operating point's source voltage: the
    benchmark's feeders carry it, so no call passes one)."""
    seen: list[Scenarios] = []
    solve_batch = engine.solve_batch

    def record(der_p_w: Any, **kwargs: Any) -> FlowResult:
        if kwargs.get("source_v_pu") is not None or kwargs.get("load_p_w") is None:
            raise ValueError("the replay expects the worst-case loads and no source override")
        seen.append((np.asarray(der_p_w), np.asarray(kwargs["load_p_w"]), np.asarray(kwargs["load_q_var"])))
        return solve_batch(der_p_w, **kwargs)

    engine.solve_batch = record  # type: ignore[method-assign]  # shadows the method for this one call
    try:
        certify_envelope(engine, request)
    finally:
        del engine.solve_batch
    return seen


def _median(values: list[float]) -> float:
    return statistics.median(values)


class _Contenders:
    """Ours and the reference on one case, each figure a zero-argument call."""

    def __init__(self, case: Case) -> None:
        start = time.perf_counter()
        self.engine = PowerFlow(case.feeder)
        self.build_ms = (time.perf_counter() - start) * 1e3
        self.newton = PowerFlow(case.feeder, FlowOptions(method="newton_raphson"))
        start = time.perf_counter()
        self.dss = OpenDssFeeder(case.feeder, case.master)
        self.dss_build_ms = (time.perf_counter() - start) * 1e3
        self.case = case
        self.problem: Problem = case.problem()
        self.levels = (0.0, 0.0)
        self._flip = False
        self.scenarios: list[Scenarios] = []

    def answers(self) -> tuple[EnvelopeResult, EnvelopeResult, float, float, int]:
        ours = certify_envelope(self.engine, self.case.request)
        newton = certify_envelope(self.newton, self.case.request)
        self.scenarios = _recorded(self.engine, self.case.request)
        export, import_ = self.dss.envelope(self.problem)
        # the single power flows alternate between two export levels below the limit (OpenDSS warm-starts)
        level = export.level_w if math.isfinite(export.level_w) else 0.1 * float(self.problem.rating_w.max())
        self.levels = (0.8 * level, 0.9 * level)
        return ours, newton, export.level_w, import_.level_w, export.solves + import_.solves

    def _level(self) -> np.ndarray:
        self._flip = not self._flip
        return np.minimum(self.levels[self._flip], self.problem.rating_w)

    def our_flow(self) -> None:
        p, q = self.problem.load_p_w[:1], self.problem.load_q_var[:1]
        self.engine.solve_batch(self._level()[None], load_p_w=p, load_q_var=q)

    def dss_flow(self) -> None:
        self.dss.set_ders(self._level())
        self.dss.voltages()

    def dss_flow_setup(self) -> None:
        self.dss.set_loads(self.problem.load_p_w[0], self.problem.load_q_var[0])

    def our_envelope(self) -> None:
        certify_envelope(self.engine, self.case.request)

    def dss_envelope(self) -> None:
        self.dss.envelope(self.problem)

    def our_cycle(self) -> None:
        self.engine.solve()
        certify_envelope(self.engine, self.case.request)

    def newton_cycle(self) -> None:
        self.newton.solve()
        certify_envelope(self.newton, self.case.request)

    def dss_replay(self) -> None:
        self.dss.replay(self.scenarios, self.problem)

    def dss_cycle(self) -> None:
        self.dss.operating_point()
        self.dss.envelope(self.problem)


def bench_case(case: Case, s: Settings, step: Callable[[str], None]) -> Figures:
    step(f"{case.name}: building both engines ({case.source})")
    c = _Contenders(case)
    ours, newton, dss_export, dss_import, dss_solves = c.answers()
    cert = ours.certificate
    fig = Figures(case.name, case.source, export_w=float(ours.export_w.max()), import_w=float(ours.import_w.max()),
                  dss_export_w=float(np.minimum(dss_export, c.problem.rating_w).max()),
                  dss_import_w=float(np.minimum(dss_import, c.problem.rating_w).max()),
                  newton_export_w=float(newton.export_w.max()),
                  newton_import_w=float(newton.import_w.max()), ac_solves=cert.ac_solves,
                  batches=cert.batches, dss_solves=dss_solves, certified=ours.certified,
                  binding=f"export: {cert.export.binding}; import: {cert.import_.binding}", build_ms=c.build_ms,
                  dss_build_ms=c.dss_build_ms, rtol=case.request.rtol, target_ms=case.target_ms,
                  target_ratio=case.target_ratio)
    scale = 1.0 if case.target_ratio is not None else 0.1  # the LV case is ten times heavier
    calls = {k: max(3, round(v * scale)) for k, v in s.calls.items()}
    pairs: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "flow": (c.our_flow, c.dss_flow), "envelope": (c.our_envelope, c.dss_envelope),
        "cycle": (c.our_cycle, c.dss_cycle),
    }
    for k in range(s.rounds):
        step(f"{case.name}: round {k + 1}/{s.rounds}")
        for name, (ours_fn, dss_fn) in pairs.items():
            if name == "flow":
                c.dss_flow_setup()
            ours_fn()  # settle caches after the other contender ran
            wall, cpu = _calls(ours_fn, calls[name])
            fig.ours.setdefault(name, []).extend(wall)
            fig.ours_cpu.setdefault(name, []).extend(cpu)
            dss_fn()
            wall, cpu = _calls(dss_fn, calls[name])
            fig.opendss.setdefault(name, []).extend(wall)
            fig.opendss_cpu.setdefault(name, []).extend(cpu)
        fig.newton_ms.extend(_calls(c.newton_cycle, calls["cycle"])[0])
        c.dss_replay()
        wall, cpu = _calls(c.dss_replay, calls["envelope"])
        fig.replay_ms.extend(wall)
        fig.replay_cpu.extend(cpu)
    return fig


def _ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def build_rows(figures: list[Figures]) -> list[Row]:
    rows: list[Row] = []
    for f in figures:
        ours = {k: _median(v) for k, v in f.ours.items()}
        ref = {k: _median(v) for k, v in f.opendss.items()}
        short = f.case.split(",")[0]
        rows.append(Row(f"{short}: one power flow", _ms(ours["flow"]), f"OpenDSS Solve {_ms(ref['flow'])}",
                        f"{ref['flow'] / ours['flow']:.2f}x faster", notes=[
                            "DER outputs changed between calls; ours: solve_batch of one scenario (every voltage, "
                            "loading, loss; loads start in the regimes the engine remembers); OpenDSS: set the DERs, "
                            "Solve (warm start from the previous solution), read every node voltage"]))
        rows.append(Row(f"{short}: certified envelope", _ms(ours["envelope"]),
                        f"OpenDSS bisection {_ms(ref['envelope'])}", f"{ref['envelope'] / ours['envelope']:.2f}x "
                        "faster", notes=[
                            f"AC solves: ours {f.ac_solves} in {f.batches} batches; OpenDSS {f.dss_solves} "
                            f"(export and import)", f"binding: {f.binding}"]))
        replay = _median(f.replay_ms)
        rows.append(Row(f"{short}: the same AC scenarios", _ms(ours["envelope"]),
                        f"OpenDSS one by one {_ms(replay)}", f"{replay / ours['envelope']:.2f}x faster", notes=[
                            f"OpenDSS solves and judges the {f.ac_solves} scenarios our envelope solved "
                            f"({replay / f.ac_solves * 1e3:.0f} us each; its bisection: "
                            f"{ref['envelope'] / f.dss_solves * 1e3:.0f} us each); CPU: ours "
                            f"{_ms(_median(f.ours_cpu['envelope']))}, OpenDSS {_ms(_median(f.replay_cpu))}"]))
        ratio = ref["cycle"] / ours["cycle"]
        row = Row(f"{short}: power flow + envelope", _ms(ours["cycle"]), f"OpenDSS {_ms(ref['cycle'])}",
                  f"{ratio:.2f}x faster", f"<= {f.target_ms:g} ms", ours["cycle"] <= f.target_ms and f.certified,
                  key=f"{short} cycle")
        spread = sorted(f.ours["cycle"])
        row.notes.append(f"ours: solve() at the operating point + certify_envelope; quartiles "
                         f"{_ms(spread[len(spread) // 4])} .. {_ms(spread[3 * len(spread) // 4])}; OpenDSS: solve "
                         "the operating point + bisect both directions")
        cpu, cpu_ref = _median(f.ours_cpu["cycle"]), _median(f.opendss_cpu["cycle"])
        row.notes.append(f"CPU time (process, all threads): ours {_ms(cpu)}, OpenDSS {_ms(cpu_ref)} "
                         f"({cpu_ref / cpu:.2f}x); envelope alone ours {_ms(_median(f.ours_cpu['envelope']))}, "
                         f"OpenDSS {_ms(_median(f.opendss_cpu['envelope']))}")
        newton = _median(f.newton_ms)
        row.notes.append(f"engine option FlowOptions(method='newton_raphson'): {_ms(newton)} "
                         f"({ref['cycle'] / newton:.2f}x faster than OpenDSS); its envelope differs from the "
                         f"default's by {_rel(f.newton_export_w, f.export_w):+.1e} (export), "
                         f"{_rel(f.newton_import_w, f.import_w):+.1e} (import)")
        row.notes.append(f"builds (not timed above): PowerFlow {f.build_ms:.1f} ms, OpenDSS compile "
                         f"{f.dss_build_ms:.0f} ms")
        rows.append(row)
        if f.target_ratio is not None:
            rows.append(Row(f"{short}: cycle vs OpenDSS bisection", f"{ratio:.2f}x faster",
                            f"OpenDSS {_ms(ref['cycle'])}", f"{ratio:.2f}x faster", f">= {f.target_ratio:g}x",
                            ratio >= f.target_ratio and f.certified, key=f"{short} cycle ratio", notes=[
                                f"the ratio of the row above; {f.target_ratio:g}x is "
                                f"{_ms(ref['cycle'] / f.target_ratio)} for ours",
                                f"floor of a cycle whose limits are certified and shown within rtol of the truth: "
                                f"the operating point, then per direction a passing and a failing AC solve = 5 "
                                f"solves: 5 OpenDSS Solves {_ms(5 * ref['flow'])}, 5 of our single power flows "
                                f"{_ms(5 * ours['flow'])} (the one-power-flow row, x5)"]))
        worst = max(abs(_rel(f.export_w, f.dss_export_w)), abs(_rel(f.import_w, f.dss_import_w)))
        rows.append(Row(f"{short}: envelope agreement", f"{f.export_w / 1e3:.3f} / {f.import_w / 1e3:.3f} kW",
                        f"OpenDSS {f.dss_export_w / 1e3:.3f} / {f.dss_import_w / 1e3:.3f} kW",
                        f"{_rel(f.export_w, f.dss_export_w):+.2%} / {_rel(f.import_w, f.dss_import_w):+.2%}",
                        f"|diff| <= {2 * f.rtol:.1%}", f.certified and worst <= 2 * f.rtol,
                        key=f"{short} agreement",
                        notes=[f"export / import per DER; feeder from {f.source}; certified: {f.certified}"]))
    return rows


def _rel(a: float, b: float) -> float:
    return a / b - 1.0 if b else math.nan


def _versions() -> str:
    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"Python {platform.python_version()}, power-grid-model {v('power-grid-model')}, dss-python "
            f"{v('dss-python')}, {os.cpu_count()} CPUs, load average {load}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    parser.add_argument("--pandapower", action="store_true",
                        help="use pandapower's copies of the feeders even when ../shared is present")
    parser.add_argument("--json", metavar="PATH", help="also write every timed call and answer as JSON")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    started = time.perf_counter()

    def step(what: str) -> None:
        print(f"[{time.perf_counter() - started:5.1f} s] {what}", file=sys.stderr, flush=True)

    figures = [bench_case(case, s, step) for case in cases(pandapower=args.pandapower)]
    rows = build_rows(figures)
    mode = "quick" if args.quick else "full"
    header = (f"gridedge feeder-twin benchmarks ({mode}: {s.rounds} rounds, medians of every call), {_versions()}; "
              f"took {time.perf_counter() - started:.0f} s")
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    if busy:
        header += ("\nwarning: the machine is busier than its CPUs (load average above the CPU count): wall-clock "
                   "figures are inflated by waiting for a CPU; the CPU-time notes are the steadier measure")
    print(render(rows, header))
    if args.json:
        data: dict[str, Any] = {
            "settings": asdict(s), "versions": _versions(), "cases": [asdict(f) for f in figures],
            "targets": targets_json(rows),
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
