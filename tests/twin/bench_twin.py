"""Power-flow timings of the twin beside anchors measured in the same run: ``python -m tests.twin.bench_twin``.

Feeders from ../shared/feeders (needs dss-python): Baran-Wu 33-bus with 10 DERs, IEEE European LV with a DER at
each of its 55 customers. Medians of ``time.perf_counter``. Anchors: power-grid-model's public API solving the
unreduced model once (no update), and OpenDSS re-solving the same feeder.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from gateway.twin import Ders, Feeder, FlowOptions, PowerFlow, load_feeder
from gateway.twin._pgm import pgm_layout
from tests.twin._data import FEEDERS


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def with_ders(feeder: Feeder, buses: np.ndarray, phases: np.ndarray, rating_w: float) -> Feeder:
    ders = Ders.create(name=[f"der{k}" for k in range(len(buses))], bus=buses, phase=phases,
                       rating_w=np.full(len(buses), rating_w))
    return dataclasses.replace(feeder, ders=ders)


def anchors(feeder: Feeder, master: str, repeat: int) -> str:
    import dss
    from power_grid_model import PowerGridModel

    layout = pgm_layout(feeder)
    data = dict(layout.input_data)
    model = PowerGridModel(data, system_frequency=feeder.frequency_hz)
    pgm = median_ms(lambda: model.calculate_power_flow(symmetric=layout.symmetric), repeat)
    ctx = dss.DSS.NewContext()
    ctx.AllowChangeDir = False
    ctx.Text.Command = f'compile "{master}"'
    solution = ctx.ActiveCircuit.Solution
    opendss = median_ms(solution.Solve, repeat)
    return f"anchors: PGM public API, unreduced, one solve {pgm:.3f} ms; OpenDSS re-solve {opendss:.3f} ms"


def bench(label: str, feeder: Feeder, master: str, sizes: tuple[int, ...], repeat: int) -> None:
    print(f"\n{label}: {len(feeder.buses)} buses, {len(feeder.ders)} DERs, "
          f"{'balanced' if feeder.balanced else 'unbalanced'}")
    print("  " + anchors(feeder, master, repeat))
    rng = np.random.default_rng(0)
    for method in ("newton_raphson", "iterative_current"):
        start = time.perf_counter()
        engine = PowerFlow(feeder, FlowOptions(method=method))
        build = (time.perf_counter() - start) * 1e3
        line = [f"  {method:<17} build {build:6.1f} ms | solve() {median_ms(engine.solve, repeat):.3f} ms"]
        for size in sizes:
            der = rng.uniform(-0.5, 1.0, (size, len(feeder.ders))) * feeder.ders.rating_w
            scale = rng.uniform(0.5, 1.5, size)
            ms = median_ms(lambda der=der, scale=scale, eng=engine: eng.solve_batch(der, load_scale=scale), repeat)
            line.append(f"S={size}: {ms:.3f} ms ({ms / size * 1e3:.0f} us/scenario)")
        envelope = [rng.uniform(-0.5, 1.0, (15, len(feeder.ders))) * feeder.ders.rating_w for _ in range(3)]

        def workload(engine: PowerFlow = engine, batches: list[np.ndarray] = envelope) -> None:
            engine.solve()
            for der in batches:
                engine.solve_batch(der)

        line.append(f"1 solve + 3 x 15: {median_ms(workload, repeat):.2f} ms")
        print(" | ".join(line))


def main() -> int:
    if not FEEDERS.is_dir():
        print("../shared/feeders is not present", file=sys.stderr)
        return 1
    case33 = str(FEEDERS / "baran-wu-33" / "case33bw.dss")
    eulv = str(FEEDERS / "ieee-european-lv" / "Master.dss")
    b33 = load_feeder(case33)
    buses = np.linspace(3, 32, 10).astype(np.int32)
    bench("Baran-Wu 33-bus", with_ders(b33, buses, np.zeros(10, dtype=np.int8), 300e3), case33, (1, 10, 20, 100),
          300)
    eu = load_feeder(eulv)
    bench("IEEE European LV", with_ders(eu, eu.loads.bus, eu.loads.phase, 5e3), eulv, (1, 10, 20), 30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
