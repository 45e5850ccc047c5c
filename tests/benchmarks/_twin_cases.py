"""The twin benchmark's two cases: the feeders with their DERs, the operating point and the envelope problem.

Owns :class:`Case` and :func:`cases`. The feeders come from ../shared/feeders (the OpenDSS masters, compiled by the
twin's importer and, for the reference, by OpenDSS itself) or, on a fresh clone without ../shared (or with
``pandapower=True``), from pandapower's copies (``case33bw()``, ``ieee_european_lv_asymmetric("on_peak_566")``),
which the reference then compiles from :func:`tests.benchmarks._twin_opendss.dss_commands`.

- Baran-Wu 33-bus, balanced, 12.66 kV: 10 three-phase DERs of 300 kW spread along the feeder (buses 3, 6, 9, 12,
  16, 19, 22, 25, 29, 32); source at 1.03 pu; limits 0.90-1.05 pu (the published case sits at 0.913 pu with no
  DER, so 0.95 pu would leave no import room at 120 % load).
- IEEE European LV, unbalanced, 0.416 kV: a 10 kW DER on each of the 55 customers' phases; source at 1.02 pu (the
  model's 1.05 pu leaves no export room under a 1.05 pu limit); ANSI limits 0.95-1.05 pu. (pandapower's copy
  carries the on-peak load snapshot, heavier and less even than the OpenDSS model's 1 kW customers: at 1.02 pu it
  leaves only ~40 W of import room per customer.)

Both: equal policy, the default margins and load bound (20 %-120 % of the operating point), relative tolerance
0.2 %. The operating point is the feeder's nominal loads at that source voltage, built into the feeder, so that
``PowerFlow.solve()`` is the operating point's power flow and the envelope needs no source override.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.twin import Criteria, EnvelopeRequest, Feeder, Phase, Policy, from_pandapower, load_feeder, with_ders
from gateway.twin._criteria import resolve
from tests.benchmarks._twin_opendss import Problem
from tests.shared_data import SHARED

FEEDERS = SHARED / "feeders"


@dataclass(frozen=True, slots=True)
class Case:
    """A benchmark case: the feeder (DERs and operating source voltage included), where it came from, the OpenDSS
    master the reference compiles (None: written from the feeder), the envelope request and targets."""

    name: str
    feeder: Feeder
    source: str
    master: Path | None
    request: EnvelopeRequest
    target_ms: float
    target_ratio: float | None  # ours at least this many times faster than the OpenDSS bisection (None: no target)

    def problem(self) -> Problem:
        """The envelope problem exactly as ``certify_envelope`` resolves it (limits, margins, worst-case loads)."""
        check = resolve(self.request.criteria, self.feeder)
        return Problem(check.v_low, check.v_high, check.loading_high, check.load_p_w, check.load_q_var,
                       self.feeder.ders.rating_w, self.request.rtol)


def _at_source(feeder: Feeder, v_pu: float) -> Feeder:
    return dataclasses.replace(feeder, source=dataclasses.replace(feeder.source, v_pu=v_pu))


def baran_wu(*, pandapower: bool) -> Case:
    master = FEEDERS / "baran-wu-33" / "case33bw.dss"
    if pandapower or not master.is_file():
        import pandapower.networks as pn

        feeder, source, master_used = from_pandapower(pn.case33bw()), "pandapower case33bw()", None
    else:
        feeder, source, master_used = load_feeder(master), f"../shared/{master.relative_to(SHARED)}", master
    buses = np.array([3, 6, 9, 12, 16, 19, 22, 25, 29, 32])
    fed = with_ders(_at_source(feeder, 1.03), [f"pv{b}" for b in buses], buses, rating_w=np.full(10, 300e3))
    request = EnvelopeRequest(policy=Policy.EQUAL, criteria=Criteria(vmin_pu=0.90, vmax_pu=1.05))
    return Case("Baran-Wu 33-bus, 10 DERs", fed, source, master_used, request, 1.5, 10.0)


def european_lv(*, pandapower: bool) -> Case:
    master = FEEDERS / "ieee-european-lv" / "Master.dss"
    if pandapower or not master.is_file():
        import pandapower.networks as pn

        net = pn.ieee_european_lv_asymmetric("on_peak_566")
        feeder, source, master_used = from_pandapower(net), "pandapower ieee_european_lv_asymmetric", None
    else:
        feeder, source, master_used = load_feeder(master), f"../shared/{master.relative_to(SHARED)}", master
    loads = feeder.loads
    if (loads.phase == Phase.ABC).any():
        raise ValueError("the European LV case expects single-phase customers")
    n = len(loads)
    fed = with_ders(_at_source(feeder, 1.02), [f"pv{k}" for k in range(n)], loads.bus, phase=loads.phase,
                    rating_w=np.full(n, 10e3))
    request = EnvelopeRequest(policy=Policy.EQUAL, criteria=Criteria(vmin_pu=0.95, vmax_pu=1.05))
    return Case(f"IEEE European LV, {n} DERs", fed, source, master_used, request, 20.0, None)


def cases(*, pandapower: bool = False) -> list[Case]:
    return [baran_wu(pandapower=pandapower), european_lv(pandapower=pandapower)]
