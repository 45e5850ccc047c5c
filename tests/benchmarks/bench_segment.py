"""The daemon's envelope cycle: the estimated operating point beside head-meter scaling, same run.

Run: ``.venv/bin/python -m tests.benchmarks.bench_segment [--quick]``.

Prints, per bundled feeder (Baran-Wu 33-bus with three 500 kW DERs; the IEEE European LV feeder with three 5 kW
inverters on phase b), from the readings of one true state (tests/test_segment.py), median milliseconds of:

- ``operating point``: making the point (``Segment.starting_point``): the state estimate(s) without their
  uncertainty and ``operating_point``, beside the reference, head-meter scaling (``operating_point =
  "head-meter"``: one multiplication, the cheapest point the segment makes);
- ``whole envelope cycle``: ``Segment.envelope`` (the point and the certified envelope), the same two side by side:
  what the estimate adds to a cycle;
- ``first estimate (cold)``: the first point of a fresh segment (it builds power-grid-model's estimation models,
  kept for the next cycles), one run, no reference;
- on the unbalanced feeder, ``... per-phase meter``: the same two figures when the head meter reports each phase
  (``Measurement.w_ph``/``var_ph``/``v_ph``: one estimate) rather than totals (two estimates, the phase split
  guessed from the first).

The first two are medians of 9 rounds (3 with ``--quick``); in every round the contenders take turns.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.segment import Segment, open_feeder


def _seconds(fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 9
    from tests.test_segment import BARAN_WU, EUROPEAN_LV, METER, config, per_phase_meter, states_of, truth_of

    print(f"{'feeder':<26} {'':<22} {'estimate':>10} {'head-meter':>11}")
    for site in (BARAN_WU, EUROPEAN_LV):
        feeder = open_feeder(site.feeder)
        fresh = Segment(config(site), feeder)
        truth = truth_of(fresh, site, seed=0)
        states = states_of(fresh, site, truth, seed=0)
        first = _seconds(fresh.starting_point, states)
        contenders = {"estimate": fresh, "head-meter": Segment(config(site, operating_point="head-meter"), feeder)}
        phased = None if fresh.engine.symmetric else states | {METER: per_phase_meter(fresh, truth, seed=0)[0]}
        point: dict[str, list[float]] = {k: [] for k in [*contenders, "per-phase"]}
        cycle: dict[str, list[float]] = {k: [] for k in [*contenders, "per-phase"]}
        for k in range(rounds):
            for name, seg in contenders.items():
                point[name].append(_seconds(seg.starting_point, states))
                cycle[name].append(_seconds(seg.envelope, states, now=0.0, sequence=k))
            if phased is not None:
                point["per-phase"].append(_seconds(fresh.starting_point, phased))
                cycle["per-phase"].append(_seconds(fresh.envelope, phased, now=0.0, sequence=k))
        used = fresh.last_operating_point
        if used is None or used.mode != "estimate":
            raise SystemExit(f"{site.feeder}: the estimate was not used: {used}")

        def ms(values: list[float]) -> str:
            return f"{1e3 * statistics.median(values):8.1f} ms"

        name = site.feeder.removeprefix("builtin:")
        print(f"{name:<26} {'operating point':<22} {ms(point['estimate']):>10} {ms(point['head-meter']):>11}")
        print(f"{'':<26} {'whole envelope cycle':<22} {ms(cycle['estimate']):>10} {ms(cycle['head-meter']):>11}")
        print(f"{'':<26} {'first estimate (cold)':<22} {1e3 * first:8.1f} ms")
        if phased is not None:
            print(f"{'':<26} {'point, per-phase meter':<22} {ms(point['per-phase']):>10}")
            print(f"{'':<26} {'cycle, per-phase meter':<22} {ms(cycle['per-phase']):>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
