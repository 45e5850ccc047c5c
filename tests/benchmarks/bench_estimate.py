"""State-estimation benchmark: our estimate with its uncertainty beside pandapower's WLS estimate, same run.

Run: ``.venv/bin/python -m tests.benchmarks.bench_estimate [--quick]``.

Figures (medians; in every round the contenders take turns, so machine noise falls on both alike):

* Baran-Wu 33-bus with three DERs, one scenario (every DER's P/Q, the head meter, priors on the 32 loads):
  ``StateEstimator.estimate`` (the estimate and every output's 1-sigma: 1 + m power-grid-model estimates)
  beside pandapower's WLS estimator (``pandapower.estimation.estimate``, the estimate only) given the same
  readings and weights; with the largest voltage difference between the two (they solve the same problem);
* the same per scenario in a batch of 100;
* the IEEE European LV feeder (asymmetric; pandapower has no asymmetric estimator): ours per scenario in a batch
  of 8, and how many PGM estimates one scenario takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gateway.twin import StateEstimator, from_pandapower


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 9
    warnings.filterwarnings("ignore", module="pandapower")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import pandapower as pp
    import pandapower.networks as networks
    from pandapower.estimation import estimate
    from pandas.errors import SettingWithCopyWarning

    warnings.filterwarnings("ignore", category=SettingWithCopyWarning)
    from tests.twin._estimate_data import readings, to_pandapower
    from tests.twin.test_estimate import draw

    def baran_wu() -> Any:
        net = networks.case33bw()
        for bus, name in ((17, "pv18"), (24, "pv25"), (32, "pv33")):
            pp.create_sgen(net, bus=bus, p_mw=0.0, sn_mva=0.5, name=name)
        return net

    feeder = from_pandapower(baran_wu())
    truth, priors, rng = draw(feeder, 1, seed=1)
    m = readings(feeder, truth, rng, der_v=False)
    estimator = StateEstimator(feeder, priors=priors)
    net = baran_wu()
    to_pandapower(net, feeder, m, priors.p, priors.q)
    ours_ms: list[float] = []
    theirs_ms: list[float] = []
    for _ in range(rounds):
        ours_ms.append(_median_ms(lambda: estimator.estimate(m), 1))
        theirs_ms.append(_median_ms(lambda: estimate(net, algorithm="wls", init="flat", tolerance=1e-10), 1))
    est = estimator.estimate(m)
    gap = float(np.abs(net.res_bus_est.vm_pu.to_numpy() - est.v_pu[0, :, 0]).max())
    truth100, priors100, rng100 = draw(feeder, 100, seed=2)
    m100 = readings(feeder, truth100, rng100, der_v=False)
    batch = StateEstimator(feeder, priors=priors100)
    per_scenario = _median_ms(lambda: batch.estimate(m100), max(1, rounds // 3)) / 100
    print(f"Baran-Wu 33-bus, 3 DERs, one scenario ({int(est.readings[0])} readings):")
    print(f"  ours, estimate + 1-sigma of every output: {statistics.median(ours_ms):8.2f} ms")
    print(f"  pandapower WLS, estimate only:            {statistics.median(theirs_ms):8.2f} ms")
    print(f"  largest voltage difference:               {gap:8.1e} pu")
    print(f"  ours per scenario in a batch of 100:      {per_scenario:8.2f} ms")

    lv_net = networks.ieee_european_lv_asymmetric("on_peak_566")
    bus = lv_net.asymmetric_load.bus.to_numpy()
    pp.create_asymmetric_sgen(lv_net, bus=bus[5], p_a_mw=0.004, sn_mva=0.005, name="pv_a")
    pp.create_asymmetric_sgen(lv_net, bus=bus[20], p_b_mw=0.004, sn_mva=0.005, name="pv_b")
    pp.create_sgen(lv_net, bus=bus[40], p_mw=0.01, sn_mva=0.01, name="pv_abc")
    lv = from_pandapower(lv_net)
    truth_lv, priors_lv, rng_lv = draw(lv, 8, seed=3)
    m_lv = readings(lv, truth_lv, rng_lv)
    lv_estimator = StateEstimator(lv, priors=priors_lv)
    lv_est = lv_estimator.estimate(m_lv)
    lv_ms = _median_ms(lambda: lv_estimator.estimate(m_lv), max(1, rounds // 3)) / 8
    print("IEEE European LV (asymmetric, 55 loads, 3 DERs with voltages), per scenario in a batch of 8:")
    print(f"  ours, estimate + 1-sigma of every output: {lv_ms:8.1f} ms "
          f"({int(lv_est.readings[0]) + 1} PGM estimates per scenario)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
