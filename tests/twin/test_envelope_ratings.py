"""Thermal limits come from the model: an OpenDSS feeder (written here) whose line ``normamps`` or transformer
``kVA`` binds before any voltage does. The envelope matches the AC truth there, and OpenDSS itself, solving the
published envelope as an independent engine, sees no voltage or loading violation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.twin import EnvelopeRequest, Policy, PowerFlow, certify_envelope, load_feeder
from tests.twin._data import needs
from tests.twin._oracle import Rules, assert_matches_truth, opendss_solution, worst_loads

RULES = Rules()

DSS = """clear
set defaultbasefrequency=50
new circuit.ratings basekv=11 pu=1.0 phases=3 bus1=mv mvasc3=200 mvasc1=200
new transformer.tx phases=3 windings=2 buses=[mv lv] conns=[delta wye] kvs=[11 0.416] kvas=[{kva} {kva}]
~ xhl=4 %rs=[0.6 0.6]
new line.l1 bus1=lv bus2=n1 phases=3 r1=0.004 x1=0.002 r0=0.012 x0=0.006 c1=0 c0=0 units=none length=1 normamps={a1}
new line.l2 bus1=n1 bus2=n2 phases=3 r1=0.004 x1=0.002 r0=0.012 x0=0.006 c1=0 c0=0 units=none length=1 normamps={a2}
new load.h1 bus1=n1 phases=3 kv=0.416 kw=30 kvar=6 model=1
new load.h2 bus1=n2 phases=3 kv=0.416 kw=20 kvar=4 model=1
new generator.pv1 bus1=n1 phases=3 kv=0.416 kw=0 kva=120 pf=1 model=1
new generator.pv2 bus1=n2 phases=3 kv=0.416 kw=0 kva=120 pf=1 model=1
set voltagebases=[11 0.416]
calcvoltagebases
"""

CASES = {  # what binds: (transformer kVA, normamps of l1, normamps of l2), the element named
    "transformer": ((100, 1000, 1000), "loading of transformer transformer.tx"),
    "line": ((400, 400, 80), "loading of line line.l2"),
}


def write(tmp_path: Path, kva: float, a1: float, a2: float) -> Path:
    path = tmp_path / "ratings.dss"
    path.write_text(DSS.format(kva=kva, a1=a1, a2=a2))
    return path


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("policy", list(Policy))
def test_ratings_from_opendss_bind_and_opendss_agrees(tmp_path: Path, case: str, policy: Policy) -> None:
    needs("dss")
    (kva, a1, a2), element = CASES[case]
    path = write(tmp_path, kva, a1, a2)
    feeder = load_feeder(path)
    # The ratings are the model's: normamps and the transformer's kVA.
    np.testing.assert_array_equal(feeder.lines.i_rated_a, [a1, a2])
    np.testing.assert_array_equal(feeder.transformers.sn_va, [kva * 1e3])
    np.testing.assert_array_equal(feeder.ders.rating_w, [120e3, 120e3])
    engine = PowerFlow(feeder)
    result = certify_envelope(engine, EnvelopeRequest(policy=policy))
    cert = result.certificate
    assert result.certified
    for d in (cert.export, cert.import_):
        assert d.binding == element, f"{d.direction}: {d.binding}"
        assert d.max_loading == pytest.approx(RULES.max_loading - RULES.margin_loading, abs=0.003)
        assert RULES.vmin_pu + 0.01 < d.vmin_pu
        assert d.vmax_pu < RULES.vmax_pu - 0.01  # voltage is nowhere near binding
    if policy is not Policy.MAX_TOTAL:
        assert_matches_truth(engine, result, policy, feeder.loads.p_w, feeder.loads.q_var, None, RULES)
    # OpenDSS, an independent engine, at the published envelope: no violation, and the same loading.
    for direction, published, d in ((0, result.export_w, cert.export), (1, result.import_w, cert.import_)):
        p, q = worst_loads(feeder, feeder.loads.p_w, feeder.loads.q_var, RULES, direction)
        seen = opendss_solution(path, feeder, p, q, published, direction)
        assert RULES.vmin_pu <= seen["vmin"]
        assert seen["vmax"] <= RULES.vmax_pu
        assert max(seen["line"], seen["trafo"]) <= RULES.max_loading
        assert max(seen["line"], seen["trafo"]) == pytest.approx(d.max_loading, abs=2e-3)
