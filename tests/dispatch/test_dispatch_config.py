"""``[dispatch]`` in the config file: ranking, customer limits, the default envelope; mistakes name key and fix."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.dispatch import DispatchPolicy
from gateway.types import Authority, DerLimit
from tests._config_helpers import SRC, refused

BASE = """\
[site]
id = "depot-7"
gateway_id = "gw-1"

[[devices]]
id = "inv-1"
host = "127.0.0.1"
role = "inverter"
rated_w = 6000

[[devices]]
id = "bat-1"
host = "127.0.0.1"
unit = 2
role = "battery"

[[devices]]
id = "meter-1"
host = "127.0.0.1"
unit = 3
role = "meter"
"""
GOOD = BASE + """
[dispatch]
authority_rank = ["aggregator", "grid-operator", "local"]
reversion_s = 90
audit_log = "/var/lib/gridedge/audit.jsonl"

[dispatch.customer_limits]
inv-1 = { export_w = 5000, import_w = 0 }
bat-1 = { export_w = 3000, import_w = 2500 }

[dispatch.default_envelope]
export_w = 1500
import_w = 1000
ders = { bat-1 = { export_w = 0, import_w = 0 } }
"""


def test_a_dispatch_section_becomes_a_policy() -> None:
    config = parse_config(GOOD, SRC)
    assert config.dispatch is not None
    assert config.dispatch.audit_log == "/var/lib/gridedge/audit.jsonl"
    p = DispatchPolicy.from_config(config.dispatch)
    assert p.ranking == (Authority.AGGREGATOR, Authority.GRID_OPERATOR, Authority.LOCAL)
    assert p.reversion_s == 90
    assert dict(p.customer_limits) == {"inv-1": DerLimit("inv-1", 5000, 0), "bat-1": DerLimit("bat-1", 3000, 2500)}
    assert dict(p.default_limits) == {"inv-1": DerLimit("inv-1", 1500, 1000), "bat-1": DerLimit("bat-1", 0, 0)}


def test_files_without_dispatch_still_load() -> None:
    assert parse_config(BASE, SRC).dispatch is None


def test_the_default_ranking_puts_the_grid_operator_first() -> None:
    text = GOOD.replace('authority_rank = ["aggregator", "grid-operator", "local"]\n', "")
    config = parse_config(text, SRC)
    assert config.dispatch is not None
    assert config.dispatch.authority_rank == (Authority.GRID_OPERATOR, Authority.AGGREGATOR, Authority.LOCAL)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ('"aggregator", "grid-operator"', '"aggregater", "grid-operator"',
         'dispatch.authority_rank[0]: "aggregater" is not an authority — did you mean "aggregator"?'),
        ('"aggregator", "grid-operator", "local"', '"aggregator", "grid-operator", "local", "local"',
         'dispatch.authority_rank: "local" is listed twice — list each authority once, highest first, e.g. '
         '["grid-operator", "aggregator", "local"]'),
        ('"aggregator", "grid-operator", "local"', '"aggregator", "grid-operator"',
         'dispatch.authority_rank: "local" missing — list each authority once, highest first, e.g. '
         '["grid-operator", "aggregator", "local"]'),
        ("inv-1 = { export_w = 5000, import_w = 0 }", "inv-1 = { export_w = 5000, import_w = -1 }",
         "dispatch.customer_limits.inv-1.import_w: -1 is too small — use 0 or more"),
        ("inv-1 = { export_w = 5000, import_w = 0 }", "inv-1 = { export_w = 5000, import_w = 0 }\ninv-2 = "
         "{ export_w = 1, import_w = 0 }",
         'dispatch.customer_limits.inv-2: no device "inv-2" in [[devices]] (did you mean "inv-1"?) — fix the id or '
         "remove the entry"),
        ("inv-1 = { export_w = 5000, import_w = 0 }", "inv-1 = { export_w = 5000, import_w = 0 }\nmeter-1 = "
         "{ export_w = 1, import_w = 0 }",
         'dispatch.customer_limits.meter-1: "meter-1" is a meter — customer limits are for inverters and batteries: '
         "remove the entry"),
        ("inv-1 = { export_w = 5000, import_w = 0 }\n", "",
         'dispatch.customer_limits: no limits for inverter "inv-1" — add inv-1 = { export_w = 6000, import_w = 0 } '
         "(what its connection agreement allows)"),
        ("ders = { bat-1 = ", "ders = { bat-2 = ",
         'dispatch.default_envelope.ders.bat-2: "bat-2" has no customer limits, so dispatch never commands it — fix '
         "the id or remove the entry"),
        ("[dispatch.default_envelope]\nexport_w = 1500\nimport_w = 1000\nders = { bat-1 = { export_w = 0, import_w = 0 "
         "} }\n", "",
         "dispatch.default_envelope: missing — add a [dispatch.default_envelope] table with export_w and import_w"),
        ('audit_log = "/var/lib/gridedge/audit.jsonl"', 'audit_log = " "',
         'dispatch.audit_log: is empty — give a file path, e.g. audit_log = "/var/lib/gridedge/audit.jsonl"'),
        ("reversion_s = 90", "reversion_s = 0", "dispatch.reversion_s: 0 is too small — use 1 or more"),
        ("reversion_s = 90", "reversion_secs = 90", 'dispatch.reversion_secs: unknown key — did you mean '
         '"reversion_s"?'),
    ],
)
def test_mistakes_name_the_key_and_the_fix(old: str, new: str, problem: str) -> None:
    assert old in GOOD
    assert problem in refused(GOOD.replace(old, new))
