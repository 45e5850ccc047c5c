"""The power-grid-model adapter: a feeder as PGM input, and a runner that re-solves batches on reused buffers.

Owns every contact with power-grid-model. :func:`pgm_layout` maps a :class:`Feeder` onto PGM components (ids,
input arrays); :class:`Runner` holds the ``PowerGridModel`` (built once) and, per batch size, a
:class:`Workspace` of preallocated columnar update and output arrays that every solve of that size reuses.

Each feeder load becomes up to three PGM loads (constant power, constant current, constant impedance: the ZIP
pieces of :mod:`gateway.twin._loadmodel` it uses); each DER a constant-power generator. Unbalanced feeders use
``asym_*`` components and the asymmetric (three-phase) calculation, balanced ones ``sym_*`` and the symmetric one.

Speed: the public ``calculate_power_flow`` rebuilds its C dataset views and output arrays on every call
(~0.3 ms, twice a 33-bus Newton solve). When power-grid-model 1.12's internals are importable the runner builds
those views once per workspace and calls the core directly; otherwise it falls back to the public call. Both
paths give bit-identical results (tested).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from power_grid_model import (
    CalculationMethod,
    CalculationType,
    ComponentType,
    DatasetType,
    LoadGenType,
    PowerGridModel,
    initialize_array,
)
from power_grid_model.errors import (  # type: ignore[attr-defined]  # re-exported without __all__
    PowerGridBatchError,
    PowerGridError,
)

from gateway.twin._errors import FeederError, FeederIssue, PowerFlowError
from gateway.twin._feeder import FLOAT, INDEX, Feeder, Phase
from gateway.twin._loadmodel import coefficients

try:  # power-grid-model internals: the fast path (see the module docstring)
    from power_grid_model._core.data_handling import (
        create_output_data,
        prepare_output_view,
        prepare_update_view,
    )
    from power_grid_model._core.error_handling import handle_errors
    from power_grid_model._core.options import Options
    from power_grid_model._core.power_grid_core import ConstDatasetPtr, get_power_grid_core

    FAST_PATH_AVAILABLE = True
except ImportError:  # pragma: no cover - another power-grid-model version
    FAST_PATH_AVAILABLE = False

SQRT3 = float(np.sqrt(3.0))
#: The tolerance of iterative current, relative to Newton-Raphson's: with it the two agree to ~1e-11 pu on the
#: Baran-Wu and European LV feeders (at the same tolerance, ~1e-9 pu: converged, but not to Newton's digits).
ITERATIVE_TIGHTER = 0.01
#: The load blocks, in order, each ``n_load`` PGM loads long.
LOAD_BLOCKS = (LoadGenType.const_power, LoadGenType.const_current, LoadGenType.const_impedance)


@dataclass(frozen=True, slots=True)
class PgmLayout:
    """Where each feeder element sits in the PGM model. ``input_data`` is PGM input (row-based arrays).

    ``load_blocks[b]`` lists the feeder loads that have a PGM load of type ``LOAD_BLOCKS[b]`` (constant power,
    current, impedance), in PGM order, blocks one after the other; ``load_id`` the PGM ids in that order. A load
    gets only the pieces its voltage characteristic can use. ``load_share``/``der_share`` ``(n, 3)`` split a
    load's or DER's power over phases a, b, c.
    """

    symmetric: bool
    node_id: NDArray[np.int32]
    line_id: NDArray[np.int32]
    transformer_id: NDArray[np.int32]
    source_id: int
    load_blocks: tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]
    load_id: NDArray[np.int32]
    gen_id: NDArray[np.int32]
    load_share: NDArray[np.float64]
    der_share: NDArray[np.float64]
    input_data: dict[str, NDArray[Any]]

    @property
    def load_type(self) -> str:
        return ComponentType.sym_load if self.symmetric else ComponentType.asym_load

    @property
    def gen_type(self) -> str:
        return ComponentType.sym_gen if self.symmetric else ComponentType.asym_gen


def phase_share(phase: NDArray[np.int8]) -> NDArray[np.float64]:
    """``(n, 3)``: the fraction of an element's power on phases a, b, c (1/3 each for three-phase)."""
    share = np.zeros((phase.shape[0], 3), dtype=FLOAT)
    share[phase == Phase.ABC] = 1.0 / 3.0
    for k in (Phase.A, Phase.B, Phase.C):
        share[phase == k, k - 1] = 1.0
    return share


def _ids(start: int, n: int) -> NDArray[np.int32]:
    return np.arange(start, start + n, dtype=INDEX)


def pgm_layout(feeder: Feeder, *, symmetric: bool | None = None,
               pieces: NDArray[np.bool_] | None = None) -> PgmLayout:
    """The PGM input of ``feeder`` (validated beforehand); ``symmetric`` defaults to ``feeder.balanced``.

    ``pieces`` ``(n_load, 3)``: which ZIP pieces each load gets a PGM load for; default: every piece its
    characteristic can use.
    """
    sym = feeder.balanced if symmetric is None else symmetric
    b, ln, t, ld, d = feeder.buses, feeder.lines, feeder.transformers, feeder.loads, feeder.ders
    node_id = _ids(0, len(b))
    line_id = _ids(len(b), len(ln))
    trafo_id = _ids(len(b) + len(ln), len(t))
    source_id = len(b) + len(ln) + len(t)
    used = np.asarray(coefficients(ld).any(axis=1) if pieces is None else pieces, dtype=bool)  # (n_load, 3)
    blocks = tuple(np.flatnonzero(used[:, b]) for b in range(3))
    n_pgm_load = sum(len(x) for x in blocks)
    load_id = _ids(source_id + 1, n_pgm_load)
    gen_id = _ids(source_id + 1 + n_pgm_load, len(d))

    node = initialize_array(DatasetType.input, ComponentType.node, len(b))
    node["id"] = node_id
    node["u_rated"] = b.u_rated_v
    data: dict[str, NDArray[Any]] = {ComponentType.node: node}

    line = initialize_array(DatasetType.input, ComponentType.line, len(ln))
    line["id"] = line_id
    line["from_node"] = ln.from_bus
    line["to_node"] = ln.to_bus
    line["from_status"] = line["to_status"] = 1
    line["r1"], line["x1"], line["c1"], line["tan1"] = ln.r1_ohm, ln.x1_ohm, ln.c1_f, 0.0
    line["r0"], line["x0"], line["c0"], line["tan0"] = ln.r0_ohm, ln.x0_ohm, ln.c0_f, 0.0
    line["i_n"] = ln.i_rated_a
    if len(ln):
        data[ComponentType.line] = line

    trafo = initialize_array(DatasetType.input, ComponentType.transformer, len(t))
    trafo["id"] = trafo_id
    trafo["from_node"], trafo["to_node"] = t.from_bus, t.to_bus
    trafo["from_status"] = trafo["to_status"] = 1
    trafo["u1"], trafo["u2"], trafo["sn"] = t.u1_v, t.u2_v, t.sn_va
    trafo["uk"], trafo["pk"], trafo["p0"] = t.uk, t.pk_w, t.p0_w
    trafo["i0"] = np.maximum(t.i0, t.p0_w / t.sn_va)  # PGM needs i0 >= p0 / sn (i0 is the whole no-load current)
    trafo["winding_from"], trafo["winding_to"], trafo["clock"] = t.winding_from, t.winding_to, t.clock
    trafo["tap_side"], trafo["tap_pos"], trafo["tap_min"] = t.tap_side, t.tap_pos, t.tap_min
    trafo["tap_max"], trafo["tap_nom"], trafo["tap_size"] = t.tap_max, t.tap_nom, t.tap_size_v
    if len(t):
        data[ComponentType.transformer] = trafo

    s = feeder.source
    source = initialize_array(DatasetType.input, ComponentType.source, 1)
    source["id"], source["node"], source["status"] = source_id, s.bus, 1
    source["u_ref"], source["u_ref_angle"] = s.v_pu, 0.0
    source["sk"], source["rx_ratio"], source["z01_ratio"] = s.sk_va, s.rx_ratio, s.z01_ratio
    data[ComponentType.source] = source

    load_type = ComponentType.sym_load if sym else ComponentType.asym_load
    load = initialize_array(DatasetType.input, load_type, n_pgm_load)
    load["id"] = load_id
    load["node"] = ld.bus[np.concatenate(blocks)]
    load["status"] = 1
    load["type"] = np.repeat([int(x) for x in LOAD_BLOCKS], [len(x) for x in blocks])
    load["p_specified"] = load["q_specified"] = 0.0
    if n_pgm_load:
        data[load_type] = load

    gen_type = ComponentType.sym_gen if sym else ComponentType.asym_gen
    gen = initialize_array(DatasetType.input, gen_type, len(d))
    gen["id"], gen["node"], gen["status"] = gen_id, d.bus, 1
    gen["type"] = LoadGenType.const_power
    gen["p_specified"] = gen["q_specified"] = 0.0
    if len(d):
        data[gen_type] = gen

    return PgmLayout(sym, node_id, line_id, trafo_id, source_id, (blocks[0], blocks[1], blocks[2]), load_id, gen_id,
                     phase_share(ld.phase), phase_share(d.phase), data)


class Workspace:
    """Preallocated arrays for batches of ``size`` scenarios: fill the inputs, run, read the outputs.

    Inputs: ``load_p``/``load_q`` ``(size, n_pgm_load[, 3])`` W/var per PGM load (phase axis when asymmetric),
    ``gen_p``/``gen_q`` ``(size, n_der[, 3])``, ``source_u`` ``(size, 1)`` pu (sent only when ``source``).
    Outputs: ``out[component][attr]``.
    """

    def __init__(self, runner: Runner, size: int, source: bool, single: bool = False) -> None:
        layout = runner.layout
        self.single = single  # no update at all: solve the model's own input (the base case), size 1
        phase = () if layout.symmetric else (3,)
        n_load, n_der = layout.load_id.size, layout.gen_id.size
        self.size = size
        self.load_p = np.zeros((size, n_load, *phase), dtype=FLOAT)  # PGM loads, blocks in order
        self.load_q = np.zeros((size, n_load, *phase), dtype=FLOAT)
        self.gen_p = np.zeros((size, n_der, *phase), dtype=FLOAT)
        self.gen_q = np.zeros((size, n_der, *phase), dtype=FLOAT)
        self.source_u = np.zeros((size, 1), dtype=FLOAT)
        self.update: dict[str, dict[str, NDArray[np.float64]]] = {}
        if single:
            pass
        elif source:  # updating the source costs a few us per scenario: only when asked
            self.update[ComponentType.source] = {"u_ref": self.source_u}
        if n_load and not single:
            self.update[layout.load_type] = {"p_specified": self.load_p, "q_specified": self.load_q}
        if n_der and not single:
            self.update[layout.gen_type] = {"p_specified": self.gen_p, "q_specified": self.gen_q}
        self.out: dict[str, dict[str, NDArray[np.float64]]] = {}
        self._views: tuple[Any, Any] | None = None
        if runner.fast:
            output_type = DatasetType.sym_output if layout.symmetric else DatasetType.asym_output
            counts = {ComponentType(k): int(v.shape[0]) for k, v in layout.input_data.items()}
            wanted: dict[ComponentType, set[str] | list[str] | None] = {
                ComponentType(k): v for k, v in runner.output_spec.items()}
            self.out = create_output_data(output_component_types=wanted,  # type: ignore[call-overload]
                                          output_type=output_type, all_component_count=counts, is_batch=True,
                                          batch_size=size)
            update_view = None if single else prepare_update_view(
                {ComponentType(k): v for k, v in self.update.items()})
            self._views = (update_view, prepare_output_view(self.out, output_type))

    def pointers(self) -> tuple[Any, Any]:
        assert self._views is not None
        update_view, output_view = self._views
        update = ConstDatasetPtr() if update_view is None else update_view.get_dataset_ptr()
        return update, output_view.get_dataset_ptr()


class Runner:
    """The built PowerGridModel of a feeder and its workspaces. Not thread-safe: one runner per thread."""

    #: Workspaces kept (one per batch size seen lately).
    MAX_WORKSPACES = 8
    #: Batches with at least this much work (scenarios x buses x phases) run on every hardware thread; smaller ones
    #: lose more to starting threads than they gain (measured on 2 cores: the EU LV feeder gains from ~8 scenarios,
    #: the 33-bus one only beyond ~60).
    PARALLEL_WORK = 2000

    def __init__(self, layout: PgmLayout, frequency_hz: float, *, error_tolerance: float = 1e-8,
                 max_iterations: int = 20, fast: bool | None = None, angles: bool = False,
                 method: str = "newton_raphson") -> None:
        self.layout = layout
        try:
            self.model = PowerGridModel(layout.input_data, system_frequency=frequency_hz)
        except PowerGridError as exc:
            raise FeederError((FeederIssue("feeder", "", (), f"power-grid-model refused the model: {exc}"),)) from exc
        self.fast = FAST_PATH_AVAILABLE if fast is None else (fast and FAST_PATH_AVAILABLE)
        self.error_tolerance = error_tolerance
        self.max_iterations = max_iterations
        self.method = CalculationMethod[method]
        node = ["u_pu", "u_angle"] if angles else ["u_pu"]
        spec: dict[str, list[str]] = {ComponentType.node: node, ComponentType.source: ["p", "q"]}
        if ComponentType.line in layout.input_data:
            spec[ComponentType.line] = ["i_from", "i_to", "p_from", "p_to"]
        if ComponentType.transformer in layout.input_data:
            spec[ComponentType.transformer] = ["s_from", "s_to", "p_from", "p_to"]
        self.output_spec = spec
        self._workspaces: OrderedDict[tuple[int, bool, bool], Workspace] = OrderedDict()
        self._options: dict[tuple[CalculationMethod, int], Any] = {}
        self._work_per_scenario = len(layout.node_id) * (1 if layout.symmetric else 3)

    def workspace(self, size: int, *, source: bool = False, single: bool = False) -> Workspace:
        """The workspace for ``size`` scenarios (with the source voltage in the update when ``source``; with no
        update at all when ``single``: the model's input is the scenario)."""
        key = (size, source, single)
        ws = self._workspaces.pop(key, None) or Workspace(self, size, source, single)
        self._workspaces[key] = ws
        while len(self._workspaces) > self.MAX_WORKSPACES:
            self._workspaces.popitem(last=False)
        return ws

    def _tolerance(self, method: CalculationMethod) -> float:
        """Iterative current is held to ``ITERATIVE_TIGHTER`` times the tolerance: it converges linearly, so its
        last sweep's change understates what is left more than Newton-Raphson's (quadratic) does."""
        return self.error_tolerance * (ITERATIVE_TIGHTER if method == CalculationMethod.iterative_current else 1.0)

    def _threading(self, size: int) -> int:
        return 0 if size * self._work_per_scenario >= self.PARALLEL_WORK else -1

    def _fast_options(self, method: CalculationMethod, threading: int) -> Any:
        opt = self._options.get((method, threading))
        if opt is None:
            opt = Options()  # type: ignore[no-untyped-call]
            opt.calculation_type = CalculationType.power_flow.value
            opt.calculation_method = method.value
            opt.symmetric = int(self.layout.symmetric)
            opt.error_tolerance = self._tolerance(method)
            opt.max_iterations = self.max_iterations
            opt.threading = threading
            self._options[(method, threading)] = opt
        return opt

    def run(self, ws: Workspace, method: CalculationMethod | None = None) -> NDArray[np.bool_]:
        """Solve the workspace's batch in place (with ``method``, default the runner's); the mask of scenarios
        that failed (did not converge)."""
        method = self.method if method is None else method
        failed = np.zeros(ws.size, dtype=bool)
        error: PowerGridBatchError | None
        try:
            if self.fast:
                update_ptr, output_ptr = ws.pointers()
                options = self._fast_options(method, self._threading(ws.size))
                get_power_grid_core().calculate(self.model._model, options.opt,
                                                output_data=output_ptr, update_data=update_ptr)
                error = handle_errors(continue_on_batch_error=True, batch_size=ws.size, decode_error=True)
            else:
                update: Any = None if ws.single else ws.update
                result: Any = self.model.calculate_power_flow(
                    symmetric=self.layout.symmetric, error_tolerance=self._tolerance(method),
                    max_iterations=self.max_iterations, calculation_method=method, update_data=update,
                    threading=self._threading(ws.size),
                    output_component_types={ComponentType(k): v for k, v in self.output_spec.items()},
                    continue_on_batch_error=True)
                if ws.single:  # a single calculation returns unbatched arrays
                    result = {k: {a: v[None] for a, v in attrs.items()} for k, attrs in result.items()}
                ws.out = result  # columnar output: component -> attribute -> array
                error = self.model.batch_error
        except PowerGridError as exc:
            if ws.single:  # not a batch: a failure to converge raises (IterationDiverge, ...)
                failed[0] = True
                return failed
            raise PowerFlowError(f"power-grid-model failed: {exc}") from exc
        if error is not None:
            failed[np.asarray(error.failed_scenarios, dtype=np.intp)] = True
        return failed
