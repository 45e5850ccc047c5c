"""The feeder twin: feeder model, importers and AC power flow. Pure: no I/O beyond reading the files it is given.

Build a :class:`Feeder` with :func:`load_feeder` (a gridedge feeder file, ``.toml``/``.json``, documented in
``gateway/twin/FEEDER_FORMAT.md``; or an OpenDSS ``.dss`` master through dss-python) or :func:`from_pandapower`,
then solve it with a :class:`PowerFlow` engine (power-grid-model, built once, batch-first)::

    feeder = load_feeder("feeder.toml")          # validated: FeederError lists every issue
    engine = PowerFlow(feeder)
    base = engine.solve()                        # FlowResult of one scenario
    res = engine.solve_batch(der_p_w)            # (S, n_der) W -> FlowResult of S scenarios

Arrays use the dtypes :data:`FLOAT`, :data:`INDEX` and :data:`CODE`; missing values are NaN.
"""

from gateway.twin._errors import FeederError, FeederIssue, PowerFlowError, ScenarioError, TwinError
from gateway.twin._feeder import (
    ANSI_RANGE_A,
    CODE,
    FLOAT,
    IDEAL_SK_VA,
    INDEX,
    Buses,
    Ders,
    Feeder,
    Limits,
    Lines,
    LoadModel,
    Loads,
    Phase,
    Side,
    Source,
    Transformers,
    Winding,
)
from gateway.twin._file import FORMAT, dump_feeder, dumps_feeder, feeder_from_dict, feeder_to_dict, load_feeder
from gateway.twin._flow import FlowOptions, FlowResult, PowerFlow
from gateway.twin._loadmodel import Regime
from gateway.twin._opendss import from_opendss
from gateway.twin._pandapower import from_pandapower
from gateway.twin._validate import assert_valid_feeder, validate_feeder

__all__ = [
    "ANSI_RANGE_A",
    "CODE",
    "FLOAT",
    "FORMAT",
    "IDEAL_SK_VA",
    "INDEX",
    "Buses",
    "Ders",
    "Feeder",
    "FeederError",
    "FeederIssue",
    "FlowOptions",
    "FlowResult",
    "Limits",
    "Lines",
    "LoadModel",
    "Loads",
    "Phase",
    "PowerFlow",
    "PowerFlowError",
    "Regime",
    "ScenarioError",
    "Side",
    "Source",
    "Transformers",
    "TwinError",
    "Winding",
    "assert_valid_feeder",
    "dump_feeder",
    "dumps_feeder",
    "feeder_from_dict",
    "feeder_to_dict",
    "from_opendss",
    "from_pandapower",
    "load_feeder",
    "validate_feeder",
]
