"""Device profiles: every shipped profile loads and is schema-checked; malformed ones fail naming file, key and fix.

Also house rule 8: no family name appears in the package's Python (vendor knowledge lives in device_profiles/).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.errors import ConfigError, ProfileError
from gateway.profiles import (
    CONTROLS,
    MAX_READ_REGISTERS,
    PROFILES_ENV,
    DeviceProfile,
    default_profile_dirs,
    find_profile,
    list_profiles,
    load_profile,
    read_profile,
)
from gateway.sunspec import all_model_ids

REPO = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO / "device_profiles"
PROFILE_FILES = sorted(PROFILE_DIR.glob("*.toml"))
VENDOR_WORDS = re.compile(r"\b(fronius|sma|solaredge|huawei|fimer)\b", re.IGNORECASE)

MINIMAL = """\
name = "{name}"
description = "a test profile"
[defaults]
models = [1, 103, 123]
"""


def write(dirpath: Path, name: str, text: str) -> Path:
    path = dirpath / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problem_lines(exc: pytest.ExceptionInfo[ProfileError]) -> list[str]:
    return str(exc.value).splitlines()


# --- the shipped profiles ------------------------------------------------------------------------------------------


def test_the_expected_profiles_ship() -> None:
    assert {"generic", "sma-sunny-boy", "fronius", "solaredge", "fimer"} <= {p.stem for p in PROFILE_FILES}


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_profile_loads_and_validates(path: Path) -> None:
    profile = read_profile(path)
    assert isinstance(profile, DeviceProfile)
    assert profile.name == path.stem
    assert profile.description
    assert profile.defaults.models, "a profile must say which models to poll"
    assert set(profile.defaults.models) <= set(all_model_ids())
    assert 1 <= profile.defaults.unit <= 247
    assert profile.modbus.write_function_code in (6, 16)
    assert 1 <= profile.modbus.max_read_registers <= MAX_READ_REGISTERS
    assert set(profile.controls.supported) <= set(CONTROLS)
    for control in profile.controls.supported:
        assert int(control.rsplit("_", 1)[1]) in profile.defaults.models
    # Loading by name finds the same file and gives the same profile.
    assert load_profile(path.stem, [PROFILE_DIR]) == profile


def test_list_profiles_is_the_directory_listing() -> None:
    assert list_profiles([PROFILE_DIR]) == tuple(sorted(p.stem for p in PROFILE_FILES))


def test_default_search_finds_the_repo_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILES_ENV, raising=False)
    assert PROFILE_DIR in default_profile_dirs()
    assert set(list_profiles()) >= {p.stem for p in PROFILE_FILES}
    assert load_profile("generic").name == "generic"


def test_quirks_are_data() -> None:
    # Each quirk the brief names is expressible, and the shipped profiles use them.
    profiles = {p.stem: read_profile(p) for p in PROFILE_FILES}
    generic = profiles["generic"]
    assert not generic.quirks.models_not_ascending
    assert not generic.quirks.missing_end_marker
    assert generic.quirks.model_lengths == ()
    assert any(p.quirks.models_not_ascending for p in profiles.values())
    assert any(p.quirks.exception_inside_models for p in profiles.values())
    assert any(p.model_length_ok(1, 65) for p in profiles.values())
    assert any(160 in p.quirks.long_models for p in profiles.values())


# --- house rule 8 -------------------------------------------------------------------------------------------------


def test_no_vendor_names_in_package_python() -> None:
    hits = []
    for path in sorted((REPO / "gateway").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if VENDOR_WORDS.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "vendor names belong in device_profiles/*.toml, not in code:\n" + "\n".join(hits)


# --- search path --------------------------------------------------------------------------------------------------


def test_env_directory_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "generic", MINIMAL.format(name="generic").replace("a test profile", "site override"))
    write(tmp_path, "site-special", MINIMAL.format(name="site-special"))
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    assert default_profile_dirs()[0] == tmp_path
    assert "site-special" in list_profiles()
    assert load_profile("generic").description == "site override"
    assert find_profile("site-special") == tmp_path / "site-special.toml"


def test_an_edited_profile_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, "edited", MINIMAL.format(name="edited"))
    assert read_profile(path).description == "a test profile"
    write(tmp_path, "edited", MINIMAL.format(name="edited").replace("a test profile", "edited since"))
    assert read_profile(path).description == "edited since"


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError) as exc:
        load_profile("genric", [PROFILE_DIR])
    text = str(exc.value)
    assert text.startswith('no profile "genric"')
    assert 'did you mean "generic"?' in text
    assert "known: " + ", ".join(sorted(p.stem for p in PROFILE_FILES)) in text


@pytest.mark.parametrize("name", ["../device_profiles/generic", "/etc/passwd", "Generic", ""])
def test_profile_names_cannot_escape_the_directory(name: str) -> None:
    with pytest.raises(ProfileError, match="no profile"):
        load_profile(name, [PROFILE_DIR])


def test_profile_error_is_a_config_error() -> None:
    assert issubclass(ProfileError, ConfigError)
    assert issubclass(ProfileError, ValueError)


# --- malformed profiles: file, key and fix -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "fix"),
    [
        (
            "[quirks]\nmodels_not_ascendng = true\n",
            "quirks.models_not_ascendng",
            'did you mean "models_not_ascending"?',
        ),
        ("[modbus]\nwrite_function_code = 5\n", "modbus.write_function_code", "use 6 or 16"),
        ("[modbus]\nmax_read_registers = 200\n", "modbus.max_read_registers", "use 125 or less"),
        ("[modbus]\ninter_frame_delay_ms = -1\n", "modbus.inter_frame_delay_ms", "use 0 or more"),
        ('[controls]\nsupported = ["curtail_999"]\n', "controls.supported[0]", 'did you mean "curtail_'),
        ('[controls]\nsupported = ["dance"]\n', "controls.supported[0]", 'use "curtail_123", "pf_123", '),
        ('[controls]\nsupported = ["voltvar_705"]\n', "controls.supported[0]", "add 705 to defaults.models"),
        ("[quirks]\nlong_models = [99999]\n", "quirks.long_models[0]", "is not a SunSpec model id"),
        ("[quirks]\nmodel_lengths = [{ model = 1 }]\n", "quirks.model_lengths[0].length", "add length = "),
        ('[quirks]\nmissing_end_marker = "yes"\n', "quirks.missing_end_marker", "write true or false"),
        (
            "[quirks]\nunreadable = [{ model = 103, offset = 2, length = 0 }]\n",
            "quirks.unreadable[0].length",
            "1 or more",
        ),
    ],
)
def test_malformed_profile_names_file_key_and_fix(tmp_path: Path, extra: str, key: str, fix: str) -> None:
    path = write(tmp_path, "broken", MINIMAL.format(name="broken") + extra)
    with pytest.raises(ProfileError) as exc:
        read_profile(path)
    lines = problem_lines(exc)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {key}: "), lines[0]
    assert fix in lines[0]


def test_malformed_defaults_name_the_key(tmp_path: Path) -> None:
    text = MINIMAL.format(name="broken").replace("models = [1, 103, 123]", 'unit = 0\nbase = 4000\nport = "502"')
    path = write(tmp_path, "broken", text)
    with pytest.raises(ProfileError) as exc:
        read_profile(path)
    lines = problem_lines(exc)
    assert f"{path}: defaults.port: " in "\n".join(lines)
    assert any(line.startswith(f"{path}: defaults.unit: 0 is not a Modbus unit id — use 1..247") for line in lines)
    assert any("defaults.base: 4000 is not a SunSpec base address" in line for line in lines)
    assert any("defaults.models: missing — add models = " in line for line in lines)


def test_name_must_match_file(tmp_path: Path) -> None:
    path = write(tmp_path, "right", MINIMAL.format(name="wrong"))
    with pytest.raises(ProfileError, match=r'name: "wrong" differs from the file name — write name = "right"'):
        read_profile(path)


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken", 'name = "broken"\ndescription = "x\n[defaults]\n')
    with pytest.raises(ProfileError, match=rf"^{re.escape(str(path))}: line 2, column \d+: not valid TOML"):
        read_profile(path)


def test_broken_profile_reaches_load_profile(tmp_path: Path) -> None:
    write(tmp_path, "broken", MINIMAL.format(name="broken") + "[modbus]\nwrite_function_code = 3\n")
    with pytest.raises(ProfileError, match=r"modbus\.write_function_code"):
        load_profile("broken", [tmp_path])
