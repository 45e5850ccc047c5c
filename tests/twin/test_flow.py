"""The power-flow engine on a hand-made feeder: batches, OpenDSS load semantics, reduction, failures, shapes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gateway.twin import Feeder, FlowOptions, FlowResult, LoadModel, Phase, PowerFlow, Regime, ScenarioError
from tests.twin._data import opendss_factor, small_feeder

SQRT3 = np.sqrt(3.0)
FIELDS = ("converged", "v_pu", "vmin_pu", "vmax_pu", "vmin_bus", "vmax_bus", "line_loading", "trafo_loading",
          "max_loading", "losses_w", "source_p_w", "source_q_var", "source_p_ph_w", "source_q_ph_var")


def scenarios(feeder: Feeder, size: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_der, n_load = len(feeder.ders), len(feeder.loads)
    return {
        "der_p_w": rng.uniform(-0.5, 1.0, (size, n_der)) * feeder.ders.rating_w,
        "der_q_var": rng.uniform(-0.3, 0.3, (size, n_der)) * feeder.ders.rating_w,
        "load_scale": rng.uniform(0.0, 2.5, (size, n_load)),
        "source_v_pu": rng.uniform(0.97, 1.06, size),
    }


def row(kwargs: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    return {key: value[k : k + 1] for key, value in kwargs.items()}


def assert_same(a: FlowResult, b: FlowResult, atol: float = 1e-10, rtol: float = 1e-9) -> None:
    """Voltages and loadings to ``atol``; powers (W) to ``rtol``."""
    for name in FIELDS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, rtol=rtol, err_msg=name)


@pytest.mark.parametrize("unbalanced", [True, False], ids=["unbalanced", "balanced"])
def test_a_batch_equals_its_scenarios_solved_one_by_one(unbalanced: bool) -> None:
    feeder = small_feeder(unbalanced=unbalanced)
    engine = PowerFlow(feeder)
    assert engine.symmetric is not unbalanced
    kwargs = scenarios(feeder, 12)
    batch = engine.solve_batch(**kwargs)
    assert batch.converged.all()
    for k in range(12):
        one = engine.solve_batch(**row(kwargs, k))
        for name in FIELDS:
            np.testing.assert_allclose(getattr(batch, name)[k], getattr(one, name)[0], atol=1e-10, rtol=1e-9,
                                       err_msg=f"{name} of scenario {k}")


def test_shapes_and_units() -> None:
    feeder = small_feeder()
    res = PowerFlow(feeder).solve_batch(**scenarios(feeder, 5))
    n_bus, n_line = len(feeder.buses), len(feeder.lines)
    assert res.scenarios == 5
    assert res.v_pu.shape == (5, n_bus, 3)
    assert res.line_loading.shape == (5, n_line)
    assert res.trafo_loading.shape == (5, 1)
    for name in ("vmin_pu", "vmax_pu", "max_loading", "losses_w", "source_p_w", "source_q_var", "vmin_bus"):
        assert getattr(res, name).shape == (5,)
    assert res.source_p_ph_w.shape == res.source_q_ph_var.shape == (5, 3)
    np.testing.assert_allclose(res.source_p_ph_w.sum(axis=1), res.source_p_w, rtol=1e-12)
    np.testing.assert_allclose(res.source_q_ph_var.sum(axis=1), res.source_q_var, rtol=1e-12)
    np.testing.assert_array_equal(res.vmax_pu, res.v_pu.max(axis=(1, 2)))
    np.testing.assert_array_equal(res.vmin_pu, res.v_pu.min(axis=(1, 2)))
    np.testing.assert_array_equal(res.v_pu[np.arange(5), res.vmin_bus].min(axis=1), res.vmin_pu)
    np.testing.assert_array_equal(res.max_loading, np.maximum(res.line_loading.max(axis=1), res.trafo_loading[:, 0]))
    assert (res.losses_w > 0).all()


def test_losses_balance_the_power_for_constant_power_loads() -> None:
    feeder = small_feeder(banded=False)
    engine = PowerFlow(feeder)
    kwargs = scenarios(feeder, 6)
    del kwargs["source_v_pu"]
    res = engine.solve_batch(**kwargs)
    consumed = (kwargs["load_scale"] * feeder.loads.p_w).sum(axis=1)
    np.testing.assert_allclose(res.source_p_w + kwargs["der_p_w"].sum(axis=1) - consumed, res.losses_w,
                               rtol=1e-6, atol=1e-3)


def test_line_loading_is_the_worst_phase_current_over_the_rating() -> None:
    feeder = small_feeder(banded=False)
    fed = dataclasses.replace(feeder, lines=dataclasses.replace(feeder.lines, i_rated_a=np.full(len(feeder.lines),
                                                                                                 100.0)))
    a = PowerFlow(feeder).solve()
    b = PowerFlow(fed).solve()
    np.testing.assert_allclose(b.line_loading, a.line_loading * 2.0, rtol=1e-12)
    dead_end = list(feeder.buses.name).index("n5")
    feeding_n5 = int(np.flatnonzero(feeder.lines.to_bus == dead_end)[0])
    assert a.line_loading[0, feeding_n5] == 0.0  # nothing at n5: no current


def test_solve_is_nominal_loads_and_ders_at_zero() -> None:
    feeder = small_feeder()
    engine = PowerFlow(feeder)
    assert_same(engine.solve(), engine.solve_batch(np.zeros((1, len(feeder.ders)))), atol=0, rtol=0)
    assert_same(engine.solve(), engine.solve_batch(np.zeros((1, 3)), load_p_w=feeder.loads.p_w[None],
                                                   load_q_var=feeder.loads.q_var[None], load_scale=np.ones(1)))


def test_load_scale_per_scenario_equals_absolute_loads() -> None:
    feeder = small_feeder()
    engine = PowerFlow(feeder)
    scale = np.array([0.5, 1.0, 2.0])
    der = np.zeros((3, 3))
    assert_same(engine.solve_batch(der, load_scale=scale),
                engine.solve_batch(der, load_p_w=np.outer(scale, feeder.loads.p_w),
                                   load_q_var=np.outer(scale, feeder.loads.q_var)))


@pytest.mark.parametrize("unbalanced", [True, False], ids=["unbalanced", "balanced"])
def test_the_reduced_model_gives_the_full_models_answer(unbalanced: bool) -> None:
    feeder = small_feeder(unbalanced=unbalanced)
    reduced, full = PowerFlow(feeder), PowerFlow(feeder, FlowOptions(reduce=False))
    assert reduced.reduction is not None
    assert len(reduced.reduction.feeder.buses) < len(feeder.buses)
    kwargs = scenarios(feeder, 8)
    assert_same(reduced.solve_batch(**kwargs), full.solve_batch(**kwargs), atol=1e-9)


def test_the_fast_path_and_the_public_api_agree() -> None:
    feeder = small_feeder()
    kwargs = scenarios(feeder, 7)
    fast, public = PowerFlow(feeder), PowerFlow(feeder, FlowOptions(fast_path=False))
    assert_same(fast.solve_batch(**kwargs), public.solve_batch(**kwargs), atol=0, rtol=0)


def test_iterative_current_agrees_with_newton_raphson() -> None:
    feeder = small_feeder()
    kwargs = scenarios(feeder, 4)
    nr, ic = PowerFlow(feeder), PowerFlow(feeder, FlowOptions(method="iterative_current"))
    assert_same(nr.solve_batch(**kwargs), ic.solve_batch(**kwargs), atol=1e-7, rtol=1e-7)


def _reference_by_fixed_point(feeder: Feeder, der_p_w: np.ndarray, source_v_pu: float,
                              load_scale: float) -> np.ndarray:
    """Voltages found by iterating constant-power solves, each load drawing its OpenDSS characteristic at the
    voltage of the previous solve, until nothing moves: the semantics checked independently of the regimes."""
    plain = dataclasses.replace(feeder, loads=dataclasses.replace(
        feeder.loads, model=np.full(len(feeder.loads), LoadModel.PQ), vmin_pu=np.full(len(feeder.loads), np.nan),
        vmax_pu=np.full(len(feeder.loads), np.nan), vlow_pu=np.full(len(feeder.loads), np.nan)))
    engine = PowerFlow(plain)
    loads = feeder.loads
    bus_ln = feeder.buses.u_rated_v[loads.bus] / SQRT3
    single = loads.phase != Phase.ABC
    k = bus_ln / np.where(single, loads.u_rated_v, loads.u_rated_v / SQRT3)
    p0, q0 = loads.p_w * load_scale, loads.q_var * load_scale
    factor = np.ones(len(loads))
    for _ in range(200):
        res = engine.solve_batch(der_p_w[None], load_p_w=(p0 * factor)[None], load_q_var=(q0 * factor)[None],
                                 source_v_pu=np.array([source_v_pu]))
        phase = np.where(single, loads.phase - 1, 0)
        v_load = res.v_pu[0, loads.bus, phase] * k
        new = np.array([opendss_factor(m, v, a, b, c) for m, v, a, b, c in zip(
            loads.model, v_load, loads.vmin_pu, loads.vmax_pu, loads.vlow_pu, strict=True)])
        if np.abs(new - factor).max() < 1e-13:
            settled: np.ndarray = res.v_pu[0]
            return settled
        factor = new
    raise AssertionError("the fixed point did not settle")


@pytest.mark.parametrize("unbalanced", [True, False], ids=["unbalanced", "balanced"])
@pytest.mark.parametrize(("source_v_pu", "der_share", "load_scale"), [
    (1.06, 1.0, 0.2),   # export at a high source voltage: loads above vmaxpu (constant impedance)
    (1.0, 0.0, 1.0),    # the base case: constant power
    (0.97, -1.0, 3.0),  # heavy import at a low source: loads below vminpu (falling current)
    (1.04, 0.3, 1.5),   # a mix: some loads in each regime
], ids=["high", "band", "low", "mixed"])
def test_opendss_load_semantics_match_an_independent_fixed_point(unbalanced: bool, source_v_pu: float,
                                                                  der_share: float, load_scale: float) -> None:
    feeder = small_feeder(unbalanced=unbalanced)
    der = feeder.ders.rating_w * der_share
    expected = _reference_by_fixed_point(feeder, der, source_v_pu, load_scale)
    res = PowerFlow(feeder).solve_batch(der[None], source_v_pu=np.array([source_v_pu]),
                                        load_scale=np.array([load_scale]))
    np.testing.assert_allclose(res.v_pu[0], expected, atol=1e-9, rtol=0)


def test_regimes_change_between_passes_and_each_scenario_settles() -> None:
    feeder = small_feeder()
    engine = PowerFlow(feeder)
    assert (engine._base_regime[feeder.loads.phase != Phase.ABC] >= Regime.BAND).all()
    kwargs = {"der_p_w": np.outer([1.0, 0.0, -1.0], feeder.ders.rating_w), "source_v_pu": np.array([1.06, 1.0, 0.97]),
              "load_scale": np.array([0.2, 1.0, 3.0])}
    res = engine.solve_batch(**kwargs)
    assert res.load_passes > 1
    for k in range(3):
        np.testing.assert_allclose(res.v_pu[k], engine.solve_batch(**row(kwargs, k)).v_pu[0], atol=1e-10)


def test_a_scenario_that_does_not_converge_is_nan_and_the_others_are_kept() -> None:
    feeder = small_feeder(banded=False)  # constant power at any voltage: 100 times the load has no solution
    engine = PowerFlow(feeder)
    res = engine.solve_batch(np.zeros((3, 3)), load_scale=np.array([1.0, 100.0, 1.0]))
    assert res.converged.tolist() == [True, False, True]
    assert np.isnan(res.v_pu[1]).all()
    assert np.isnan(res.vmax_pu[1])
    assert np.isnan(res.losses_w[1])
    assert res.vmin_bus[1] == -1
    np.testing.assert_allclose(res.v_pu[0], engine.solve().v_pu[0], atol=1e-12)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"der_p_w": np.zeros(3)}, "der_p_w: expected shape (S, 3)"),
    ({"der_p_w": np.zeros((2, 4))}, "der_p_w: expected shape (S, 3)"),
    ({"der_p_w": np.full((2, 3), np.nan)}, "finite"),
    ({"der_p_w": np.zeros((2, 3)), "der_q_var": np.zeros((3, 3))}, "der_q_var: expected shape (2, 3)"),
    ({"der_p_w": np.zeros((2, 3)), "load_scale": np.ones(3)}, "load_scale"),
    ({"der_p_w": np.zeros((2, 3)), "load_p_w": np.ones((2, 2))}, "load_p_w"),
    ({"der_p_w": np.zeros((2, 3)), "source_v_pu": np.ones(3)}, "source_v_pu"),
])
def test_scenario_arrays_of_the_wrong_shape_are_refused(kwargs: dict[str, np.ndarray], message: str) -> None:
    engine = PowerFlow(small_feeder())
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.solve_batch(**kwargs)


def test_a_feeder_without_loads_or_ders_solves() -> None:
    feeder = small_feeder()
    bare = dataclasses.replace(feeder, loads=dataclasses.replace(feeder.loads, p_w=np.zeros(6), q_var=np.zeros(6)))
    res = PowerFlow(bare).solve()
    assert res.converged[0]
    assert res.losses_w[0] == pytest.approx(0.0, abs=1e-6)


def test_iterative_current_falls_back_to_newton_where_it_does_not_converge() -> None:
    feeder = small_feeder(banded=False)  # at 13 times the load, near collapse: only Newton-Raphson converges
    kwargs = {"der_p_w": np.zeros((2, 3)), "load_scale": np.array([1.0, 13.0])}
    ic = PowerFlow(feeder, FlowOptions(method="iterative_current"))
    alone = PowerFlow(feeder, FlowOptions(method="iterative_current"))
    alone._newton_fallback = lambda index, failed, *args: failed  # type: ignore[method-assign]
    assert alone.solve_batch(**kwargs).converged.tolist() == [True, False]
    res = ic.solve_batch(**kwargs)
    assert res.converged.all()
    assert_same(res, PowerFlow(feeder).solve_batch(**kwargs), atol=1e-7, rtol=1e-7)
