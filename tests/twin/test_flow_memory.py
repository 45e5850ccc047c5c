"""The engine's regime memory (a speed-up only): a batch like one solved before starts from the load regimes that
batch settled on, so it needs fewer passes; and no answer depends on what the engine solved before."""

from __future__ import annotations

import numpy as np

from gateway.twin import PowerFlow
from tests.twin._data import small_feeder
from tests.twin.test_flow import assert_same, scenarios


def far_from_base(rating: np.ndarray) -> dict[str, np.ndarray]:
    """Export at a high source voltage and low load (loads above vmaxpu), and import at a low source voltage
    and high load (loads below vminpu): every scenario leaves the base case's regimes."""
    return {"der_p_w": np.outer([1.0, 0.8, -1.0, -0.8], rating), "source_v_pu": np.array([1.06, 1.06, 0.97, 0.97]),
            "load_scale": np.array([0.2, 0.3, 3.0, 2.8])}


def test_a_batch_like_one_solved_before_settles_in_one_pass() -> None:
    feeder = small_feeder()
    engine = PowerFlow(feeder)
    kwargs = far_from_base(feeder.ders.rating_w)
    first = engine.solve_batch(**kwargs)
    assert first.converged.all()
    assert first.load_passes > 1
    again = engine.solve_batch(**kwargs)
    assert again.load_passes == 1
    assert_same(again, first)
    nearby = {**kwargs, "der_p_w": kwargs["der_p_w"] * 0.98}
    assert engine.solve_batch(**nearby).load_passes == 1
    assert_same(engine.solve_batch(**nearby), PowerFlow(feeder).solve_batch(**nearby))


def test_answers_do_not_depend_on_what_the_engine_solved_before() -> None:
    feeder = small_feeder()
    kwargs = scenarios(feeder, 12)  # random: loads in every regime
    fresh = PowerFlow(feeder).solve_batch(**kwargs)
    primed = PowerFlow(feeder)
    primed.solve_batch(**far_from_base(feeder.ders.rating_w))
    for seed in (2, 3, 4):
        primed.solve_batch(**scenarios(feeder, 12, seed))
    assert_same(primed.solve_batch(**kwargs), fresh)
    assert_same(primed.solve(), PowerFlow(feeder).solve(), atol=0, rtol=0)
