"""The feeder twin: feeder model, importers and AC power flow. Pure: no I/O beyond reading the files it is given.

Build a :class:`Feeder` with :func:`load_feeder` (a gridedge feeder file, ``.toml``/``.json``, documented in
``gateway/twin/FEEDER_FORMAT.md``; or an OpenDSS ``.dss`` master through dss-python) or :func:`from_pandapower`,
then solve it with a :class:`PowerFlow` engine (power-grid-model, built once, batch-first)::

    feeder = load_feeder("feeder.toml")          # validated: FeederError lists every issue
    engine = PowerFlow(feeder)
    base = engine.solve()                        # FlowResult of one scenario
    res = engine.solve_batch(der_p_w)            # (S, n_der) W -> FlowResult of S scenarios

Certified operating envelopes and hosting capacity (every DER at its limit at once, worst-case loads, AC-checked)::

    fed = with_ders(feeder, ["pv1", "pv2"], ["b17", "b32"], rating_w=[300e3, 500e3])
    env = certify_envelope(PowerFlow(fed), EnvelopeRequest(policy=Policy.EQUAL))
    env.ders(), env.certificate                  # DerLimit per DER; what the AC check saw
    hosting_capacity(fed, holders=env)           # per bus: the largest new DER, holders at their limits

Arrays use the dtypes :data:`FLOAT`, :data:`INDEX` and :data:`CODE`; missing values are NaN.
"""

from gateway.twin._criteria import Criteria
from gateway.twin._envelope import (
    Certificate,
    DirectionCertificate,
    EnvelopeError,
    EnvelopeRequest,
    EnvelopeResult,
    Policy,
    certify_envelope,
)
from gateway.twin._errors import FeederError, FeederIssue, PowerFlowError, ScenarioError, TwinError
from gateway.twin._estimate import Estimate, EstimateOptions, EstimationError, ObservabilityError, StateEstimator
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
from gateway.twin._hosting import HostingRequest, HostingResult, hosting_capacity
from gateway.twin._loadmodel import Regime
from gateway.twin._measurements import MeasurementError, Measurements, Reading
from gateway.twin._opendss import from_opendss
from gateway.twin._operating_point import OperatingPoint, operating_point
from gateway.twin._pandapower import from_pandapower
from gateway.twin._pgm import phase_share
from gateway.twin._priors import LoadPriors, load_priors
from gateway.twin._sensitivity import with_ders
from gateway.twin._validate import assert_valid_feeder, validate_feeder

__all__ = [
    "ANSI_RANGE_A",
    "CODE",
    "FLOAT",
    "FORMAT",
    "IDEAL_SK_VA",
    "INDEX",
    "Buses",
    "Certificate",
    "Criteria",
    "Ders",
    "DirectionCertificate",
    "EnvelopeError",
    "EnvelopeRequest",
    "EnvelopeResult",
    "Estimate",
    "EstimateOptions",
    "EstimationError",
    "Feeder",
    "FeederError",
    "FeederIssue",
    "FlowOptions",
    "FlowResult",
    "HostingRequest",
    "HostingResult",
    "Limits",
    "Lines",
    "LoadModel",
    "LoadPriors",
    "Loads",
    "MeasurementError",
    "Measurements",
    "ObservabilityError",
    "OperatingPoint",
    "Phase",
    "Policy",
    "PowerFlow",
    "PowerFlowError",
    "Reading",
    "Regime",
    "ScenarioError",
    "Side",
    "Source",
    "StateEstimator",
    "Transformers",
    "TwinError",
    "Winding",
    "assert_valid_feeder",
    "certify_envelope",
    "dump_feeder",
    "dumps_feeder",
    "feeder_from_dict",
    "feeder_to_dict",
    "from_opendss",
    "from_pandapower",
    "hosting_capacity",
    "load_feeder",
    "load_priors",
    "operating_point",
    "phase_share",
    "validate_feeder",
    "with_ders",
]
