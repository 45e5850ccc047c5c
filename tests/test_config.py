"""The config loader: defaults from profiles, and every mistake reported as ``FILE: key.path: problem — fix``.

Ends with a fuzz test: whatever text or TOML-ish data comes in, the loader returns a Config or raises ConfigError.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import Config, SerialLink, TcpLink, build_config, load_config, parse_config
from gateway.errors import ConfigError, GridedgeError

SRC = "config.toml"

SITE = """\
[site]
id = "depot-7"
gateway_id = "gw-1"
"""

TEST_PROFILE = """\
name = "testkit"
description = "a profile for the tests"
[defaults]
port = 1502
unit = 7
base = 40000
models = [1, 103, 123]
"""


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    """A profile directory of our own, so these tests do not depend on the shipped data."""
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "testkit.toml").write_text(TEST_PROFILE, encoding="utf-8")
    (d / "generic.toml").write_text(
        TEST_PROFILE.replace('"testkit"', '"generic"').replace("port = 1502\nunit = 7\n", ""), encoding="utf-8"
    )
    return d


def problems(text: str, profile_dirs: Path | None = None) -> list[str]:
    """The problems parse_config reports for ``text``, without the file-name prefix."""
    with pytest.raises(ConfigError) as exc:
        parse_config(text, SRC, profile_dirs=None if profile_dirs is None else [profile_dirs])
    lines = str(exc.value).splitlines()
    assert lines[0].startswith(f"{SRC}: "), lines
    return [line.removeprefix(f"{SRC}: ") for line in lines if line.startswith(f"{SRC}: ")]


def device(body: str) -> str:
    return SITE + "[[devices]]\n" + body


# --- valid files --------------------------------------------------------------------------------------------------


def test_tcp_device_takes_defaults_from_its_profile(profiles: Path) -> None:
    config = parse_config(
        device('id = "inv-1"\nprofile = "testkit"\nhost = "192.0.2.10"\n'), SRC, profile_dirs=[profiles]
    )
    dev = config.devices[0]
    assert (dev.port, dev.unit, dev.base, dev.models) == (1502, 7, 40000, (1, 103, 123))
    assert dev.profile.name == "testkit"
    assert dev.transport == "tcp"
    assert dev.link == TcpLink("192.0.2.10", 1502)
    assert dev.endpoint == "tcp://192.0.2.10:1502"
    assert (dev.poll_interval_s, dev.timeout_s, dev.rated_w, dev.role) == (1.0, 1.0, None, None)
    assert config.site.site_id == "depot-7"
    assert config.site.gateway_id == "gw-1"
    assert config.site.log_level == "info"


def test_given_keys_override_the_profile(profiles: Path) -> None:
    text = device(
        'id = "inv-1"\nprofile = "testkit"\nhost = "h"\nport = 502\nunit = 3\nbase = "auto"\nmodels = [1, 101]\n'
        'poll_interval_s = 0.5\ntimeout_s = 2\nrated_w = 5000\nrole = "inverter"\n'
    )
    dev = parse_config(text, SRC, profile_dirs=[profiles]).devices[0]
    assert (dev.port, dev.unit, dev.base, dev.models) == (502, 3, "auto", (1, 101))
    assert (dev.poll_interval_s, dev.timeout_s, dev.rated_w, dev.role) == (0.5, 2.0, 5000.0, "inverter")


def test_serial_device_defaults_to_9600_8n1(profiles: Path) -> None:
    text = device('id = "m1"\nserial = "/dev/ttyUSB0"\nunit = 2\nrole = "meter"\n')
    dev = parse_config(text, SRC, profile_dirs=[profiles]).devices[0]
    assert dev.profile.name == "generic"
    assert dev.transport == "rtu"
    assert dev.port is None
    assert dev.link == SerialLink("/dev/ttyUSB0", 9600, "N", 1, 8)
    assert dev.endpoint == "serial:/dev/ttyUSB0"


def test_serial_settings_and_spelled_out_parity(profiles: Path) -> None:
    text = device('id = "m1"\nserial = "COM3"\nbaudrate = 19200\nparity = "even"\nstopbits = 2\nbytesize = 7\n')
    dev = parse_config(text, SRC, profile_dirs=[profiles]).devices[0]
    assert dev.link == SerialLink("COM3", 19200, "E", 2, 7)


def test_devices_share_a_bus_and_a_gateway(profiles: Path) -> None:
    text = SITE + (
        '[[devices]]\nid = "a"\nserial = "/dev/ttyUSB0"\nunit = 1\n'
        '[[devices]]\nid = "b"\nserial = "/dev/ttyUSB0"\nunit = 2\n'
        '[[devices]]\nid = "c"\nhost = "gw.local"\nunit = 1\n'
        '[[devices]]\nid = "d"\nhost = "gw.local"\nunit = 2\n'
    )
    config = parse_config(text, SRC, profile_dirs=[profiles])
    assert [d.endpoint for d in config.devices] == ["serial:/dev/ttyUSB0"] * 2 + ["tcp://gw.local:502"] * 2
    assert config.device("c").unit == 1
    with pytest.raises(KeyError, match='did you mean "c"'):
        config.device("cc")


def test_ipv6_host_endpoint(profiles: Path) -> None:
    dev = parse_config(device('id = "a"\nhost = "fd00::5"\n'), SRC, profile_dirs=[profiles]).devices[0]
    assert dev.endpoint == "tcp://[fd00::5]:502"


def test_log_level_is_case_insensitive(profiles: Path) -> None:
    text = SITE.replace('gateway_id = "gw-1"', 'gateway_id = "gw-1"\nlog_level = "DEBUG"') + (
        '[[devices]]\nid = "a"\nhost = "h"\n'
    )
    assert parse_config(text, SRC, profile_dirs=[profiles]).site.log_level == "debug"


def test_config_is_frozen(profiles: Path) -> None:
    config = parse_config(device('id = "a"\nhost = "h"\n'), SRC, profile_dirs=[profiles])
    with pytest.raises(ValueError, match="frozen"):
        config.devices[0].unit = 5


def test_shipped_generic_profile_is_the_default() -> None:
    dev = parse_config(device('id = "a"\nhost = "h"\n'), SRC).devices[0]
    assert dev.profile.name == "generic"
    assert dev.base == "auto"


def test_load_config_reads_a_file(tmp_path: Path, profiles: Path) -> None:
    path = tmp_path / "gridedge.toml"
    path.write_text(device('id = "a"\nhost = "h"\n'), encoding="utf-8")
    assert isinstance(load_config(path, profile_dirs=[profiles]), Config)


def test_build_config_from_a_mapping(profiles: Path) -> None:
    data = {"site": {"id": "s", "gateway_id": "g"}, "devices": [{"id": "a", "host": "h", "models": [1, 103]}]}
    assert build_config(data, profile_dirs=[profiles]).devices[0].models == (1, 103)


def test_dump_round_trips(profiles: Path) -> None:
    text = SITE + '[[devices]]\nid = "a"\nhost = "h"\nprofile = "testkit"\n[[devices]]\nid = "b"\nserial = "COM1"\n'
    config = parse_config(text, SRC, profile_dirs=[profiles])
    data = config.model_dump()
    assert data["devices"][0]["profile"] == "testkit"
    assert build_config(data, profile_dirs=[profiles]) == config


def test_link_follows_a_copy(profiles: Path) -> None:
    dev = parse_config(device('id = "a"\nhost = "h"\n'), SRC, profile_dirs=[profiles]).devices[0]
    assert dev.model_copy(update={"port": 1502}).endpoint == "tcp://h:1502"


# --- errors: each names the key and the fix -----------------------------------------------------------------------


def test_unit_out_of_range(profiles: Path) -> None:
    text = SITE + '[[devices]]\nid = "a"\nhost = "h"\n[[devices]]\nid = "b"\nhost = "h"\n[[devices]]\nid = "c"\n'
    text += 'host = "h"\nunit = 300\n'
    assert problems(text, profiles) == ["devices[2].unit: 300 is not a Modbus unit id — use 1..247"]


def test_host_and_serial_both(profiles: Path) -> None:
    assert problems(device('id = "a"\nhost = "h"\nserial = "/dev/ttyS0"\n'), profiles) == [
        "devices[0]: give either host (Modbus TCP) or serial (Modbus RTU), not both — remove one of them"
    ]


def test_neither_host_nor_serial(profiles: Path) -> None:
    [line] = problems(device('id = "a"\n'), profiles)
    assert line.startswith("devices[0]: give host = ")
    assert 'serial = "/dev/ttyUSB0"' in line


def test_unknown_profile_lists_the_known_ones(profiles: Path) -> None:
    text = SITE + '[[devices]]\nid = "a"\nhost = "h"\n[[devices]]\nid = "b"\nhost = "h2"\nprofile = "testkti"\n'
    assert problems(text, profiles) == [
        'devices[1].profile: no profile "testkti" — did you mean "testkit"? known: generic, testkit'
    ]


def test_unknown_profile_against_the_shipped_directory() -> None:
    shipped = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "device_profiles").glob("*.toml"))
    [line] = problems(device('id = "a"\nhost = "h"\nprofile = "nosuch"\n'))
    assert line == f'devices[0].profile: no profile "nosuch" — known: {", ".join(shipped)}'


def test_broken_profile_is_reported_against_the_device(profiles: Path) -> None:
    (profiles / "bad.toml").write_text(TEST_PROFILE.replace('"testkit"', '"bad"') + "[modbus]\nfc = 16\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(device('id = "a"\nhost = "h"\nprofile = "bad"\n'), SRC, profile_dirs=[profiles])
    first, second = str(exc.value).splitlines()
    assert first == f'{SRC}: devices[0].profile: profile "bad" is broken — fix its file:'
    assert second == f"    {profiles / 'bad.toml'}: modbus.fc: unknown key — allowed here: inter_frame_delay_ms, " + (
        "max_read_registers, write_function_code"
    )


def test_duplicate_device_ids(profiles: Path) -> None:
    text = SITE + '[[devices]]\nid = "inv"\nhost = "a"\n[[devices]]\nid = "inv"\nhost = "b"\n'
    assert problems(text, profiles) == [
        'devices[1].id: "inv" is already the id of devices[0] — give each device its own id'
    ]


def test_same_unit_at_same_endpoint(profiles: Path) -> None:
    text = SITE + '[[devices]]\nid = "a"\nhost = "GW"\n[[devices]]\nid = "b"\nhost = "gw"\n'
    [line] = problems(text, profiles)
    assert line.startswith("devices[1].unit: unit 1 at tcp://gw:502 is already devices[0]")
    assert "fix the unit" in line


def test_one_bus_one_speed(profiles: Path) -> None:
    text = SITE + (
        '[[devices]]\nid = "a"\nserial = "/dev/ttyUSB0"\n'
        '[[devices]]\nid = "b"\nserial = "/dev/ttyUSB0"\nunit = 2\nbaudrate = 19200\n'
    )
    [line] = problems(text, profiles)
    assert line.startswith('devices[1].baudrate: 19200 differs from devices[0] on the same serial port "/dev/ttyUSB0"')
    assert "make them equal" in line


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('id = "a"\nhots = "h"\nhost = "h"\n', 'devices[0].hots: unknown key — did you mean "host"?'),
        (
            'id = "a"\nhost = "h"\npoll_interval = 1.0\n',
            'devices[0].poll_interval: unknown key — did you mean "poll_interval_s"?',
        ),
        ('id = "a"\nhost = "h"\nbaud = 9600\n', 'devices[0].baud: unknown key — did you mean "baudrate"?'),
        (
            'id = "a"\nhost = "h"\nxyzzy = 1\n',
            "devices[0].xyzzy: unknown key — allowed here: base, baudrate, bytesize, ",
        ),
        ('id = "a"\nhost = "h"\nport = "502"\n', 'devices[0].port: "502" is not a whole number (remove the quotes)'),
        ('id = "a"\nhost = "h"\nport = 70000\n', "devices[0].port: 70000 is not a TCP port — use 1..65535"),
        ('id = "a"\nhost = "h"\nunit = 0\n', "devices[0].unit: 0 is not a Modbus unit id — use 1..247"),
        ('id = "a"\nhost = "h"\nunit = true\n', "devices[0].unit: true is not a whole number"),
        (
            'id = "a"\nhost = "h"\nbase = 1000\n',
            'devices[0].base: 1000 is not a SunSpec base address — use "auto", 0, 40000 or 50000',
        ),
        (
            'id = "a"\nhost = "h"\nbase = "40000"\n',
            'devices[0].base: "40000" is not a SunSpec base address — use "auto", 0, 40000 or 50000 '
            "(write the number without quotes)",
        ),
        (
            'id = "a"\nhost = "h"\nmodels = [1, 999]\n',
            "devices[0].models[1]: 999 is not a SunSpec model id — use one SunSpec defines",
        ),
        ('id = "a"\nhost = "h"\nmodels = []\n', "devices[0].models: is empty — give at least one"),
        (
            'id = "a"\nhost = "h"\nmodels = 103\n',
            "devices[0].models: 103 is not a list — write it in brackets, e.g. [1, 2]",
        ),
        (
            'id = "a"\nhost = "h"\npoll_interval_s = 0\n',
            "devices[0].poll_interval_s: 0 is too small — use a value above 0",
        ),
        ('id = "a"\nhost = "h"\ntimeout_s = nan\n', "devices[0].timeout_s: nan is not a finite number"),
        ('id = "a"\nhost = "h"\nrated_w = -5\n', "devices[0].rated_w: -5 is too small — use a value above 0"),
        (
            'id = "a"\nhost = "h"\nrole = "invertor"\n',
            'devices[0].role: "invertor" is not allowed — did you mean "inverter"?',
        ),
        (
            'id = "a"\nhost = "h"\nrole = "pv"\n',
            'devices[0].role: "pv" is not allowed — use "inverter", "battery" or "meter"',
        ),
        (
            'id = "Inv 1"\nhost = "h"\n',
            "devices[0].id: \"Inv 1\" is not a device id — use 1-64 lowercase letters, digits, '-' or '_' "
            '(e.g. "inv-1")',
        ),
        ('id = 5\nhost = "h"\n', 'devices[0].id: 5 is not text — put it in double quotes, e.g. "5"'),
        ('host = "h"\n', 'devices[0].id: missing — add id = "inv-1"'),
        (
            'id = "a"\nhost = "10.0.0.5:502"\n',
            'devices[0].host: "10.0.0.5:502" includes a port — write host = "10.0.0.5" and port = 502',
        ),
        ('id = "a"\nhost = "my host"\n', 'devices[0].host: "my host" is not a host name or IP address'),
        (
            'id = "a"\nhost = "h"\nbaudrate = 9600\n',
            "devices[0].baudrate: only applies to serial devices — remove baudrate (or use serial instead of host)",
        ),
        (
            'id = "a"\nserial = "/dev/ttyS0"\nport = 502\n',
            "devices[0].port: a serial device has no TCP port — remove port (or use host instead of serial)",
        ),
        (
            'id = "a"\nserial = "/dev/ttyS0"\nbaudrate = 9601\n',
            "devices[0].baudrate: 9601 is not a serial speed — use one of 1200, 2400,",
        ),
        (
            'id = "a"\nserial = "/dev/ttyS0"\nparity = "X"\n',
            'devices[0].parity: "X" is not a parity — use "N" (none), "E" (even) or "O" (odd)',
        ),
        ('id = "a"\nserial = ""\n', 'devices[0].serial: is empty — give the serial port, e.g. serial = "/dev/ttyUSB0"'),
        ('id = "a"\nserial = "/dev/ttyS0"\nstopbits = 3\n', "devices[0].stopbits: 3 is not allowed — use 1 or 2"),
    ],
)
def test_device_errors_name_key_and_fix(profiles: Path, body: str, expected: str) -> None:
    lines = problems(device(body), profiles)
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[devices]]\nid = "a"\nhost = "h"\n', ["site: missing — add a [site] table with id and gateway_id"]),
        (
            '[site]\nid = "s"\n[[devices]]\nid = "a"\nhost = "h"\n',
            ['site.gateway_id: missing — add gateway_id = "gw-1"'],
        ),
        (SITE, ["devices: missing — add at least one [[devices]] table"]),
        ("devices = []\n" + SITE, ["devices: is empty — add at least one [[devices]] table"]),
        (
            SITE + '[devices]\nid = "a"\n',
            ["devices: is a single table — write [[devices]] (double brackets) for each entry"],
        ),
        (
            SITE + "devices = []\n",
            [
                "site.devices: unknown key in [site] — every key after a [site] header belongs to that table: "
                "move devices above the first [table] header",
                "devices: missing — add at least one [[devices]] table",
            ],
        ),
        (
            SITE.replace("depot-7", "depot/7") + '[[devices]]\nid = "a"\nhost = "h"\n',
            [
                "site.id: \"depot/7\" cannot be used in MQTT topics — use 1-64 letters, digits, '-' or '_' "
                '(e.g. "depot-7")'
            ],
        ),
        (
            SITE + 'log_level = "loud"\n[[devices]]\nid = "a"\nhost = "h"\n',
            ['site.log_level: "loud" is not a log level — use "debug", "info", "warning" or "error"'],
        ),
        (
            SITE + '[feeder]\nbuses = 3\n[[devices]]\nid = "a"\nhost = "h"\n',
            ["feeder: unknown key — allowed here: devices, dispatch, site, twin, uplink"],
        ),
        (
            SITE + '[[devices]]\nid = "a"\nhost = "h"\n[sites]\nid = "x"\n',
            ['sites: unknown key — did you mean "site"?'],
        ),
    ],
)
def test_file_level_errors(profiles: Path, text: str, expected: list[str]) -> None:
    assert problems(text, profiles) == expected


def test_every_problem_is_listed_at_once(profiles: Path) -> None:
    text = SITE.replace("depot-7", "depot 7") + (
        '[[devices]]\nid = "a"\nhots = "h"\n'
        '[[devices]]\nid = "b"\nhost = "h"\nunit = 300\n'
        '[[devices]]\nid = "c"\nhost = "h"\nprofile = "nope"\n'
    )
    keys = [line.split(":", 1)[0] for line in problems(text, profiles)]
    assert keys == ["site.id", "devices[0].hots", "devices[1].unit", "devices[2].profile"]


def test_toml_syntax_error_reports_line_and_column(profiles: Path) -> None:
    text = SITE + '[[devices]]\nid = "a"\nhost = "h\n'
    with pytest.raises(ConfigError) as exc:
        parse_config(text, SRC, profile_dirs=[profiles])
    first, *rest = str(exc.value).splitlines()
    assert re.match(r"config\.toml: line 6, column \d+: not valid TOML — .+; check quotes", first), first
    assert rest[0] == '    6 | host = "h'


def test_toml_error_at_end_of_file() -> None:
    with pytest.raises(ConfigError, match=r"^config\.toml: .*not valid TOML"):
        parse_config('[site]\nid = "', SRC)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: no such config file — check the path"):
        load_config(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[site]\nid = "Müller"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)


def test_config_error_types() -> None:
    assert issubclass(ConfigError, GridedgeError)
    assert issubclass(ConfigError, ValueError)


# --- fuzz: a Config or a ConfigError, never anything else -----------------------------------------------------------

KEYS = [
    "site",
    "devices",
    "id",
    "gateway_id",
    "log_level",
    "profile",
    "host",
    "port",
    "serial",
    "baudrate",
    "parity",
    "stopbits",
    "bytesize",
    "unit",
    "base",
    "poll_interval_s",
    "timeout_s",
    "models",
    "rated_w",
    "role",
    "hots",
]
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, 2, 3, 7, 126, 247, 300, 502, 9600, 40000, 50000, 65536]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "generic", "testkit", "nosuch", "h", "/dev/ttyS0", "inverter", "N", "debug", "a-1"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=12,
)
random_tables = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)
# Mostly-valid tables with a few random keys on top, so the fuzz also reaches the later validators.
device_tables = random_tables | st.builds(
    lambda base, extra: {**base, **extra},
    st.sampled_from(
        [{"id": "a", "host": "h"}, {"id": "b", "serial": "/dev/ttyS0"}, {"id": "c", "host": "h", "unit": 2}]
    ),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=2),
)
site_tables = st.just({"id": "s", "gateway_id": "g"}) | st.dictionaries(
    st.sampled_from(["id", "gateway_id", "log_level", "x"]), values, max_size=4
)
documents = st.fixed_dictionaries(
    {},
    optional={"site": site_tables, "devices": st.lists(device_tables, max_size=3), "feeder": values},
)


def toml_str(text: str) -> str:
    """A TOML basic string (json.dumps would escape astral characters as surrogate pairs, which TOML rejects)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_str(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(document: dict[str, Any]) -> str:
    return "".join(f"{toml_str(k)} = {toml_value(v)}\n" for k, v in document.items())


def config_or_config_error(call: Any) -> None:
    """``call()`` returns a Config or raises ConfigError with a message; any other exception fails the test."""
    try:
        result = call()
    except ConfigError as exc:
        message = str(exc)
    else:
        assert isinstance(result, Config)
        return
    assert message.startswith(f"{SRC}: ")


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_random_text(text: str) -> None:
    config_or_config_error(lambda: parse_config(text, SRC))


@FUZZ
@given(documents)
def test_fuzz_toml_documents(document: dict[str, Any]) -> None:
    config_or_config_error(lambda: parse_config(to_toml(document), SRC))


@FUZZ
@given(documents)
def test_fuzz_mappings(document: dict[str, Any]) -> None:
    config_or_config_error(lambda: build_config(document, SRC))


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            [
                "[site]",
                "[[devices]]",
                'id = "a"',
                'gateway_id = "g"',
                'host = "h"',
                "unit = 3",
                'serial = "/dev/x"',
                "port = 502",
                "[feeder]",
                "models = [1, 103]",
                'id = "a"',
                "=",
                '"',
                "[",
                'role = "meter"',
                'base = "auto"',
                'profile = "nosuch"',
            ]
        ),
        max_size=14,
    )
)
def test_fuzz_line_soup(lines: list[str]) -> None:
    config_or_config_error(lambda: parse_config("\n".join(lines), SRC))
